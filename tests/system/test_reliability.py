"""Issue 6: kill anywhere, bit-identical resume, write errors, tracking outages against a real server."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY, wait_until
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from glint_track.checkpoint.format import load_checkpoint
from glint_track.checkpoint.schema import CorruptCheckpoint
from glint_track.cli import main
from glint_track.files import file_digest
from glint_track.tracking import send as tracking  # where tracking calls are performed
from glint_track.training.checkpointer import Checkpointer, KeepPolicy, TrainProgress
from glint_track.training.save_process import SaveProcess

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import differing_parts, train_command, with_killpoint  # noqa: E402
from kill_anywhere import kill_and_resume  # noqa: E402
from servers import MlflowServer  # noqa: E402


def run_folder(run_id: str) -> Path:
    return Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "checkpoints"


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.mark.timeout(600)
def test_sigkill_at_random_moments_and_while_writing_then_resume_by_run_id(tmp_path: Path, tiny_h5: Path) -> None:
    """Quick mode of benchmarks/kill_anywhere.py: 6 stops, each followed by a resume by run ID; half of them
    SIGKILLs while a checkpoint file is written, the others a SIGKILL or a SIGTERM from outside (then the run must
    be KILLED and hold the last printed epoch); half of the processes serialise in the save process, a third
    upload their checkpoints late."""
    save_process = "alternate" if SaveProcess.available() else "off"
    report = kill_and_resume(tmp_path, tiny_h5, kills=6, epochs=60, seed=1, save_process=save_process)
    assert report.failures == [] and report.kills == 6, report
    assert report.kill_phases.get("writing a checkpoint", 0) >= 3, report
    assert any(phase.endswith("(SIGTERM)") for phase in report.kill_phases), report


def test_deterministic_run_killed_after_epoch_2_and_resumed_equals_a_straight_run(tiny_h5: Path) -> None:
    args = ["--h5", str(tiny_h5), *TINY, "--deterministic", "--epochs", "4"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    straight = subprocess.run(
        [sys.executable, "-m", "glint_track", "train", *args, "--run-name", "straight"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr
    run_id = _killed_at(
        "publish:latest_checkpoint.pth:2", [*args, "--run-name", "killed"]
    )  # SIGKILL while epoch 3 trains
    assert load_checkpoint(run_folder(run_id) / "latest_checkpoint.pth")["epoch"] == 2
    resumed = subprocess.run(
        [sys.executable, "-m", "glint_track", "train", "--resume", run_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "epochs 3→4" in resumed.stderr
    straight_id = mlflow.search_runs(
        search_all_experiments=True, filter_string="attributes.run_name = 'straight'", output_format="list"
    )[0].info.run_id
    a, b = (load_checkpoint(run_folder(r) / "latest_checkpoint.pth") for r in (run_id, straight_id))
    assert differing_parts(a, b) == []  # weights and optimizer moments, bit for bit
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "val_loss")] == [1, 2, 3, 4]


def test_deterministic_and_compile_are_refused_together(tiny_h5: Path) -> None:
    result = CliRunner().invoke(main, ["train", "--h5", str(tiny_h5), *TINY, "--deterministic", "--compile"])
    assert "--deterministic cannot be combined with --compile" in one_error_line(result)


def test_a_crash_between_checksum_and_checkpoint_upload_leaves_a_file_that_verifies(tmp_path: Path) -> None:
    class Store:  # the run's checkpoints/ folder; `fail_on` stops an upload, as a crash would
        run_id = "r"

        def __init__(self) -> None:
            self.fail_on: str | None = None

        def log_artifact(self, local_path: Path, artifact_dir: str) -> None:
            if local_path.name == self.fail_on:
                raise KeyboardInterrupt
            (tmp_path / "run").mkdir(exist_ok=True)
            (tmp_path / "run" / local_path.name).write_bytes(local_path.read_bytes())

        def delete_artifact(self, artifact_path: str) -> None:
            raise AssertionError("nothing to delete")

    store = Store()
    local = tmp_path / "local"
    local.mkdir()
    checkpointer = Checkpointer(local, store, KeepPolicy(save_every_n_epochs=0))
    model = torch.nn.Linear(2, 2)
    parts = {"model": model, "progress": TrainProgress("val_loss", "min")}
    parts["progress"].update(1, {"val_loss": 1.0})
    checkpointer.save(parts, {}, 1, is_best=False)
    store.fail_on = "latest_checkpoint.pth"  # the new checksum file goes up, the checkpoint does not
    parts["progress"].update(2, {"val_loss": 0.5})
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save(parts, {}, 2, is_best=False)
    assert load_checkpoint(tmp_path / "run" / "latest_checkpoint.pth")["epoch"] == 1
    store.fail_on = None
    checkpointer.save(parts, {}, 2, is_best=False)
    assert load_checkpoint(tmp_path / "run" / "latest_checkpoint.pth")["epoch"] == 2
    (tmp_path / "run" / "latest_checkpoint.pth").write_bytes((local / "latest_checkpoint.pth").read_bytes()[:-100])
    with pytest.raises(CorruptCheckpoint):
        load_checkpoint(tmp_path / "run" / "latest_checkpoint.pth")


def test_a_resumed_checkpoints_copies_are_written_as_it_was_not_as_training_changed_it_since(tmp_path: Path) -> None:
    """Checkpointer.complete hands the resumed checkpoint to the background writer; the optimizer holds that
    checkpoint's tensors as its state and training changes them in place meanwhile. The copies must hold the
    checkpoint as it was (a fresh-clone CI run published an epoch file whose CRC failed: saved while it changed)."""

    class Later:  # a busy background writer: the job runs after training has moved on
        def __init__(self) -> None:
            self.jobs: list = []

        def submit(self, job, *args) -> None:
            self.jobs.append((job, args))

    class Store:
        run_id = "r"

        def log_artifact(self, local_path: Path, artifact_dir: str) -> bool:
            return True

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    checkpoint = {"epoch": 2, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}
    checkpoint = torch.load(_saved(checkpoint, tmp_path / "resumed.pth"), weights_only=True)  # as a resume reads it
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    before = checkpoint["optimizer_state_dict"]["state"][0]["exp_avg"].clone()
    writer = Later()
    local = tmp_path / "local"
    local.mkdir()
    Checkpointer(local, Store(), KeepPolicy(save_every_n_epochs=1), writer=writer).complete(checkpoint, True)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()  # epoch 3 trains: Adam's moments change in place
    for job, args in writer.jobs:
        job(*args)
    for name in ("best_model.pth", "epoch_002.pth"):
        written = load_checkpoint(local / name)["optimizer_state_dict"]["state"][0]["exp_avg"]
        assert torch.equal(written, before), name


def _saved(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_checksums_written_while_uploads_are_spooled_accept_every_version_the_run_may_hold(tmp_path: Path) -> None:
    """While the server is away, uploads wait in the spool (a newer one replaces a pending one of the same file)
    and are replayed later in order; a crash may stop the replay after any call. Whatever it sent, the run's
    latest_checkpoint.pth must verify against the run's checksum file."""

    class SpoolingStore:
        run_id = "r"

        def __init__(self) -> None:
            self.down, self.pending = False, []  # (name, bytes), in upload order

        def log_artifact(self, local_path: Path, artifact_dir: str) -> bool:
            if not self.down:
                self.replay(len(self.pending))
                (tmp_path / "run" / local_path.name).write_bytes(local_path.read_bytes())
                return True
            self.pending = [p for p in self.pending if p[0] != local_path.name] + [
                (local_path.name, local_path.read_bytes())
            ]
            return False

        def replay(self, calls: int) -> None:
            for name, data in self.pending[:calls]:
                (tmp_path / "run" / name).write_bytes(data)
            self.pending = self.pending[calls:]

    (tmp_path / "run").mkdir()
    local = tmp_path / "local"
    local.mkdir()
    store = SpoolingStore()
    checkpointer = Checkpointer(local, store, KeepPolicy(save_every_n_epochs=0))
    model = torch.nn.Linear(2, 2)
    parts = {"model": model, "progress": TrainProgress("val_loss", "min")}

    def save(epoch: int) -> None:
        with torch.no_grad():
            model.weight.add_(1)
        parts["progress"].update(epoch, {"val_loss": 1.0 / epoch})
        checkpointer.save(parts, {}, epoch, is_best=False)

    save(1)  # delivered
    store.down = True
    for epoch in (2, 3, 4):  # spooled; each compacts the pending uploads of the one before
        save(epoch)
    pending, run_files = list(store.pending), {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    for crash_after in range(len(pending) + 1):  # the replay stops after any call
        for name, data in run_files.items():
            (tmp_path / "run" / name).write_bytes(data)
        store.pending = list(pending)
        store.replay(crash_after)
        assert load_checkpoint(tmp_path / "run" / "latest_checkpoint.pth")["epoch"] in (1, 4), crash_after
    store.down = False
    save(5)  # the server is back: the spool goes first, then the new upload
    assert load_checkpoint(tmp_path / "run" / "latest_checkpoint.pth")["epoch"] == 5
    assert checkpointer.published["latest_checkpoint.pth"] == [file_digest(local / "latest_checkpoint.pth")]


def _killed_at(point: str, args: list[str]) -> str:
    """Train in a real process that SIGKILLs itself at `point` (tests/killpoints); returns the run ID."""
    env = with_killpoint(dict(os.environ), point)
    proc = subprocess.run(
        [sys.executable, "-m", "glint_track", "train", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return mlflow.search_runs(search_all_experiments=True, output_format="list")[0].info.run_id


def test_sigkill_between_the_latest_checkpoint_and_its_copies_is_completed_by_the_resume(tiny_h5: Path) -> None:
    """Killed right after epoch 2's latest_checkpoint.pth went up, before its best/epoch copies did: the
    resume publishes them (Checkpointer.complete), so no epoch file and no best model is ever missing."""
    args = [
        "--h5",
        str(tiny_h5),
        *TINY,
        "--epochs",
        "3",
        "--save-freq",
        "1",
        "--keep-last-n",
        "3",
        "--monitor",
        "train_loss",
    ]
    run_id = _killed_at("publish:latest_checkpoint.pth:2", args)  # train_loss falls each epoch: each is the best
    folder = run_folder(run_id)
    assert load_checkpoint(folder / "latest_checkpoint.pth")["epoch"] == 2
    assert not (folder / "epoch_002.pth").exists() and load_checkpoint(folder / "best_model.pth")["epoch"] == 1
    result = CliRunner().invoke(main, ["train", "--resume", run_id])
    assert result.exit_code == 0, result.output
    assert [load_checkpoint(folder / f"epoch_{e:03d}.pth")["epoch"] for e in (1, 2, 3)] == [1, 2, 3]
    assert load_checkpoint(folder / "best_model.pth")["epoch"] == 3
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "train_loss")] == [1, 2, 3]


def test_sigkill_while_logging_the_model_is_finished_by_the_resume(tiny_h5: Path) -> None:
    run_id = _killed_at("log_model", ["--h5", str(tiny_h5), *TINY, "--epochs", "2"])
    run = mlflow.get_run(run_id)
    assert run.info.status == "RUNNING" and load_checkpoint(run_folder(run_id) / "latest_checkpoint.pth")["epoch"] == 2
    result = CliRunner().invoke(main, ["train", "--resume", run_id])
    assert result.exit_code == 0, result.output
    assert "stopped before its model was logged" in result.stderr
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and [
        m.step for m in MlflowClient().get_metric_history(run_id, "val_loss")
    ] == [1, 2]
    models = mlflow.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    ready = [m for m in models if m.status == LoggedModelStatus.READY]
    assert len(ready) == 1 and mlflow.pyfunc.load_model(f"models:/{ready[0].model_id}") is not None


@pytest.mark.parametrize("model_when_killed", ["half-logged", "logged"])
def test_run_killed_after_its_last_epoch_is_finished_by_resume(
    tiny_h5: Path, monkeypatch: pytest.MonkeyPatch, model_when_killed: str
) -> None:
    real_log_model = tracking.log_pyfunc_model

    def killed(*args: object) -> None:  # dies while logging the model (left PENDING), or just after
        if model_when_killed == "logged":
            real_log_model(*args)
        else:
            run = mlflow.active_run()
            MlflowClient().create_logged_model(run.info.experiment_id, name="model", source_run_id=run.info.run_id)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(tracking, "log_pyfunc_model", killed)
        CliRunner().invoke(main, ["train", "--h5", str(tiny_h5), *TINY, "--epochs", "2"])
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert (
        run.info.status == "KILLED"
        and load_checkpoint(run_folder(run.info.run_id) / "latest_checkpoint.pth")["epoch"] == 2
    )
    result = CliRunner().invoke(main, ["train", "--resume", run.info.run_id])
    assert result.exit_code == 0, result.output
    assert "stopped before its model was logged" in result.stderr
    run = mlflow.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and "best_val_loss" in run.data.metrics
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
    best_epoch = load_checkpoint(run_folder(run.info.run_id) / "best_model.pth")["epoch"]
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "best_val_loss")] == [best_epoch]
    (model,) = mlflow.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list"
    )
    assert model.status == LoggedModelStatus.READY and mlflow.pyfunc.load_model(f"models:/{model.model_id}") is not None


