"""Peak memory of three concurrent `glint-track train` processes on one file, with and without --cache.

    python benchmarks/memory.py [--samples 1024 --size 256]

Each process is sampled every 0.2 s from /proc/<pid>/smaps_rollup: RSS counts shared pages in every
process that maps them, PSS splits them between the processes, so the PSS sum is what the three
runs really take from the machine's RAM. The table is printed last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import child_env, make_workdir, synthetic_file, train_command


def rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB of one process and its children (DataLoader workers: none here)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields["Rss"], fields["Pss"]


def three_runs(h5: Path, workdir: Path, cache: bool) -> dict:
    env = child_env(XDG_CACHE_HOME=str(workdir / "cache"), MLFLOW_TRACKING_URI="")
    procs = []
    for i, loss in enumerate(["focal", "bce", "hybrid"]):
        run_dir = workdir / f"{'cache' if cache else 'nocache'}-{loss}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            *train_command("--h5", str(h5)),
            "--loss",
            loss,
            "--epochs",
            "1",
            "--base-channels",
            "4",
            "--device",
            "cpu",
            "--output-dir",
            "out",
            "--cache" if cache else "--no-cache",
        ]
        procs.append(
            subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )
        if i == 0 and cache:
            time.sleep(0.5)  # not needed for correctness (the cache write is atomic); starts as users would
    peak_rss, peak_pss, peak_total_pss = [0] * 3, [0] * 3, 0
    while any(p.poll() is None for p in procs):
        total = 0
        for i, p in enumerate(procs):
            try:
                rss, pss = rollup(p.pid)
            except (FileNotFoundError, ProcessLookupError, KeyError):
                continue
            peak_rss[i], peak_pss[i] = max(peak_rss[i], rss), max(peak_pss[i], pss)
            total += pss
        peak_total_pss = max(peak_total_pss, total)
        time.sleep(0.2)
    for p in procs:
        if p.returncode:
            raise RuntimeError(p.stderr.read()[-2000:])
    return {
        "rss_mb": [r / 1024 for r in peak_rss],
        "pss_mb": [r / 1024 for r in peak_pss],
        "total_pss_mb": peak_total_pss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    workdir = make_workdir(args.workdir, "glint-mem-")
    h5 = synthetic_file(workdir, "mem", args.samples, args.size)
    decoded_mb = args.samples * args.size**2 * (1 + 8 * 2 / 16) / 2**20
    rows = [
        ("without cache (--no-cache)", three_runs(h5, workdir, cache=False)),
        ("with cache, first start writes it", three_runs(h5, workdir, cache=True)),
        ("with cache, already written", three_runs(h5, workdir, cache=True)),
    ]
    print(
        f"\n{dt.date.today()} · {os.cpu_count()} CPU cores · {args.samples} × {args.size}², 8 glints · "
        f"decoded arrays {decoded_mb:.0f} MB · 3 concurrent CPU runs (focal, bce, hybrid), --base-channels 4, 1 epoch\n"
    )
    print("| runs | peak RSS per process MB | peak PSS per process MB | peak PSS of all three MB |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {' / '.join(f'{v:.0f}' for v in r['rss_mb'])} | "
            f"{' / '.join(f'{v:.0f}' for v in r['pss_mb'])} | {r['total_pss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
