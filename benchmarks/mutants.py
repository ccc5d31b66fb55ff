"""Mutants: for each guarantee, disable the mechanism that keeps it and show that its test then fails.

    python benchmarks/mutants.py [--only NAME …] [--workdir DIR]

Each mutant is a one-spot edit of glint_track/ (or the default recipe), applied to a copy of the working
tree; the named tests run against that copy and must FAIL. The unmutated copy must pass the same tests
(checked first, so a row never "fails" for a reason of its own). The table is printed last; the exit
status is 1 if any mutant survived. docs/reliability.md holds its last output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    guarantee: str
    file: str
    old: str  # must occur exactly once in `file`
    new: str
    tests: tuple[str, ...]


UNTRUSTED = "tests/data/test_untrusted.py::"
RELIABILITY = "tests/system/test_reliability.py::"
MUTANTS = [
    Mutant(
        "complete-off",
        "a kill between latest_checkpoint.pth and its best/epoch copies loses no file",
        "glint_track/training/checkpointer.py",
        '        epoch = int(state["epoch"])\n        names = [n for n',
        '        return\n        epoch = int(state["epoch"])\n        names = [n for n',
        (RELIABILITY + "test_sigkill_between_the_latest_checkpoint_and_its_copies_is_completed_by_the_resume",),
    ),
    Mutant(
        "checksum-off",
        "a checkpoint that is not the one its checksum file names is refused",
        "glint_track/checkpoint/format.py",
        "    if sidecar.is_file() and file_digest(path) not in",
        "    if False and file_digest(path) not in",
        (
            "tests/checkpoint/test_checkpoint.py::test_a_sound_checkpoint_that_is_not_the_one_its_checksum_file_names_is_refused",
        ),
    ),
    Mutant(
        "crc-off",
        "a bit flipped inside a checkpoint's weights is refused (CRC-32 of each entry)",
        "glint_track/checkpoint/schema.py",
        "damaged = archive.testzip() if",
        "damaged = None if",
        (UNTRUSTED + "test_crafted_checkpoints_are_refused_before_a_run_exists[bit_flipped.pth]",),
    ),
    Mutant(
        "unpickle",
        "a checkpoint is never unpickled (weights_only)",
        "glint_track/checkpoint/format.py",
        'checkpoint = torch.load(path, map_location="cpu", weights_only=True)',
        'checkpoint = torch.load(path, map_location="cpu", weights_only=False)',
        ("tests/checkpoint/test_checkpoint.py::test_pickle_payload_is_refused",),
    ),
    Mutant(
        "write-in-place",
        "a failed checkpoint write leaves the previous file intact (temp file + rename)",
        "glint_track/files.py",
        '    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)\n    os.close(fd)',
        "    tmp = dst",
        ("tests/checkpoint/test_checkpoint.py::test_atomic_write_keeps_the_old_file_when_writing_fails",),
    ),
    Mutant(
        "optimizer-not-restored",
        "resume continues bit for bit (optimizer state restored)",
        "glint_track/checkpoint/format.py",
        "        elif checkpoint.get(key):  # an empty state",
        "        elif name != 'optimizer' and checkpoint.get(key):  # an empty state",
        ("tests/training/test_train.py::test_resume_by_run_id_continues_the_same_run_exactly",),
    ),
    Mutant(
        "killed-as-finished",
        "a stopped run is marked KILLED, never FINISHED",
        "glint_track/training/loop.py",
        '        status = "KILLED"',
        '        status = "FINISHED"',
        ("tests/training/test_train.py::test_interrupted_and_failed_runs_are_marked_and_keep_their_checkpoint",),
    ),
    Mutant(
        "links-followed",
        "an HDF5 link to another file is refused, never followed",
        "glint_track/data/h5check.py",
        "        if not isinstance(link, h5py.HardLink):",
        "        if False:",
        (UNTRUSTED + "test_crafted_hdf5_is_refused_in_one_line_without_reading_or_allocating[external_link.h5]",),
    ),
    Mutant(
        "memory-unchecked",
        "a declared size is never allocated unchecked",
        "glint_track/data/h5check.py",
        "    if needed > MEMORY_SHARE * available:",
        "    if False:",
        (UNTRUSTED + "test_crafted_hdf5_is_refused_in_one_line_without_reading_or_allocating[declares_61_gib.h5]",),
    ),
    Mutant(
        "path-traversal",
        "a labelme imagePath outside the input folder is never read",
        "glint_track/data/pack.py",
        "        if not candidate.is_relative_to(root):",
        "        if False:",
        (UNTRUSTED + "test_a_path_traversal_never_packs_the_outside_image",),
    ),
    Mutant(
        "no-lease",
        "one process trains a run at a time; a second is refused in one line",
        "glint_track/tracking/lease.py",
        "        if previous is not None and previous.alive():",
        "        if False:",
        ("tests/tracking/test_run_states.py::test_one_writer_per_run_and_a_killed_writers_claim_is_taken_over",),
    ),
    Mutant(
        "typed-lr-ignored",
        "a typed --lr wins over the checkpoint's on resume",
        "glint_track/training/config.py",
        "    skip = explicit | (frozenset() if same_run else _RUN_ONLY)",
        "    skip = frozenset() if same_run else _RUN_ONLY",
        (
            "tests/training/test_resume_policy.py::test_a_typed_lr_applies_to_the_restored_optimizer_and_the_run_says_so",
        ),
    ),
    Mutant(
        "damaged-cache-used",
        "a damaged cache entry is rebuilt, never trained on",
        "glint_track/data/glint_file.py",
        "    except (OSError, ValueError, EOFError) as e:\n        problem = first_line(e)",
        "    except () as e:\n        problem = first_line(e)",
        (UNTRUSTED + "test_a_damaged_cache_entry_is_rebuilt_with_a_warning",),
    ),
    Mutant(
        "no-retention",
        "--keep-last-n deletes older epoch files from the run",
        "glint_track/training/checkpointer.py",
        "        if self.keep_last_n <= 0:\n            return",
        "        return",
        ("tests/training/test_train.py::test_keep_last_n_deletes_old_epoch_artifacts",),
    ),
    Mutant(
        "weak-default-lr",
        "the defaults learn: F1 >= 0.9 on small data in a CPU minute",
        "glint_track/training/config.py",
        "    lr: float = 1e-3",
        "    lr: float = 1e-5",
        ("tests/training/test_train.py::test_the_default_recipe_learns_to_find_glints",),
    ),
    Mutant(
        "sigterm-ignored",
        "SIGTERM finishes the step, keeps the checkpoint and marks the run KILLED",
        "glint_track/training/stopping.py",
        "            self._previous[sig] = signal.signal(sig, self._handle)",
        "            self._previous[sig] = signal.getsignal(sig)",
        (
            "tests/tracking/test_run_states.py::test_a_stop_signal_finishes_the_step_keeps_the_checkpoint_and_marks_the_run_killed",
        ),
    ),
    Mutant(
        "exp-avg-sq-lost",
        "Adam's second moments survive a resume",
        "glint_track/training/checkpointer.py",
        "        state = snapshot(gather(parts, train_args, self.save_optimizer, self.model_info))",
        "        state = snapshot(gather(parts, train_args, self.save_optimizer, self.model_info))\n"
        "        for s in state.get('optimizer_state_dict', {}).get('state', {}).values():\n"
        "            s['exp_avg_sq'] = s['exp_avg_sq'] * 0 if 'exp_avg_sq' in s else s.get('exp_avg_sq')",
        ("tests/training/test_train.py::test_resume_by_run_id_continues_the_same_run_exactly",),
    ),
]


def copy_tree(dst: Path) -> None:
    """The working tree (tracked and untracked files), without .git, virtual environments or data."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for name in listed:
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def apply(tree: Path, mutant: Mutant) -> None:
    path = tree / mutant.file
    text = path.read_text()
    assert text.count(mutant.old) == 1, (
        f"{mutant.name}: the text to mutate occurs {text.count(mutant.old)} times in {mutant.file}"
    )
    path.write_text(text.replace(mutant.old, mutant.new))


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[bool, float, str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore", *tests],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    failed = [line for line in out.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return (
        out.returncode == 0,
        time.perf_counter() - t0,
        (failed[0] if failed else out.stdout.strip().splitlines()[-1])[:160],
    )