def test_disk_full_while_writing_a_checkpoint_stops_with_the_previous_one_intact(
    tiny_h5: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 2's latest_checkpoint.pth
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    result = CliRunner().invoke(main, ["train", "--h5", str(tiny_h5), *TINY, "--epochs", "3"])
    message = one_error_line(result)
    assert (
        "writing the epoch 2 checkpoint" in message
        and "No space left on device" in message
        and "previous checkpoint is intact" in message
    )
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.info.status == "FAILED"
    assert load_checkpoint(run_folder(run.info.run_id) / "latest_checkpoint.pth")["epoch"] == 1
    assert load_checkpoint(Path("runs") / run.info.run_id / "latest_checkpoint.pth")["epoch"] == 1


def test_disk_full_while_uploading_a_checkpoint_stops_with_the_runs_copy_intact(
    tiny_h5: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_copy, uploads = tracking.copy_atomic, []

    def copy(src: Path, dst: Path) -> None:
        if src.name == "latest_checkpoint.pth":
            uploads.append(1)
            if len(uploads) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(src, dst)

    monkeypatch.setattr(tracking, "copy_atomic", copy)
    result = CliRunner().invoke(main, ["train", "--h5", str(tiny_h5), *TINY, "--epochs", "3"])
    message = one_error_line(result)
    assert "uploading checkpoints/latest_checkpoint.pth" in message and "No space left on device" in message
    run_id = mlflow.search_runs(search_all_experiments=True, output_format="list")[0].info.run_id
    assert (
        load_checkpoint(run_folder(run_id) / "latest_checkpoint.pth")["epoch"] == 1
    )  # verified against the new checksum file
    monkeypatch.setattr(tracking, "copy_atomic", real_copy)
    resumed = CliRunner().invoke(main, ["train", "--resume", run_id])
    assert resumed.exit_code == 0, resumed.output
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "val_loss")] == [1, 2, 3]


