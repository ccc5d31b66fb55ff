"""How much an annotator must correct when a model pre-labels the frames: points moved more than 1 px, glints
added (missed) and deleted (spurious), for models trained on more and more annotated frames.

    python benchmarks/annotation_effort.py [--train 64,256,1024] [--new 256] [--size 128] [--epochs 15]

On the near-eye generator: one annotated set (the first N of its frames train each model, with the default
recipe), and new frames whose truth is the renderer's. Each model pre-labels the new frames
(`predict --labelme-out`); the "annotator" puts every point where the renderer drew its glint; `pack --report`
counts the corrections, as it does for a lab. Every step is the product's own command. The table is printed last.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import child_env, make_workdir


def glint_track(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "glint_track", *args], cwd=cwd, env=child_env(), capture_output=True, text=True
    )
    if result.returncode:
        raise RuntimeError(f"glint-track {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def correct(prelabelled: Path, truth: Path) -> None:
    """The annotator: every frame's circles where the renderer drew its glints (a missed one added)."""
    for path in prelabelled.glob("*.json"):
        record = json.loads(path.read_text())
        true = json.loads((truth / path.name).read_text())["shapes"]
        record["shapes"] = [{"label": s["label"], "points": s["points"], "shape_type": "circle"} for s in true]
        path.write_text(json.dumps(record))


def effort(model: str, new_frames: Path, truth: Path, work: Path) -> dict[str, float]:
    folder = work / "prelabelled"
    shutil.rmtree(folder, ignore_errors=True)
    glint_track("predict", "--model", model, "--images", str(new_frames), "--labelme-out", str(folder), cwd=work)
    correct(folder, truth)
    report = work / "corrections.csv"
    glint_track("pack", "--in-dir", str(folder), "--out", str(work / "corrected.h5"), "--report", str(report),
                "--no-log-corrections", cwd=work)  # fmt: skip
    rows = list(csv.DictReader(open(report)))
    moves = [float(r["moved_px"]) for r in rows if r["moved_px"]]
    return {
        "points": len(rows),
        "moved": sum(r["status"] == "moved" for r in rows),
        "added": sum(r["status"] == "added" for r in rows),
        "deleted": sum(r["status"] == "deleted" for r in rows),
        "mean_move": sum(moves) / len(moves) if moves else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default="64,256,1024", help="annotated frames each model learns from")
    parser.add_argument("--new", type=int, default=256, help="new frames to pre-label")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = make_workdir(args.workdir, "glint-effort-")
    counts = [int(n) for n in args.train.split(",")]
    size = ["--size", str(args.size)]
    glint_track("synth", "--out", "annotated.h5", "--num-samples", str(max(counts)), *size, "--seed", "11", cwd=work)
    glint_track("synth", "--out", "new.h5", "--num-samples", str(args.new), *size, "--seed", "12", "--labelme-dir",
                "truth", cwd=work)  # fmt: skip
    new_frames = work / "frames"
    new_frames.mkdir(exist_ok=True)
    for png in (work / "truth").glob("*.png"):
        shutil.copy(png, new_frames / png.name)
    results = []
    for n in counts:
        subset = work / f"train_{n}.h5"
        code = (  # the first n frames of the annotated set, as pack would write them
            "import h5py; from pathlib import Path; from glint_track.data.glint_file import write_glint_file\n"
            "with h5py.File('annotated.h5') as f:\n"
            f"    a = {{k: f[k][:{n}] for k in ('images', 'heatmaps', 'points', 'radii')}}\n"
            f"    stems = [s.decode() for s in f['stems'][:{n}]]; attrs = dict(f.attrs)\n"
            f"write_glint_file(Path('{subset}'), a['images'], a['heatmaps'], a['points'], a['radii'], stems, attrs)\n"
        )
        subprocess.run([sys.executable, "-c", code], cwd=work, env=child_env(), check=True)
        start = time.time()
        out = glint_track("train", "--h5", str(subset), "--epochs", str(args.epochs), "--no-system-metrics", cwd=work)
        run_id = next(line.split()[1] for line in out.splitlines() if line.startswith("Run "))
        results.append({"train": n, "train_s": time.time() - start} | effort(run_id, new_frames, work / "truth", work))
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{dt.date.today()} · {os.cpu_count()} CPU cores · near-eye {args.size}², {args.new} new frames, "
          f"default recipe, {args.epochs} epochs\n")  # fmt: skip
    print("| trained on | points pre-labelled | moved > 1 px | added (missed) | deleted (spurious) | mean move px |")
    print("|---|---|---|---|---|---|")
    for r in results:
        share = f"{r['moved']} ({100 * r['moved'] / max(1, r['points'] - r['added']):.1f} %)"
        print(f"| {r['train']} | {r['points'] - r['added']} | {share} | {r['added']} | {r['deleted']} | "
              f"{r['mean_move']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
