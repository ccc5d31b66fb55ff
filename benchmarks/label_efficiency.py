"""Label efficiency: the default command trained on a lab's few labelled frames, measured where it has not been.

    python benchmarks/label_efficiency.py [--size 128] [--counts 32,64,128,256,1024] [--repeats 2]
        [--before OLD_TREE] [--row NAME=FLAGS ...] [--device auto] [--workdir DIR]

For each count N and repeat r, `synth` draws N labelled frames at difficulty 0.5 from a handful of simulated people
(N/8 of them, 4 to 16: each their own cornea, headset fit and LED ring; a new draw per repeat), and each row trains
`glint-track train --h5 FILE` on them in a process of its own (the row's flags added; `--before TREE` adds the row
"before": that checkout of glint-track, no flags). Every best model is then evaluated, by this checkout's decoder and
metrics, on frames of 16 people none of the runs saw: at the same difficulty, and harder (difficulty 1.0: gaze to
±32°, lids closing, spectacle reflections in 6 of 10 frames, more blur). The run's own validation F1 is shown beside
(held-out people where the row splits by group, random frames otherwise).

Times are from Enter to the command's return, as a user waits. The table is printed last; every row's numbers go to
WORKDIR/results.jsonl as they come.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import make_workdir  # noqa: I001

#: The evaluation sets: unseen people, at the training conditions and harder ones.
TESTS = {"same": 0.5, "harder": 1.0}
TEST_FRAMES, TEST_PEOPLE = 256, 16


def people_for(count: int) -> int:
    return max(4, min(16, count // 8))


def data(workdir: Path, size: int, counts: list[int], repeats: list[int]) -> tuple[dict, dict]:
    from glint_track.data.synth import write_synthetic

    folder = workdir / "data"
    folder.mkdir(exist_ok=True)
    train, tests = {}, {}
    for name, difficulty in TESTS.items():
        tests[name] = folder / f"test_{name}_{size}.h5"
        if not tests[name].exists():
            seed = 7_000 + int(difficulty * 10)
            write_synthetic(tests[name], TEST_FRAMES, size, 8, seed, difficulty=difficulty, participants=TEST_PEOPLE)
    for n in counts:
        for r in repeats:
            train[n, r] = folder / f"train_{n}_{size}_r{r}.h5"
            if not train[n, r].exists():
                write_synthetic(train[n, r], n, size, 8, 100 * (r + 1) + n, participants=people_for(n))
    return train, tests


def train_row(tree: Path, flags: list[str], h5: Path, folder: Path, device: str) -> dict:
    """`glint-track train --h5 FILE` as a user types it, from that checkout, in its own folder and MLflow store."""
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])))
    args = [sys.executable, "-m", "glint_track", "train", "--h5", str(h5), *(["--device", device] * (device != "auto"))]
    start = time.perf_counter()
    done = subprocess.run([*args, *flags], cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree} {flags} on {h5} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    out = done.stdout + done.stderr
    run_id = re.search(r"^Run (\w+) finished", out, re.M).group(1)
    epochs = re.findall(r"epoch (\d+)/\d+ ", out)
    val = re.search(r"finished [^:]*: (?:.*?)val F1 ([\d.]+)", out)
    return {"run_id": run_id, "seconds": seconds, "epochs": int(epochs[-1]), "val_f1": float(val.group(1))}


def evaluate_row(folder: Path, run_id: str, tests: dict, device: str) -> dict:
    from glint_track.inference.evaluate import evaluate

    model = folder / "runs" / run_id / "best_model.pth"
    if not model.exists():
        model = folder / "runs" / run_id / "latest_checkpoint.pth"
    out = {}
    for name, h5 in tests.items():
        overall = evaluate(str(model), str(h5), device_name=device, cache=False).overall
        out |= {f"{name}_{k}": overall[k] for k in ("recall", "f1", "loc_err_mean")}
    return out


def table(rows: list[dict]) -> str:
    head = (
        f"| row | labelled frames | repeat | epochs | train s | run's val F1 | unseen people, same: F1 / mean px "
        f"| unseen people, harder: recall / F1 / mean px |\n|{'---|' * 8}"
    )

    def px(v: float) -> str:
        return "—" if v != v else f"{v:.2f}"

    lines = [
        f"| {r['row']} | {r['count']:,} | {r['repeat'] + 1} | {r['epochs']} | {r['seconds']:.0f} | {r['val_f1']:.3f} "
        f"| {r['same_f1']:.3f} / {px(r['same_loc_err_mean'])} "
        f"| {r['harder_recall']:.2f} / {r['harder_f1']:.3f} / {px(r['harder_loc_err_mean'])} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--counts", default="32,64,128,256,1024")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only-repeat", type=int, help="run repeat N (1-based) alone, e.g. the repeats side by side")
    parser.add_argument("--before", type=Path, help="a checkout of glint-track before the change: the row 'before'")
    parser.add_argument("--row", action="append", default=[], help="NAME=FLAGS: a row of this checkout with flags")
    parser.add_argument("--no-default", action="store_true", help="leave out the row 'default' (no flags)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = make_workdir(args.workdir, "glint-label-efficiency-")
    counts = [int(c) for c in args.counts.split(",")]
    repeats = [args.only_repeat - 1] if args.only_repeat else list(range(args.repeats))
    train, tests = data(workdir, args.size, counts, repeats)
    variants = [("before", args.before.resolve(), [])] if args.before else []
    variants += [] if args.no_default else [("default", ROOT, [])]
    variants += [(name, ROOT, flags.split()) for name, _, flags in (r.partition("=") for r in args.row)]
    rows = []
    for r in repeats:
        for n in counts:
            for name, tree, flags in variants:
                folder = workdir / name
                row = {"row": name, "count": n, "repeat": r, "size": args.size, "flags": flags}
                row |= train_row(tree, flags, train[n, r], folder, args.device)
                row |= evaluate_row(folder, row["run_id"], tests, args.device)
                rows.append(row)
                with open(workdir / "results.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(table([row]).splitlines()[-1], flush=True)
    import torch

    where = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    print(f"\n{dt.date.today()}, {where}, {os.cpu_count()} cores, {args.size}², torch {torch.__version__}")
    print(table(sorted(rows, key=lambda r: (r["count"], r["row"], r["repeat"]))))


if __name__ == "__main__":
    main()
