"""`mlflow run .` as users type it: the MLproject trains, honours no_save_optimizer, and resumes by run ID."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import latest_checkpoint, mlflow_run
from mlflow.tracking import MlflowClient


def test_mlflow_run_without_optimizer_state_then_resume_continues_the_same_run(tiny_h5: Path) -> None:
    first = mlflow_run(
        f"h5={tiny_h5}",
        "batch_size=8",
        "val_split=0.25",
        "device=cpu",
        "loss=dice",
        "no_save_optimizer=true",
        "epochs=1",
    )
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("glint-track").experiment_id])  # not MLflow's Default
    (made,) = client.search_runs(["0"])  # what `mlflow run` made there: ended at once, pointing to the run that trains
    assert made.info.status == "FINISHED" and made.data.tags["glint_track.continued_in"] == run.info.run_id
    assert run.data.tags["mlflow.source.type"] == "PROJECT" and run.data.tags["mlflow.project.entryPoint"] == "main"
    assert (
        run.info.status == "FINISHED"
        and run.data.params["save_optimizer"] == "False"
        and run.data.params["loss"] == "dice"
    )
    checkpoint, _ = latest_checkpoint(run.info.run_id)
    assert "optimizer_state_dict" not in checkpoint and checkpoint["epoch"] == 1

    # only the typed parameters change: the loss stays dice, the folder, split and batch size stay the run's
    second = mlflow_run("epochs=3", "no_save_optimizer=false", f"resume_run_id={run.info.run_id}")
    assert second.returncode == 0, second.stderr[-3000:]
    (resumed,) = client.search_runs([run.info.experiment_id])  # the same run, no new one
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3]
    checkpoint, _ = latest_checkpoint(run.info.run_id)
    assert (
        checkpoint["epoch"] == 3 and "optimizer_state_dict" in checkpoint and checkpoint["train_args"]["loss"] == "dice"
    )
    assert resumed.data.tags["glint_track.override.save_optimizer"] == "True from epoch 2"
    assert [r.data.tags["glint_track.continued_in"] for r in client.search_runs(["0"])] == [run.info.run_id] * 2


def test_logged_model_serves_glints_through_the_mlflow_cli_and_registry(tiny_h5: Path, tmp_path: Path) -> None:
    import json

    from conftest import train_tiny

    from glint_track.data.glint_file import load_glint_file

    _, run_id = train_tiny(tiny_h5, "--epochs", "1", "--register-model", "glints")
    versions = MlflowClient().search_model_versions("name='glints'")
    assert [v.run_id for v in versions] == [run_id]
    images = load_glint_file(tiny_h5).images[:2].numpy()
    (tmp_path / "in.json").write_text(json.dumps({"inputs": images.tolist()}))
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow.get_tracking_uri())
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "predict",
            "-m",
            f"runs:/{run_id}/model",
            "--env-manager",
            "local",
            "-i",
            str(tmp_path / "in.json"),
            "-t",
            "json",
            "-o",
            str(tmp_path / "out.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "out.json").read_text())["predictions"]
    assert len(rows) == 2 * 4 and {"image", "glint", "x", "y", "score", "present"} <= set(rows[0])
    # the registered version evaluates like the run it came from
    from click.testing import CliRunner

    from glint_track.cli import main

    by_run = CliRunner().invoke(
        main, ["evaluate", "--model", run_id, "--h5", str(tiny_h5), "--json", "--device", "cpu"]
    )
    by_name = CliRunner().invoke(
        main, ["evaluate", "--model", "models:/glints/1", "--h5", str(tiny_h5), "--json", "--device", "cpu"]
    )
    assert by_name.exit_code == 0, by_name.output
    assert json.loads(by_name.stdout)["overall"] == json.loads(by_run.stdout)["overall"]


def test_a_parameter_the_project_does_not_declare_is_refused_not_ignored(tiny_h5: Path) -> None:
    # `mlflow run` passes an undeclared -P on as `--resume <id>`; ignored, it would train a new run instead
    typed = mlflow_run(f"h5={tiny_h5}", "epochs=1", "resume=0123456789abcdef0123456789abcdef")
    assert typed.returncode != 0
    errors = [line for line in typed.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: -P resume is not a parameter of this project's train entry point; use one of: h5, epochs, "
        "batch_size, lr, loss, scheduler, augment, passes_per_epoch, val_split, split_by, seed, device, save_freq, "
        "keep_last_n, no_save_optimizer, resume_run_id, init_from, output_dir"
    ]
    assert "Traceback" not in typed.stderr
    client = MlflowClient()
    assert client.get_experiment_by_name("glint-track") is None  # nothing trained
    (made,) = client.search_runs(["0"])  # what `mlflow run` made, marked failed by MLflow
    assert made.info.status == "FAILED"


@pytest.mark.parametrize(
    ("typed", "error"),
    [
        ("epochs=abc", "Error: Invalid value for -P epochs: 'abc' is not a valid integer."),
        ("resume_run_id=abc", "Error: -P resume_run_id 'abc' is neither an existing checkpoint file"),
    ],
)
def test_a_bad_parameter_value_is_named_as_the_user_typed_it(tiny_h5: Path, typed: str, error: str) -> None:
    """Under `mlflow run` the user typed `-P epochs=abc`: the error names that, not the option it became."""
    result = mlflow_run(f"h5={tiny_h5}", typed)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode != 0 and len(errors) == 1 and errors[0].startswith(error), result.stderr[-2000:]
    assert "--epochs" not in result.stderr and "--resume" not in result.stderr and "Usage:" not in result.stderr
