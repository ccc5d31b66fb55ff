"""Every bad input: one line naming the problem and the fix, exit code 2, no traceback, nothing modified."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner

from conftest import TINY, latest_checkpoint, train_tiny
from glint_track.cli import main
from glint_track.synth import write_synthetic


def fails_cleanly(args: list[str], message: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output
    return errors[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--val-split", "1.5"], "--val-split must be inside (0, 1)"),
        (["--val-split", "0"], "--val-split must be inside (0, 1)"),
        (["--lr", "-1"], "--lr must be positive"),
        (["--monitor", "val_f2"], "--monitor 'val_f2' is not a metric"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--gpus", "0,1"], "--gpus needs CUDA GPUs"),
    ],
)
def test_bad_values(tiny_h5: Path, extra: list[str], message: str) -> None:
    fails_cleanly(["train", "--h5", str(tiny_h5), *TINY, *extra], message)
    assert not Path("runs").exists()  # rejected before any run or file was created


def test_unknown_loss_is_a_usage_error(tiny_h5: Path) -> None:
    result = CliRunner().invoke(main, ["train", "--h5", str(tiny_h5), "--loss", "l2"])
    assert result.exit_code == 2 and "'l2' is not one of" in result.output


def test_bad_data_files(tmp_path: Path) -> None:
    fails_cleanly(["train", "--h5", "missing.h5"], "missing.h5: no such file")
    (tmp_path / "notes.h5").write_text("hello")
    fails_cleanly(["train", "--h5", "notes.h5"], "notes.h5: is not an HDF5 file")
    fails_cleanly(["train"], "no data file given: pass --h5")


def test_unknown_run_id_and_bad_resume_values(tiny_h5: Path) -> None:
    fails_cleanly(["train", "--resume", "0" * 32], f"no MLflow run with ID {'0' * 32}")
    fails_cleanly(["train", "--resume", "not-a-run"], "neither an existing checkpoint file")


def test_run_without_checkpoint() -> None:
    with mlflow.start_run() as run:
        pass
    fails_cleanly(["train", "--resume", run.info.run_id], "has no checkpoints/latest_checkpoint.pth")


def test_resume_mismatches_and_epochs_not_beyond(tiny_h5: Path, tmp_path: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "2")
    before, path = latest_checkpoint(run_id)
    fails_cleanly(["train", "--resume", run_id, "--epochs", "1"], "already finished epoch 2 and --epochs is 1")
    fails_cleanly(["train", "--resume", run_id, "--epochs", "3", "--base-channels", "8"], "its model has base width 4")
    other = write_synthetic(tmp_path / "six.h5", num_samples=16, size=32, num_glints=6)
    fails_cleanly(["train", "--resume", run_id, "--epochs", "3", "--h5", str(other)], "is not the data run")
    fails_cleanly(["train", "--resume", f"runs:/{run_id}/checkpoints/latest_checkpoint.pth", "--epochs", "3", "--h5", str(other)],
                  "predicts 4 glints but")
    after, _ = latest_checkpoint(run_id)  # nothing already written was touched
    assert after["timestamp"] == before["timestamp"] and after["epoch"] == 2
    assert len(mlflow.MlflowClient().get_metric_history(run_id, "val_loss")) == 2


def test_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model_state_dict": {}, "x": Payload()}, tmp_path / "evil.pth")
    fails_cleanly(["train", "--resume", str(tmp_path / "evil.pth")], "refused to load")


def test_unreachable_tracking_server(tiny_h5: Path) -> None:
    with socket.socket() as s:  # a free loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fails_cleanly(["train", "--h5", str(tiny_h5)], "cannot reach the MLflow tracking server", env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})


def test_debug_shows_the_traceback_and_real_processes_exit_2(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "glint_track"]
    plain = subprocess.run([*cmd, "train", "--h5", "missing.h5"], capture_output=True, text=True)
    assert plain.returncode == 2 and plain.stderr.strip().splitlines() == [plain.stderr.strip()] and "Traceback" not in plain.stderr
    debug = subprocess.run([*cmd, "--debug", "train", "--h5", "missing.h5"], capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_damaged_latest_checkpoint_names_the_newest_intact_one(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "3", "--save-freq", "1", "--keep-last-n", "3")
    artifacts = Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "checkpoints"
    latest = artifacts / "latest_checkpoint.pth"
    latest.write_bytes(latest.read_bytes()[:1000])  # cut short, as by a crash mid-upload
    message = fails_cleanly(["train", "--resume", run_id, "--epochs", "4"], "checksum mismatch")
    assert f"--resume runs:/{run_id}/checkpoints/epoch_003.pth" in message
    result = CliRunner().invoke(main, ["train", "--resume", f"runs:/{run_id}/checkpoints/epoch_003.pth", "--epochs", "4"])
    assert result.exit_code == 0, result.output


def test_refused_credentials(tiny_h5: Path) -> None:
    """A server that answers 401, as `mlflow server --app-name basic-auth` does to a wrong password."""
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{server.server_port}", "MLFLOW_TRACKING_USERNAME": "ana", "MLFLOW_TRACKING_PASSWORD": "wrong"}
        fails_cleanly(["train", "--h5", str(tiny_h5)], "refused the credentials (HTTP 401)", env=env)
    finally:
        server.shutdown()