# -- tracking outages, against a real `mlflow server` ------------------------------------------------


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    srv = MlflowServer(tmp_path)
    srv.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    yield srv
    srv.stop()


def _train_through_outage(
    h5: Path, server: MlflowServer, epochs: int, env: dict[str, str], restart_when_spooling: bool | float
) -> tuple[subprocess.CompletedProcess, str]:
    """Train in a subprocess; SIGKILL the server once epoch 2 is logged (uploads go up every epoch, so one is
    in flight or next); start it again once the trainer says it is spooling (True), or after that many
    seconds (a float). Returns the finished process and the run ID."""
    cmd = [
        *train_command("--h5", str(h5)),
        *TINY,
        "--epochs",
        str(epochs),
        "--save-freq",
        "2",
    ]
    env = (
        dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            MLFLOW_TRACKING_URI=server.uri,
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
            GLINT_TRACK_SPOOL_RETRY_S="0.5",
        )
        | env
    )
    log = server.folder / "train.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        wait_until(lambda: "epoch 2/" in log.read_text() or proc.poll() is not None, 300, "epoch 2")
        assert proc.poll() is None, log.read_text()
        server.stop()
        if restart_when_spooling is True:
            wait_until(lambda: "is unreachable" in log.read_text() or proc.poll() is not None, 300, "the outage")
            server.start()
        elif restart_when_spooling:
            time.sleep(restart_when_spooling)
            server.start()
        out, _ = proc.communicate(timeout=300)
    text = log.read_text()
    run_id = next(
        line.split("run ")[1].split(":")[0] for line in text.splitlines() if " run " in line and "train /" in line
    )
    return subprocess.CompletedProcess(cmd, proc.returncode, out, text), run_id


