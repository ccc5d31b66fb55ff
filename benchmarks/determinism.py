"""Is a GPU run reproducible bit for bit with --deterministic, and what does that cost?

    python benchmarks/determinism.py [--samples 1024 --size 256 --epochs 3 --batch-size 64]

Trains the same configuration twice with --deterministic and twice without, each in its own process,
and compares the final weights and optimizer moments of each pair bit for bit. The table is printed last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from _common import child_env, differing_parts, make_workdir, synthetic_file, tensors, train_command

from glint_track.checkpoint.format import load_checkpoint

EPOCH = re.compile(r"epoch (\d+)/\d+ .* ([\d.]+) img/s")


def identical(a: Path, b: Path) -> tuple[bool, float]:
    """(bit-identical, largest absolute weight difference)."""
    x, y = load_checkpoint(a), load_checkpoint(b)
    same = not differing_parts(x, y)
    diff = max(
        (p.float() - q.float()).abs().max().item()
        for p, q in zip(tensors(x["model_state_dict"]), tensors(y["model_state_dict"]))
    )
    return same, diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    workdir = make_workdir(args.workdir, "glint-determinism-")
    h5 = synthetic_file(workdir, "det", args.samples, args.size)
    env = child_env(MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}")
    rows = []
    for flag in ("--deterministic", "--no-deterministic"):
        outs, speeds = [], []
        for i in range(2):
            out = workdir / f"{flag.strip('-')}_{i}"
            cmd = [
                *train_command("--h5", str(h5)),
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
                "--output-dir",
                str(out),
                flag,
            ]
            proc = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            epochs = [float(m.group(2)) for m in map(EPOCH.search, proc.stderr.splitlines()) if m]
            speeds.append(max(epochs[1:] or epochs))  # steady state: not the first epoch (cuDNN autotuning, warm-up)
            outs.append(out / "latest_checkpoint.pth")
        same, diff = identical(*outs)
        rows.append((flag, sum(speeds) / 2, same, diff))
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"\n{dt.date.today()} · {gpu} · torch {torch.__version__} · {args.samples} × {args.size}², batch "
        f"{args.batch_size}, "
        f"{args.epochs} epochs, precision auto"
    )
    print("| mode | img/s (steady epoch) | two runs bit-identical | largest weight difference |\n|---|---|---|---|")
    for flag, speed, same, diff in rows:
        print(f"| {flag} | {speed:.0f} | {'yes' if same else 'no'} | {diff:.2e} |")
    print(f"\n--deterministic costs {100 * (1 - rows[0][1] / rows[1][1]):.1f} % of throughput")
    if not rows[0][2]:  # the promise this measures: two --deterministic runs are the same bit for bit
        sys.exit("FAILED: two --deterministic runs differ")


if __name__ == "__main__":
    main()
