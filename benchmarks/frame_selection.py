"""Which 64 frames to label: `glint-track select` against random frames, measured on people no run saw (issue 38).

    python benchmarks/frame_selection.py [--size 96] [--pool 2400] [--repeats 2] [--workdir DIR]

A pool of frames across conditions (difficulties 0, 1/3, 2/3 and 1, four simulated people each, a new draw per
repeat) stands for a lab's recordings; its truth stands for a perfect annotator. Each row "labels" frames of the
pool and trains the default command on them (`glint-track train --h5 FILE`, no flag), and its best model is
evaluated on 256 frames of 8 people none of the rows saw, at difficulty 1.0 (harder) and 0.5:

  random 64        64 frames drawn at random
  random 128       twice as many, at random (the target: select's 64 should reach its harder F1)
  select 64        `select -k 64` without a model (spread over appearance, no near-copies)
  random 32 + 32   32 at random, a model trained on them, then `select -k 32 --model it --labelled the 32`

The table is printed last; every row's numbers go to WORKDIR/results.jsonl as they come.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from _common import make_workdir  # noqa: E402
from label_efficiency import evaluate_row, train_row  # noqa: E402

DIFFICULTIES = (0.0, 1 / 3, 2 / 3, 1.0)
TESTS = {"harder": 1.0, "same": 0.5}


def pool_file(folder: Path, size: int, frames: int, repeat: int) -> Path:
    """One file of `frames` frames across the difficulties, grouped by person (d<k>-p<n>)."""
    from glint_track.data.glint_file import write_glint_file
    from glint_track.data.synth import write_synthetic

    out = folder / f"pool_{size}_r{repeat}.h5"
    if out.exists():
        return out
    parts = []
    for k, difficulty in enumerate(DIFFICULTIES):
        part = folder / f"part_{k}_r{repeat}.h5"
        write_synthetic(part, frames // 4, size, 8, 1000 * repeat + k, difficulty=difficulty, participants=4)
        with h5py.File(part) as f:
            parts.append({name: f[name][:] for name in ("images", "heatmaps", "points", "radii")})
            parts[-1]["groups"] = [f"d{k}-{g.decode()}" for g in f["groups"][:]]
            attrs = dict(f.attrs)
    joined = {name: np.concatenate([p[name] for p in parts]) for name in ("images", "heatmaps", "points", "radii")}
    groups = [g for p in parts for g in p["groups"]]
    stems = [f"pool_{i:05d}" for i in range(len(groups))]
    attrs["source"] = "glint-track synth (frame_selection pool)"
    write_glint_file(out, *(joined[n] for n in ("images", "heatmaps", "points", "radii")), stems, attrs, groups=groups)
    return out


def subset(pool: Path, indices: list[int], out: Path) -> Path:
    """The pool's frames at `indices`, labelled with their truth, as a training file."""
    from glint_track.data.glint_file import write_glint_file

    idx = sorted(set(indices))
    with h5py.File(pool) as f:
        arrays = [f[name][idx] for name in ("images", "heatmaps", "points", "radii")]
        groups = [g.decode() for g in f["groups"][idx]]
        attrs = dict(f.attrs)
    write_glint_file(out, *arrays, [f"pool_{i:05d}" for i in idx], attrs, groups=groups)
    return out


def selected(pool: Path, out: Path, k: int, labelled: list[Path], model: Path | None, device: str) -> list[int]:
    """The pool indices `select` chooses (with `model`: half of them the model's doubts)."""
    from glint_track.data.select import select_frames

    guide = None
    if model is not None:
        from glint_track.constants import DEFAULT_THRESHOLD
        from glint_track.inference.doubt import ModelGuide

        guide = ModelGuide(str(model), DEFAULT_THRESHOLD, device)
    done = select_frames([str(pool)], out, k, [str(p) for p in labelled], 0, guide)
    return [p.position for p in done.picks]


def best_model(folder: Path, run_id: str) -> Path:
    model = folder / "runs" / run_id / "best_model.pth"
    return model if model.exists() else folder / "runs" / run_id / "latest_checkpoint.pth"


def rows_of_repeat(work: Path, pool: Path, tests: dict, repeat: int, device: str) -> list[dict]:
    rng = np.random.default_rng(repeat)
    with h5py.File(pool) as f:
        n = len(f["images"])
    order = rng.permutation(n).tolist()
    plans = {
        "random 64": lambda: order[:64],
        "random 128": lambda: order[:128],
        "select 64": lambda: selected(pool, work / "select64", 64, [], None, device),
    }
    rows = []
    for name, pick in plans.items():
        rows.append(train_and_score(work, pool, name, pick(), tests, repeat, device))
    half = subset(pool, order[:32], work / "random32.h5")  # random 64's first 32 again: the lab's first round
    start = train_row(ROOT, [], half, work / "random32", device)
    model = best_model(work / "random32", start["run_id"])
    chosen = selected(pool, work / "select32", 32, [half], model, device)
    rows.append(train_and_score(work, pool, "random 32 + 32", order[:32] + chosen, tests, repeat, device))
    return rows


def train_and_score(
    work: Path, pool: Path, name: str, indices: list[int], tests: dict, repeat: int, device: str
) -> dict:
    slug = name.replace(" ", "").replace("+", "_")
    h5 = subset(pool, indices, work / f"{slug}.h5")
    trained = train_row(ROOT, [], h5, work / slug, device)
    scores = evaluate_row(work / slug, trained["run_id"], tests, device)
    return {"row": name, "repeat": repeat, "frames": len(set(indices)), "folder": str(work / slug)} | trained | scores


def table(rows: list[dict]) -> str:
    head = "| row | labelled | repeat | train s | unseen harder: recall / F1 / mean px | unseen same: F1 / mean px |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['row']} | {r['frames']} | {r['repeat'] + 1} | {r['seconds']:.0f} | {r['harder_recall']:.2f} / "
            f"{r['harder_f1']:.3f} / {r['harder_loc_err_mean']:.2f} "
            f"| {r['same_f1']:.3f} / {r['same_loc_err_mean']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--pool", type=int, default=2400)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    from glint_track.data.synth import write_synthetic

    workdir = make_workdir(args.workdir, "glint-select-")
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    tests = {}
    for name, difficulty in TESTS.items():
        tests[name] = data / f"test_{name}.h5"
        if not tests[name].exists():
            write_synthetic(
                tests[name], 256, args.size, 8, 9_000 + int(10 * difficulty), difficulty=difficulty, participants=8
            )
    t0, rows = time.perf_counter(), []
    for r in range(args.repeats):
        pool = pool_file(data, args.size, args.pool, r)
        for row in rows_of_repeat(workdir / f"repeat{r + 1}", pool, tests, r, args.device):
            rows.append(row)
            with open(workdir / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
    import torch

    print(
        f"\n{dt.date.today()} · {os.cpu_count()} CPUs · torch {torch.__version__} · {args.size}² · pool "
        f"{args.pool} · {time.perf_counter() - t0:.0f} s · workdir {workdir}\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