def _line(code: str, other: str) -> str:
    """The edited line, for the table: the first one of `code` that `other` does not have."""
    lines = [line.strip() for line in code.strip().splitlines()]
    changed = [line for line in lines if line not in {o.strip() for o in other.splitlines()}] or lines
    return changed[0].replace("|", "\\|")[:80]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="mutant names to run (default: all)")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    base = Path(tempfile.mkdtemp(prefix="glint-mutants-", dir=args.workdir))
    rows, survivors = [], 0
    for mutant in chosen:
        tree = base / mutant.name
        copy_tree(tree)
        passed, seconds, _ = run_tests(tree, mutant.tests)
        assert passed, f"{mutant.name}: the tests fail without the mutation; fix them first"
        apply(tree, mutant)
        survived, seconds, why = run_tests(tree, mutant.tests)
        survivors += survived
        rows.append((mutant, "**survived**" if survived else "killed", why, seconds))
        print(f"{mutant.name}: {'SURVIVED' if survived else 'killed'} ({seconds:.0f} s) {why}", flush=True)
        shutil.rmtree(tree, ignore_errors=True)
    print(f"\n{dt.date.today()}  {os.cpu_count()} CPUs  {len(rows)} mutants, {len(rows) - survivors} killed")
    print("| guarantee | mechanism disabled (mutant: the edit) | test that fails | result | s |\n|---|---|---|---|---|")
    for mutant, result, _why, seconds in rows:
        tests = ", ".join(f"`{t.split('::')[-1]}`" for t in mutant.tests)
        edit = f"`{_line(mutant.old, mutant.new)}` → `{_line(mutant.new, mutant.old)}`"
        print(f"| {mutant.guarantee} | `{mutant.name}`, {mutant.file}: {edit} | {tests} | {result} | {seconds:.0f} |")
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
