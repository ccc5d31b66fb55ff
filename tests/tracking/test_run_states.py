"""Run states are honest, with real processes: SIGTERM/SIGINT end a run KILLED with its last checkpoint,
any failure after the run exists ends it FAILED, and one process at a time may train a run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from conftest import TINY, fails_cleanly, train_tiny
from mlflow.tracking import MlflowClient

from glint_track.checkpoint.format import load_checkpoint
from glint_track.cli import main
from glint_track.tracking.server import open_local_store
from glint_track.tracking.tracker import RunTracker

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import child_env, with_killpoint  # noqa: E402


def start_training(cwd: Path, *args: str, gate: Path | None = None) -> subprocess.Popen:
    """`python -m glint_track train …` in `cwd` (its ./mlflow.db), stderr captured; with `gate`, it waits there
    before claiming its run (see tests/killpoints)."""
    env = with_killpoint(child_env(XDG_CACHE_HOME=str(cwd / "cache"), GLINT_TRACK_LEASE_TTL_S="8"), None, gate=gate)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        env.pop(var, None)
    open_local_store()  # the test reads ./mlflow.db while the child trains: one of them creates it, not both
    return subprocess.Popen(
        [sys.executable, "-m", "glint_track", "train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(proc: subprocess.Popen, epoch: int, timeout: float = 120) -> str:
    """Wait until the process's run holds a checkpoint of `epoch` or later; returns the run ID."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for run in mlflow.search_runs(search_all_experiments=True, output_format="list"):
            latest = Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoints" / "latest_checkpoint.pth"
            if run.info.status == "RUNNING" and latest.is_file() and load_checkpoint(latest)["epoch"] >= epoch:
                return run.info.run_id
        time.sleep(0.1)
    raise AssertionError("no checkpoint in time")


