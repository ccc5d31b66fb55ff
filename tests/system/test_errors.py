"""Every bad input: one line naming the problem and the fix, exit code 2, no traceback, nothing modified."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY, fails_cleanly, latest_checkpoint, train_tiny

from glint_track.cli import main
from glint_track.data.synth import write_synthetic


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--val-split", "1.5"], "--val-split must be inside (0, 1)"),
        (["--val-split", "0"], "--val-split must be inside (0, 1)"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--lr", "inf"], "--lr must be a positive number (got inf)"),
        (["--lr", "nan"], "--lr must be a positive number (got nan)"),
        (["--seed", "-1"], "--seed must be in 0 … 4294967295 (got -1)"),
        (["--seed", str(2**32)], "--seed must be in 0 …"),
        (["--weight-decay", "-1"], "--weight-decay must be 0 or more"),
        (["--momentum", "-1"], "--momentum must be in [0, 1)"),
        (["--momentum", "1"], "--momentum must be in [0, 1)"),
        (["--step-gamma", "0"], "--step-gamma must be positive"),
        (["--alpha", "-1"], "--alpha must be 0 or more"),
        (["--gamma", "inf"], "--gamma must be 0 or more"),
        (["--match-radius", "inf"], "--match-radius must be positive"),
        (["--threshold", "7"], "--threshold must be inside (0, 1)"),
        (["--experiment", ""], "--experiment must name an MLflow experiment"),
        (["--experiment", "  "], "--experiment must name an MLflow experiment"),
        (["--run-name", ""], "--run-name must not be empty"),
        (["--register-model", "a/b"], "--register-model 'a/b' is not a model name MLflow accepts"),
        (["--register-model", "x:1"], "is not a model name MLflow accepts"),
        (["--monitor", "val_f2"], "--monitor 'val_f2' is not a metric"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--gpus", "0,1"], "--gpus needs CUDA GPUs"),
    ],
)
def test_bad_values(tiny_h5: Path, extra: list[str], message: str) -> None:
    fails_cleanly(["train", "--h5", str(tiny_h5), *TINY, *extra], message)
    assert not Path("runs").exists()  # rejected before any run or file was created


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_inference_thresholds_are_checked_by_click(command: str, tiny_h5: Path) -> None:
    args = (
        ["--model", "x.pth", "--h5", str(tiny_h5)]
        if command == "evaluate"
        else ["--model", "x.pth", "img.png", "--out", "p.csv"]
    )
    result = CliRunner().invoke(main, [command, *args, "--threshold", "7"])
    assert result.exit_code == 2 and "'--threshold': 7.0 is not in the range 0<x<1" in result.output, result.output


def test_a_deleted_experiment_or_run_is_one_line(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5)
    client = mlflow.MlflowClient()
    client.delete_run(run_id)
    fails_cleanly(
        ["train", "--resume", run_id, "--epochs", "3"], f"run {run_id} cannot be continued: run {run_id} is deleted"
    )
    client.restore_run(run_id)
    client.delete_experiment(client.get_run(run_id).info.experiment_id)
    fails_cleanly(["train", "--resume", run_id, "--epochs", "3"], "its experiment 'glint-track' is deleted")
    fails_cleanly(["train", "--h5", str(tiny_h5), *TINY], "experiment 'glint-track' is deleted")


def test_a_last_batch_of_one_joins_the_batch_before(tmp_path: Path) -> None:
    """16² images have a 1×1 bottleneck, where BatchNorm cannot train on a single sample."""
    h5 = write_synthetic(tmp_path / "small.h5", num_samples=19, size=16, num_glints=2)  # 17 train: batches 8, 9
    result = CliRunner().invoke(main, ["train", "--h5", str(h5), *TINY, "--val-split", "0.1", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    fails_cleanly(["train", "--h5", str(h5), *TINY, "--val-split", "0.95"], "training 2 (BatchNorm")


def test_unknown_loss_is_a_usage_error(tiny_h5: Path) -> None:
    result = CliRunner().invoke(main, ["train", "--h5", str(tiny_h5), "--loss", "l2"])
    assert result.exit_code == 2 and "'l2' is not one of" in result.output


def test_bad_data_files(tmp_path: Path) -> None:
    fails_cleanly(["train", "--h5", "missing.h5"], "missing.h5: no such file")
    (tmp_path / "notes.h5").write_text("hello")
    fails_cleanly(["train", "--h5", "notes.h5"], "notes.h5: is not an HDF5 file")
    fails_cleanly(["train"], "no data file given: pass --h5")


def test_unknown_run_id_and_bad_resume_values(tiny_h5: Path) -> None:
    mlflow.MlflowClient().search_experiments()  # a store that exists, without that run
    fails_cleanly(["train", "--resume", "0" * 32], f"no MLflow run with ID {'0' * 32}")
    fails_cleanly(["train", "--resume", "not-a-run"], "neither an existing checkpoint file")


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "--model", "0" * 32, "--h5", "{h5}"],
        ["predict", "--model", f"runs:/{'0' * 32}/checkpoints/best_model.pth", "{h5}", "--out", "p.csv"],
        ["export", "--model", "models:/glints/1", "--out", "g.onnx"],
        ["train", "--resume", "0" * 32],
        ["train", "--init-from", "0" * 32, "--h5", "{h5}"],
    ],
)
def test_reading_a_run_where_there_is_no_store_creates_none(tiny_h5: Path, command: list[str]) -> None:
    """A run ID typed in the wrong folder: said so, and no empty mlflow.db is left there."""
    fails_cleanly([a.format(h5=tiny_h5) for a in command], "no MLflow store here")
    assert list(Path().iterdir()) == []


def test_run_without_checkpoint() -> None:
    with mlflow.start_run() as run:
        pass
    fails_cleanly(["train", "--resume", run.info.run_id], "has no checkpoints/latest_checkpoint.pth")


def test_a_run_whose_artifacts_were_deleted_offers_the_local_copy(tiny_h5: Path) -> None:
    import shutil

    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    shutil.rmtree(Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "checkpoints")
    message = fails_cleanly(["train", "--resume", run_id, "--epochs", "2"], "its artifacts were deleted")
    local = f"runs/{run_id}/latest_checkpoint.pth"
    assert message.endswith(f"--resume {local}") and "stopped before finishing an epoch" not in message
    result = CliRunner().invoke(main, ["train", "--resume", local, "--epochs", "2"])  # the offer works as typed
    assert result.exit_code == 0, result.output


def test_resuming_the_run_mlflow_run_made_continues_the_run_that_trained(tiny_h5: Path) -> None:
    """`mlflow run` makes a run of its own and glint-track trains in another (tagged continued_in on the first):
    a user who copies the first's ID from the UI means the second."""
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    client = mlflow.MlflowClient()
    made = client.create_run(mlflow.get_run(run_id).info.experiment_id)
    client.set_tag(made.info.run_id, "glint_track.continued_in", run_id)
    client.set_terminated(made.info.run_id, "FINISHED")
    client.set_tag(run_id, "glint_track.continued_in", made.info.run_id)  # a loop (a copied store, a hand edit)
    result = CliRunner().invoke(main, ["train", "--resume", made.info.run_id, "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1, 2]


def test_resume_mismatches_and_epochs_not_beyond(tiny_h5: Path, tmp_path: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "2")
    before, path = latest_checkpoint(run_id)
    fails_cleanly(["train", "--resume", run_id, "--epochs", "1"], "already finished epoch 2 and --epochs is 1")
    fails_cleanly(["train", "--resume", run_id, "--epochs", "3", "--base-channels", "8"], "its model has base width 4")
    other = write_synthetic(tmp_path / "six.h5", num_samples=16, size=32, num_glints=6)
    fails_cleanly(["train", "--resume", run_id, "--epochs", "3", "--h5", str(other)], "is not the data run")
    fails_cleanly(
        ["train", "--resume", f"runs:/{run_id}/checkpoints/latest_checkpoint.pth", "--epochs", "3", "--h5", str(other)],
        "predicts 4 glints but",
    )
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
    fails_cleanly(
        ["train", "--h5", str(tiny_h5)],
        "cannot reach the MLflow tracking server",
        env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
    )


def test_debug_shows_the_traceback_and_real_processes_exit_2(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "glint_track"]
    plain = subprocess.run([*cmd, "train", "--h5", "missing.h5"], capture_output=True, text=True, timeout=120)
    assert (
        plain.returncode == 2
        and plain.stderr.strip().splitlines() == [plain.stderr.strip()]
        and "Traceback" not in plain.stderr
    )
    debug = subprocess.run(
        [*cmd, "--debug", "train", "--h5", "missing.h5"], capture_output=True, text=True, timeout=120
    )
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_damaged_latest_checkpoint_names_the_newest_intact_one(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "3", "--save-freq", "1", "--keep-last-n", "3")
    artifacts = Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "checkpoints"
    latest = artifacts / "latest_checkpoint.pth"
    latest.write_bytes(latest.read_bytes()[:1000])  # cut short, as by a crash mid-upload
    message = fails_cleanly(["train", "--resume", run_id, "--epochs", "4"], "checksum mismatch")
    assert f"--resume runs:/{run_id}/checkpoints/epoch_003.pth" in message
    assert message.startswith(f"Error: runs:/{run_id}/checkpoints/latest_checkpoint.pth: checksum mismatch")
    assert tempfile.gettempdir() not in message  # the run and artifact are named, not the download's copy
    result = CliRunner().invoke(
        main, ["train", "--resume", f"runs:/{run_id}/checkpoints/epoch_003.pth", "--epochs", "4"]
    )
    assert result.exit_code == 0, result.output


def test_damaged_best_model_is_named_by_run_and_artifact_for_evaluate(tiny_h5: Path) -> None:
    """evaluate downloads best_model.pth to a temporary folder: the error names the run's artifact, not that copy,
    and the fix is a --model to use, not a resume."""
    _, run_id = train_tiny(tiny_h5, "--epochs", "2", "--save-freq", "1")
    artifacts = Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "checkpoints"
    best = artifacts / "best_model.pth"
    best.write_bytes(best.read_bytes()[:1000])
    message = fails_cleanly(["evaluate", "--model", run_id, "--h5", str(tiny_h5)], "checksum mismatch")
    assert message.startswith(f"Error: runs:/{run_id}/checkpoints/best_model.pth: checksum mismatch")
    assert f"use the newest intact one: --model runs:/{run_id}/checkpoints/" in message
    assert tempfile.gettempdir() not in message and "resume" not in message


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
        env = {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{server.server_port}",
            "MLFLOW_TRACKING_USERNAME": "ana",
            "MLFLOW_TRACKING_PASSWORD": "wrong",
        }
        fails_cleanly(["train", "--h5", str(tiny_h5)], "refused the credentials (HTTP 401)", env=env)
    finally:
        server.shutdown()


def test_a_path_the_file_system_refuses_is_one_line(tiny_h5: Path, tmp_path: Path) -> None:
    """A name too long for the file system (or a path through a file) surfaced as OSError tracebacks from wherever it
    was first used; each is one line naming the path and what to do."""
    long_name = str(tmp_path / ("a" * 300))
    fails_cleanly(["synth", "--out", long_name + ".h5", "--num-samples", "2", "--size", "32"], "File name too long")
    (tmp_path / "a_file").write_text("")
    fails_cleanly(
        ["synth", "--out", str(tmp_path / "a_file" / "x.h5"), "--num-samples", "2", "--size", "32"],
        "could not be written",
    )
    fails_cleanly(["synth", "--out", "x.h5", "--size", "100000"], "100000 is not in the range 16<=x<=8192")
    fails_cleanly(["synth", "--out", "x.h5", "--size", "8192", "--num-samples", "100000"], "GiB of memory")
