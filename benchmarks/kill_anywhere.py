"""Kill anywhere: SIGKILL or SIGTERM a training at random moments, resume it by run ID, again and again.

    python benchmarks/kill_anywhere.py [--kills 50] [--epochs 1000] [--seed 0]

A reference run trains straight through. A second run is stopped — every other time by SIGKILL the moment a
checkpoint file is being written (it kills itself then: tests/killpoints), otherwise from outside, by SIGKILL
and SIGTERM in turn, at a random moment while it starts, steps, writes checkpoints, uploads them, logs metrics
or deletes old epoch files (`--save-freq 1` makes every epoch do all of those); every third process uploads
each checkpoint file SLOW_UPLOAD_S late, as a slow machine or store would — and resumed by its run ID each
time. Checked after every kill: each checkpoint in the run loads and matches its checksum, the metric history
agrees with it, and the next process resumes from the newest of them; after a SIGTERM, the run is KILLED and
holds the last epoch the process printed. Checked at the end: the run is FINISHED at the last epoch, every
epoch metric has each step exactly once, and (the training being deterministic on the CPU) its
final weights and optimizer moments equal the reference run's bit for bit.

tests/system/test_reliability.py runs the quick mode (10 kills); the table is printed last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from _common import child_env, differing_parts, make_workdir, with_killpoint
from mlflow.tracking import MlflowClient

from glint_track.checkpoint.format import BEST, EPOCH_FILE, LATEST, load_checkpoint

TRAIN = [
    "--base-channels",
    "4",
    "--batch-size",
    "8",
    "--val-split",
    "0.25",
    "--passes-per-epoch",
    "1",
    "--device",
    "cpu",
    "--save-freq",
    "1",
    "--keep-last-n",
    "2",
    "--deterministic",
]  # --keep-last-n: KEEP_LAST_N below
RUN_LINE = re.compile(r"run ([0-9a-f]{32}): .* epochs (\d+)→(\d+)")


@dataclass
class Report:
    kills: int = 0
    resumes: int = 0
    kill_phases: dict[str, int] = field(default_factory=dict)  # what the run's log said last before each kill
    failures: list[str] = field(default_factory=list)


#: Every third process uploads each checkpoint file this late (a slow machine or store; tests/killpoints).
SLOW_UPLOAD_S = 0.4


def _env(workdir: Path, kill_at: str | None, save_process: str, slow_upload_s: float) -> dict[str, str]:
    env = child_env(XDG_CACHE_HOME=str(workdir / "cache"), GLINT_TRACK_SAVE_PROCESS=save_process)
    env.pop("MLFLOW_TRACKING_URI", None)  # MLflow's embedded default: ./mlflow.db in workdir
    return with_killpoint(env, kill_at, slow_upload_s=slow_upload_s)


def _start(
    workdir: Path,
    args: list[str],
    log: Path,
    kill_at: str | None = None,
    save_process: str = "off",
    slow_upload_s: float = 0.0,
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "glint_track", "train", *args],
        cwd=workdir,
        env=_env(workdir, kill_at, save_process, slow_upload_s),
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
    )


def _artifact_dir(workdir: Path, run_id: str) -> Path:
    uri = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(run_id).info.artifact_uri
    return Path(uri.removeprefix("file://")) / "checkpoints"


KEEP_LAST_N = 2


def finished_epoch(log: Path) -> int:
    """The last epoch the process said it finished (0: none)."""
    return max((int(m.group(1)) for m in re.finditer(r" epoch (\d+)/\d+ ", log.read_text())), default=0)


def check_run(workdir: Path, run_id: str, finished: int, previous: int) -> int:
    """What a kill may leave, checked against the metric history; returns the latest checkpoint's epoch.

    - every checkpoint has its checksum file and matches it; each epoch_NNN.pth holds epoch NNN;
    - the latest checkpoint is never older than the one resumed from (`previous`) and at most one epoch
      behind the last epoch the process finished (a kill loses the epoch in progress and, in that epoch's
      first steps, the one before);
    - each metric step is logged at most once, for epochs 1…latest, all of them but possibly the latest
      (its metrics go up after its checkpoint; the resume logs them);
    - its best epoch and value are the minimum of the val_loss history (with its own epoch's value);
      best_model.pth holds that epoch (or the best before, if the kill came between the two uploads);
    - the epoch files are the newest KEEP_LAST_N of 1…latest (the latest's copy, and the deletion of the
      oldest, may be what the kill interrupted).
    """
    folder = _artifact_dir(workdir, run_id)
    states = {}
    for path in folder.glob("*.pth"):
        assert (folder / f"{path.name}.sha256").is_file(), f"{path.name} has no checksum file"
        states[path.name] = load_checkpoint(path)  # raises on a cut or damaged file
    files = {int(m.group(1)): name for name in states if (m := EPOCH_FILE.match(name))}
    for number, name in files.items():
        assert states[name]["epoch"] == number, f"{name} holds epoch {states[name]['epoch']}"
    latest = states[LATEST]
    epoch = int(latest["epoch"])
    assert max(finished - 1, previous) <= epoch <= max(finished, previous) + 1, (
        f"latest checkpoint at epoch {epoch}; the process resumed from {previous} and had finished epoch {finished}"
    )
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    history = {}
    for m in client.get_metric_history(run_id, "val_loss"):
        assert m.step not in history, f"val_loss step {m.step} logged twice"
        history[m.step] = m.value
    assert set(range(1, epoch)) <= set(history) <= set(range(1, epoch + 1)), (
        f"val_loss steps {sorted(history)}, latest {epoch}"
    )
    history.setdefault(epoch, latest["metrics"]["val_loss"])
    best_epoch = min(history, key=lambda e: (history[e], e))
    assert (latest["best"]["epoch"], latest["best"]["value"]) == (best_epoch, history[best_epoch]), (
        latest["best"],
        history,
    )
    best_file = int(states[BEST]["epoch"])
    best_before = min((e for e in history if e < epoch), key=lambda e: (history[e], e), default=None)
    assert best_file == best_epoch or (best_epoch == epoch and best_file == best_before), (best_file, best_epoch)
    newest = set(range(max(1, epoch - KEEP_LAST_N + 1), epoch + 1))
    assert newest - {epoch} <= set(files) <= newest | {epoch - KEEP_LAST_N}, (
        f"epoch files {sorted(files)}, latest {epoch}"
    )
    return epoch


def _stopped_cleanly(workdir: Path, run_id: str, log: Path) -> list[str]:
    """A SIGTERM: the run is KILLED, and the newest checkpoint is the last epoch the process printed (a printed
    epoch is kept; the step in flight is finished, the epoch in progress is not saved)."""
    run = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(run_id)
    latest = int(load_checkpoint(_artifact_dir(workdir, run_id) / LATEST)["epoch"])
    problems = [f"after SIGTERM the run is {run.info.status}"] * (run.info.status != "KILLED")
    if finished_epoch(log) and latest < finished_epoch(log):
        problems.append(f"after SIGTERM the newest checkpoint is epoch {latest}, epoch {finished_epoch(log)} printed")
    return problems


def _phase(log: Path, workdir: Path, run_id: str | None) -> str:
    """Where the kill landed. A temp file left beside a checkpoint (locally or in the run) proves it was
    being written; otherwise the log tells start-up from training."""
    if run_id:
        local = workdir / "runs" / run_id
        if any(local.glob(".*.tmp")):
            return "writing a checkpoint"
        if any(p.name.startswith(".") for p in _artifact_dir(workdir, run_id).glob("*")):
            return "uploading a checkpoint"
    return "training" if RUN_LINE.search(log.read_text()) else "starting up"


def kill_and_resume(workdir: Path, h5: Path, kills: int, epochs: int, seed: int, save_process: str = "off") -> Report:
    """`save_process`: GLINT_TRACK_SAVE_PROCESS of every process, or "alternate": off for attempts 0-1, on
    for 2-3, and so on (each mode then sees both kinds of kill)."""
    rng = random.Random(seed)
    report = Report()
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    common = ["--h5", str(h5), *TRAIN, "--epochs", str(epochs)]

    t0, startup = time.perf_counter(), None
    reference = _start(workdir, [*common, "--run-name", "reference"], logs / "reference.log")
    while reference.poll() is None:
        if startup is None and RUN_LINE.search((logs / "reference.log").read_text()):
            startup = time.perf_counter() - t0  # imports, data, model, MLflow run: then the epochs start
        time.sleep(0.02)
    assert reference.returncode == 0 and startup is not None, (logs / "reference.log").read_text()
    ref_run = RUN_LINE.search((logs / "reference.log").read_text()).group(1)

    # the first process is killed only once its run has a checkpoint (before that there is nothing to resume)
    log = logs / "attempt_000.log"
    proc = _start(workdir, [*common, "--run-name", "killed"], log)
    run_id = None
    while run_id is None or not (_artifact_dir(workdir, run_id) / "latest_checkpoint.pth").is_file():
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
        if run_id is None and (match := RUN_LINE.search(log.read_text())):
            run_id = match.group(1)
    delay, saved, attempt, aimed = rng.uniform(0, 0.5), None, 0, None
    while True:
        # the odd attempts die (SIGKILL, from a thread of their own) while writing their 1st-3rd checkpoint
        # (tests/killpoints), the even ones are stopped from here at a random moment (start-up, steps, saving,
        # uploading, logging metrics, deleting old epoch files), by SIGKILL and SIGTERM in turn
        stop = (signal.SIGKILL, signal.SIGTERM)[attempt // 2 % 2]
        # an aimed attempt gets 30 s of training to reach its write, counted from the end of its start-up (which
        # a loaded machine can stretch far beyond the reference's; a start-up that never ends is cut at 300 s)
        deadline = time.perf_counter() + (300.0 if aimed else delay)
        training = not aimed
        while report.kills < kills and time.perf_counter() < deadline and proc.poll() is None:
            if not training and RUN_LINE.search(log.read_text()):
                training, deadline = True, time.perf_counter() + 30.0
            time.sleep(0.01)
        killed = report.kills < kills and proc.poll() in (None, -signal.SIGKILL)
        sent = signal.SIGKILL if aimed else stop
        if killed and proc.poll() is None:
            proc.send_signal(sent)
        try:
            code = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            report.failures.append(f"attempt {attempt} had not exited 300 s after {sent.name}")
            break
        if code == 128 + signal.SIGTERM and sent == signal.SIGTERM:
            report.failures += _stopped_cleanly(workdir, run_id, log)
        if saved is not None and (match := RUN_LINE.search(log.read_text())) and int(match.group(2)) != saved + 1:
            report.failures.append(
                f"attempt {attempt} resumed at epoch {match.group(2)}, the newest checkpoint is {saved}"
            )
        if not killed:
            if proc.returncode != 0:
                report.failures.append(f"attempt {attempt} exited {proc.returncode}: {log.read_text()[-2000:]}")
            break
        report.kills += 1
        phase = _phase(log, workdir, run_id) + (" (SIGTERM)" if sent == signal.SIGTERM else "")
        report.kill_phases[phase] = report.kill_phases.get(phase, 0) + 1
        try:
            saved = check_run(workdir, run_id, finished_epoch(log), saved or 0)
        except Exception as e:  # noqa: BLE001 - reported, not raised, so the table shows every failure
            report.failures.append(f"kill {report.kills}: {e}")
            break
        if MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(run_id).info.status == "FINISHED":
            break  # killed after the run had finished (while the process was exiting): nothing left to resume
        attempt += 1
        log = logs / f"attempt_{attempt:03d}.log"
        aimed = f"write:{rng.randint(1, 3)}" if attempt % 2 and report.kills < kills else None
        mode = ("off", "on")[attempt // 2 % 2] if save_process == "alternate" else save_process
        proc = _start(workdir, ["--resume", run_id], log, aimed, mode, SLOW_UPLOAD_S * (attempt % 3 == 0))
        report.resumes += 1
        # mostly during training (every epoch writes and uploads files), sometimes during start-up
        delay = rng.uniform(startup, startup + 1.0) if rng.random() < 0.7 else rng.uniform(0.3, startup)
    if not report.failures:
        report.failures += final_checks(workdir, run_id, ref_run, epochs)
    return report


def final_checks(workdir: Path, run_id: str, ref_run: str, epochs: int) -> list[str]:
    problems = []
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(run_id)
    if run.info.status != "FINISHED":
        problems.append(f"run status {run.info.status}")
    for key, expected in (
        ("train_loss", list(range(1, epochs + 1))),
        ("val_loss", list(range(1, epochs + 1))),
        ("val_f1", list(range(1, epochs + 1))),
        ("lr", list(range(1, epochs + 1))),  # the default schedule (flat-cosine) sets it each epoch
    ):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        if steps != expected:
            problems.append(f"{key} steps {steps}")
    if len(best := client.get_metric_history(run_id, "best_val_f1")) != 1:  # the logged model's, once
        problems.append(f"best_val_f1 logged {len(best)} times")
    folder = _artifact_dir(workdir, run_id)
    if leftovers := [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]:
        problems.append(f"partial files left in the run: {leftovers}")
    killed, reference = (
        load_checkpoint(folder / "latest_checkpoint.pth"),
        load_checkpoint(_artifact_dir(workdir, ref_run) / "latest_checkpoint.pth"),
    )
    if killed["epoch"] != epochs:
        problems.append(f"latest checkpoint at epoch {killed['epoch']}")
    problems += [f"{part} differs from the uninterrupted run" for part in differing_parts(killed, reference)]
    try:
        check_run(workdir, run_id, epochs, epochs)
        best = load_checkpoint(folder / "best_model.pth")["epoch"]
        files = sorted((p.name for p in folder.glob("epoch_*.pth")), key=lambda name: int(name[6:-4]))  # 999 < 1000
        assert best == killed["best"]["epoch"], (
            f"best_model.pth holds epoch {best}, the best is {killed['best']['epoch']}"
        )
        assert files == [f"epoch_{e:03d}.pth" for e in range(epochs - KEEP_LAST_N + 1, epochs + 1)], files
    except AssertionError as e:
        problems.append(str(e))
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--save-process", choices=["off", "on", "alternate"], default="alternate")
    args = parser.parse_args()

    from glint_track.data.synth import write_synthetic

    workdir = make_workdir(args.workdir, "glint-kill-")
    h5 = write_synthetic(workdir / "tiny.h5", num_samples=32, size=32, num_glints=4, seed=1)
    t0 = time.perf_counter()
    report = kill_and_resume(workdir, h5, args.kills, args.epochs, args.seed, args.save_process)
    print(
        f"\n{dt.date.today()}  torch {torch.__version__}  {os.cpu_count()} CPUs  {time.perf_counter() - t0:.0f} s  "
        f"workdir {workdir}"
    )
    print("| kills | resumes | killed while | failures |\n|---|---|---|---|")
    phases = ", ".join(f"{k}: {v}" for k, v in sorted(report.kill_phases.items()))
    print(f"| {report.kills} | {report.resumes} | {phases} | {len(report.failures)} |")
    for failure in report.failures:
        print("FAILURE:", failure)
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