def _complete_in_server(run_id: str, epochs: int) -> None:
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_loss", "val_f1"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, epochs + 1)), key
    names = {Path(f.path).name for f in client.list_artifacts(run_id, "checkpoints")}
    assert {"latest_checkpoint.pth", "best_model.pth", f"epoch_{epochs:03d}.pth"} <= names
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/latest_checkpoint.pth")
    assert torch.load(path, weights_only=True)["epoch"] == epochs
    assert "training.log" in {Path(f.path).name for f in client.list_artifacts(run_id)}


def test_training_goes_on_while_the_server_is_down_and_catches_up_when_it_is_back(
    tiny_h5: Path, server: MlflowServer
) -> None:
    result, run_id = _train_through_outage(
        tiny_h5, server, 12, {"GLINT_TRACK_SYNC_WAIT_S": "120"}, restart_when_spooling=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is back: sent" in result.stderr
    _complete_in_server(run_id, 12)


def test_with_mlflows_own_retries_a_server_killed_mid_upload_and_back_in_seconds_loses_nothing(
    tiny_h5: Path, server: MlflowServer
) -> None:
    """MLflow's default HTTP retries (no MLFLOW_HTTP_REQUEST_MAX_RETRIES override): the calls in flight when
    the server dies are retried by MLflow, or spooled, and the run ends complete either way."""
    env = {
        "GLINT_TRACK_SYNC_WAIT_S": "120",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7"),
    }
    result, run_id = _train_through_outage(tiny_h5, server, 8, env, restart_when_spooling=3.0)
    assert result.returncode == 0, result.stderr[-3000:]
    _complete_in_server(run_id, 8)


@pytest.mark.parametrize("sent_by", ["sync", "resume"])
def test_spool_left_at_exit_is_sent_by_sync_or_by_the_next_resume(
    tiny_h5: Path, server: MlflowServer, sent_by: str
) -> None:
    result, run_id = _train_through_outage(
        tiny_h5, server, 6, {"GLINT_TRACK_SYNC_WAIT_S": "0"}, restart_when_spooling=False
    )
    from glint_track.cli.train import EXIT_SPOOL_PENDING

    assert result.returncode == EXIT_SPOOL_PENDING, result.stderr[-3000:]
    spool = Path("runs") / run_id / "spool"
    assert f"glint-track sync {spool}" in result.stderr
    assert not CliRunner().invoke(main, ["sync", str(spool)]).exit_code == 0  # the server is still down
    server.start()
    if sent_by == "sync":
        synced = CliRunner().invoke(main, ["sync", str(spool)])
        assert synced.exit_code == 0 and f"to run {run_id}" in synced.output, synced.output
        _complete_in_server(run_id, 6)
    else:  # README: what a process left in its spool reaches the run before the resumed epochs
        resumed = CliRunner().invoke(main, ["train", "--resume", run_id, "--epochs", "8"])  # --save-freq 2
        assert resumed.exit_code == 0, resumed.output
        _complete_in_server(run_id, 8)
    assert "nothing left to send" in CliRunner().invoke(main, ["sync", str(spool)]).output