def steps(run_id: str, key: str = "val_loss") -> list[int]:
    return [m.step for m in MlflowClient().get_metric_history(run_id, key)]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_finishes_the_step_keeps_the_checkpoint_and_marks_the_run_killed(
    tiny_h5: Path, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    proc = start_training(tmp_path, "--h5", str(tiny_h5), *TINY, "--epochs", "500")
    run_id = wait_for_checkpoint(proc, 2)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and f"--resume {run_id}" in stderr
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    done = load_checkpoint(artifacts / "checkpoints" / "latest_checkpoint.pth")["epoch"]
    assert steps(run_id) == list(range(1, done + 1))  # every finished epoch, each once, and nothing after
    assert (artifacts / "training.log").is_file() and "glint_track.writer" not in run.data.tags  # claim released
    resumed = CliRunner().invoke(main, ["train", "--resume", run_id, "--epochs", str(done + 1)])
    assert resumed.exit_code == 0, resumed.output
    assert steps(run_id) == list(range(1, done + 2)) and MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_a_stop_before_the_first_epoch_ends_says_there_is_nothing_to_resume(tiny_h5: Path, tmp_path: Path) -> None:
    """Ctrl-C in epoch 1 offered `--resume <id>`, which then failed for want of a checkpoint: it says what is true."""
    proc = start_training(tmp_path, "--h5", str(tiny_h5), *TINY, "--passes-per-epoch", "5000", "--epochs", "2")
    deadline = time.monotonic() + 120
    while not mlflow.search_runs(search_all_experiments=True, output_format="list"):  # the run exists: epoch 1 runs
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert "stopped before the first epoch ended" in stderr and "--resume" not in stderr, stderr
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "KILLED"
    fails_cleanly(  # a resume anyway says why not, and the command that does what was meant
        ["train", "--resume", run.info.run_id],
        f"nothing to continue; start a new training instead: glint-track train --h5 {tiny_h5}",
    )


def test_an_output_folder_that_cannot_be_written_is_one_line_and_no_run(tiny_h5: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    result = CliRunner().invoke(main, ["train", "--h5", str(tiny_h5), *TINY, "--epochs", "1", "--output-dir", "taken"])
    assert result.exit_code == 2 and "--output-dir taken cannot be written" in result.output, result.output
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_a_store_that_cannot_be_written_is_said_before_the_data_loads(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow retried creating its engine for about two minutes, warning nine times, before the one-line error."""
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}")
    started = time.monotonic()
    line = fails_cleanly(["train", "--h5", str(tiny_h5), *TINY, "--epochs", "1"], "/a_file/mlflow.db cannot be written")
    assert "MLFLOW_TRACKING_URI" in line and time.monotonic() - started < 30


@pytest.mark.parametrize("where", ["describing the run", "uploading the log"])
def test_a_failure_after_the_run_exists_marks_it_failed(
    tiny_h5: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    if where == "describing the run":

        def broken(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(RunTracker, "log_dataset", broken)
    else:
        real = RunTracker.log_artifact

        def broken(self, path, artifact_dir=None):
            if path.name == "training.log":
                raise OSError(28, "No space left on device")
            return real(self, path, artifact_dir)

        monkeypatch.setattr(RunTracker, "log_artifact", broken)
    CliRunner().invoke(main, ["train", "--h5", str(tiny_h5), *TINY, "--epochs", "1"])
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED"


def test_one_writer_per_run_and_a_killed_writers_claim_is_taken_over(tiny_h5: Path, tmp_path: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    first = start_training(tmp_path, "--resume", run_id, "--epochs", "500")
    wait_for_checkpoint(first, 2)
    second = subprocess.run(
        [sys.executable, "-m", "glint_track", "train", "--resume", run_id, "--epochs", "500"],
        cwd=tmp_path,
        env=child_env(XDG_CACHE_HOME=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 2, second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert f"run {run_id} is being trained by pid {first.pid} on {os.uname().nodename}" in line
    first.send_signal(signal.SIGKILL)  # leaves the run RUNNING and its claim behind
    first.wait()
    killed_at = load_checkpoint(
        Path(MlflowClient().get_run(run_id).info.artifact_uri.removeprefix("file://"))
        / "checkpoints"
        / "latest_checkpoint.pth"
    )["epoch"]
    third = CliRunner().invoke(main, ["train", "--resume", run_id, "--epochs", str(killed_at + 1)])
    assert third.exit_code == 0, third.output
    assert f"was left RUNNING by pid {first.pid}" in third.output
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and steps(run_id) == list(range(1, killed_at + 2))
    writers = {k: v for k, v in (run.data.params | run.data.tags).items() if k.startswith("glint_track.writer.")}
    assert len(writers) == 3 and f"pid {first.pid}" in writers["glint_track.writer.2"]  # who trained which part
    assert "glint_track.writer.1" in run.data.tags  # the new run's own claim: no param to set runs apart


def wait_at_gate(gate: Path, count: int, procs: list[subprocess.Popen]) -> list[int]:
    """Wait until `count` processes wait at `gate`; returns their pids."""
    deadline = time.monotonic() + 120
    while len(waiting := sorted(int(f.stem) for f in gate.glob("*.waiting"))) < count:
        assert time.monotonic() < deadline, "no process reached the gate"
        for p in procs:
            assert p.poll() is None, p.communicate()
        time.sleep(0.05)
    return waiting


def test_two_resumes_started_together_train_once(tiny_h5: Path, tmp_path: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = [start_training(tmp_path, "--resume", run_id, "--epochs", "3", gate=gate) for _ in range(2)]
    wait_at_gate(gate, 2, procs)  # both have read the checkpoint of epoch 1 and are about to claim the run
    (gate / "all.go").touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    (refused,) = [err for p, (_, err) in zip(procs, outputs) if p.returncode == 2]
    assert "Traceback" not in refused and refused.strip().splitlines()[-1].startswith(f"Error: run {run_id} "), refused
    assert steps(run_id) == [1, 2, 3]
    assert len(MlflowClient().search_logged_models([MlflowClient().get_run(run_id).info.experiment_id])) == 1


def test_a_resume_that_read_an_older_checkpoint_refuses_instead_of_training_epochs_twice(
    tiny_h5: Path, tmp_path: Path
) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    gate = tmp_path / "gate"
    gate.mkdir()
    late = start_training(tmp_path, "--resume", run_id, "--epochs", "3", gate=gate)
    (pid,) = wait_at_gate(gate, 1, [late])  # it planned from epoch 1
    train_tiny(tiny_h5, "--resume", run_id, "--epochs", "2")  # meanwhile another process trains epoch 2 and ends
    (gate / f"{pid}.go").touch()
    _, err = late.communicate(timeout=300)
    assert late.returncode == 2, err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and f"Error: run {run_id} was trained to epoch 2 by another process" in line, err
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and steps(run_id) == [1, 2]
    assert MlflowClient().get_run(run_id).data.tags.get("glint_track.writer") is None  # its claim was let go


def test_a_run_whose_process_was_killed_is_shown_killed_by_the_next_run(tiny_h5: Path, tmp_path: Path) -> None:
    """kill -9 leaves a run RUNNING for ever; the next training in its experiment sees that its claim's process is
    gone and marks it KILLED (resumable), so the runs table says what happened."""
    proc = start_training(tmp_path, "--h5", str(tiny_h5), *TINY, "--epochs", "500")
    run_id = wait_for_checkpoint(proc, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert MlflowClient().get_run(run_id).info.status == "RUNNING"
    next_run = start_training(tmp_path, "--h5", str(tiny_h5), *TINY, "--epochs", "1")
    _, stderr = next_run.communicate(timeout=300)
    assert next_run.returncode == 0, stderr
    assert f"run {run_id} was left RUNNING by pid {proc.pid}" in stderr and "marked KILLED" in stderr
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    resumed = CliRunner().invoke(main, ["train", "--resume", run_id, "--epochs", "3"])
    assert resumed.exit_code == 0, resumed.output
