"""DDP scaling: `glint-track train` on one GPU vs `--gpus 0,1` (torchrun, NCCL), same per-GPU batch.

    python benchmarks/ddp_scaling.py [--samples 4096 --size 256 --epochs 8 --batch-size 256]

Each configuration runs end to end in its own process(es), MLflow logging and checkpoints included.
Throughput is read from the run's log: training images per second of each epoch (the `img/s` column)
(median over the epochs after the first) and whole epochs including validation and saving (from the
log's timestamps, first epoch left out). Scaling efficiency = 2-GPU img/s ÷ (2 × 1-GPU img/s). The table is
printed last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from _common import child_env, make_workdir, synthetic_file

EPOCH = re.compile(r"^(\S+ \S+) INFO epoch (\d+)/\d+ .* val_loss (\S+) .* ([\d.]+) img/s")
RUN = re.compile(r"(\d+) train / \d+ val images")


def run(workdir: Path, name: str, common: list[str], extra: list[str]) -> dict:
    out = workdir / name
    shutil.rmtree(out, ignore_errors=True)  # a fresh log: its epoch lines are the timings
    env = child_env(MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}")
    proc = subprocess.run(
        [sys.executable, "-m", "glint_track", "train", *common, "--output-dir", str(out), "--run-name", name, *extra],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    text = (out / "training.log").read_text()
    n_train = int(RUN.search(text).group(1))
    epochs = [m.groups() for m in map(EPOCH.search, text.splitlines()) if m]
    stamps = [dt.datetime.strptime(e[0], "%Y-%m-%d %H:%M:%S,%f").timestamp() for e in epochs]
    return {
        "train_img_s": statistics.median(float(e[3]) for e in epochs[1:]),
        "epoch_img_s": (len(stamps) - 1) * n_train / (stamps[-1] - stamps[0]),  # from the 1st epoch's end to the last's
        "val_loss": float(epochs[-1][2]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    workdir = make_workdir(args.workdir, "glint-ddp-")
    h5 = synthetic_file(workdir, "ddp", args.samples, args.size)
    common = ["--h5", str(h5), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    common += ["--compile"] if args.compile else []
    one = run(workdir, "one-gpu", common, ["--gpus", "0"])
    two = run(workdir, "two-gpus", common, ["--gpus", "0,1"])
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"\n{dt.date.today()} · 2 × {gpu} · torch {torch.__version__} · {args.samples} × {args.size}² · batch "
        f"{args.batch_size} "
        f"per GPU · {args.epochs} epochs{' · --compile' if args.compile else ''}"
    )
    print("| GPUs | train img/s | epoch img/s (with validation) | val loss at the end |\n|---|---|---|---|")
    for n, r in ((1, one), (2, two)):
        print(f"| {n} | {r['train_img_s']:.0f} | {r['epoch_img_s']:.0f} | {r['val_loss']:.5f} |")
    print(
        f"\nscaling efficiency: training {100 * two['train_img_s'] / (2 * one['train_img_s']):.0f} %, "
        f"whole epochs {100 * two['epoch_img_s'] / (2 * one['epoch_img_s']):.0f} %"
    )


if __name__ == "__main__":
    main()
