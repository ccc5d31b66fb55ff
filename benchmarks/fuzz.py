"""Fuzzing at length: many crafted HDF5 files, labelme folders, COCO exports and checkpoints, each outcome counted.

    python benchmarks/fuzz.py [--examples 10000] [--workers 8] [--only h5|labelme|coco|checkpoint]

The strategies and the property are tests/strategies.py's (tests/data/test_fuzz.py runs 300 per target): each
input must end in success or the project's one-line error, never another exception, and within a small
multiple of the memory its data really takes. Workers are separate processes with their own Hypothesis
seeds; each worker's examples are counted, so the totals are examples really run. A failure prints the
spec Hypothesis shrank it to and exits 1. The table (per target: examples, accepted, refused, the most
frequent refusals) is printed last; docs/reliability.md keeps the latest.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import multiprocessing
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TARGETS = ("h5", "labelme", "coco", "checkpoint")
MiB = 2**20


def _kind(message: str) -> str:
    """A refusal without its file name and numbers, so that equal problems count together."""
    problem = message.split(": ", 1)[-1].split(";")[0]
    return re.sub(r"\d[\d,.]*", "N", re.sub(r"'[^']*'|\([^)]*\)", "…", problem))[:70]


def run_worker(target: str, examples: int, seed: int) -> dict:
    """Run `examples` examples of one target; returns the counts (raises on a failing example)."""
    import strategies as s
    import torch
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    from glint_track.data.glint_file import load_glint_file
    from glint_track.data.synth import write_synthetic

    torch.set_num_threads(1)
    counts: dict = {"examples": 0, "accepted": 0, "refused": collections.Counter(), "peak_mib": 0.0}
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))

    def record(outcome: s.Outcome) -> None:
        counts["examples"] += 1
        counts["accepted"] += outcome.accepted
        counts["peak_mib"] = max(counts["peak_mib"], outcome.peak_bytes / MiB)
        if not outcome.accepted:
            counts["refused"][_kind(outcome.message)] += 1

    run = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    specs = {"h5": s.h5_specs, "labelme": s.labelme_specs, "coco": s.coco_specs, "checkpoint": s.checkpoint_specs}[
        target
    ]
    run_one = {"h5": s.check_h5, "labelme": s.check_labelme, "coco": s.check_coco, "checkpoint": s.check_checkpoint}[
        target
    ]
    extra = ()
    if target == "checkpoint":
        two = write_synthetic(work / "two.h5", num_samples=8, size=s.SIZE, num_glints=s.GLINTS, seed=5)
        extra = (load_glint_file(two),)

    @run
    @given(spec=specs())
    def check(spec: dict) -> None:
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            record(run_one(spec, Path(tmp), *extra))

    hypothesis_seed(seed)(check)()
    counts["refused"] = dict(counts["refused"])
    return counts


def _job(args: tuple[str, int, int]) -> dict:
    import logging

    logging.disable(logging.WARNING)  # pack's per-file warnings: thousands of them
    return run_worker(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000, help="examples per target, over all workers")
    parser.add_argument("--workers", type=int, default=max(1, multiprocessing.cpu_count() - 1))
    parser.add_argument("--only", choices=TARGETS, action="append")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args()
    targets = args.only or list(TARGETS)
    per_worker = -(-args.examples // args.workers)
    jobs = [(t, per_worker, 1000 * i + j) for i, t in enumerate(targets) for j in range(args.workers)]
    start = time.time()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(_job, jobs, chunksize=1)
    table = {}
    for t in targets:
        mine = [r for (target, _, _), r in zip(jobs, results) if target == t]
        refused = collections.Counter()
        for r in mine:
            refused.update(r["refused"])
        table[t] = {
            "examples": sum(r["examples"] for r in mine),
            "accepted": sum(r["accepted"] for r in mine),
            "refused": sum(refused.values()),
            "peak_mib": max(r["peak_mib"] for r in mine),
            "top_refusals": refused.most_common(8),
        }
    machine = f"{platform.node()}, {multiprocessing.cpu_count()} CPUs, Python {platform.python_version()}"
    if args.json:
        args.json.write_text(
            json.dumps({"date": dt.date.today().isoformat(), "machine": machine, "targets": table}, indent=1)
        )
    print(
        f"\nfuzz: {dt.date.today()}, {machine}, {args.workers} workers, {time.time() - start:.0f} s; "
        f"every example ended in "
        f"success or a one-line error\n"
    )
    print("| target | examples | accepted | refused (one line) | other exceptions | peak traced memory |")
    print("|---|---|---|---|---|---|")
    for t, row in table.items():
        peak = f"{row['peak_mib']:.1f} MiB" if t != "checkpoint" else "(not traced)"
        print(f"| {t} | {row['examples']:,} | {row['accepted']:,} | {row['refused']:,} | 0 | {peak} |")
    for t, row in table.items():
        print(f"\nmost frequent refusals, {t}:")
        for kind, n in row["top_refusals"]:
            print(f"  {n:6,}  {kind}")


if __name__ == "__main__":
    main()
