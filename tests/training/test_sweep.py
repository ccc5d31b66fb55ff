"""The sweep's grid, child commands, per-child best values and the parent's summary (without training)."""

from __future__ import annotations

import csv
import io
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from glint_track.errors import GlintTrackError
from glint_track.training.sweep import Child, SweepSpec, _best_values, _child_command, _summarise, parse_axes, table


def test_axes_from_loss_lr_and_params_make_the_grid_in_order() -> None:
    axes = parse_axes("focal,bce", "1e-3, 3e-4", ("--base-channels=16,32",))
    assert axes == {"loss": ["focal", "bce"], "lr": ["1e-3", "3e-4"], "base_channels": ["16", "32"]}
    points = SweepSpec("d.h5", axes, []).points()
    assert len(points) == 8 and points[0] == {"loss": "focal", "lr": "1e-3", "base_channels": "16"}
    assert points[-1] == {"loss": "bce", "lr": "3e-4", "base_channels": "32"}


@pytest.mark.parametrize(
    ("loss", "params", "message"),
    [
        (None, (), "nothing to sweep"),
        (None, ("base_channels",), "give a train option and its values"),
        (None, ("=16,32",), "give a train option and its values"),
        (",", (), "give a train option and its values"),
    ],
)
def test_an_empty_axis_is_one_line(loss: str | None, params: tuple[str, ...], message: str) -> None:
    with pytest.raises(GlintTrackError, match=message):
        parse_axes(loss, None, params)


def test_a_child_trains_its_point_with_the_shared_flags_and_resumes_its_own_checkpoint(tmp_path) -> None:
    spec = SweepSpec("d.h5", {"lr": ["1e-3"]}, ["--epochs", "30"], monitor="val_f1", monitor_mode="max")
    with mlflow.start_run() as run:
        pass
    child = Child({"lr": "1e-3", "base_channels": "32"}, run.info.run_id)
    command = _child_command(spec, child, gpu=1)
    assert command[:3] == [sys.executable, "-m", "glint_track"] and "--resume" not in command
    assert command[3:] == [
        "train",
        "--h5",
        "d.h5",
        "--lr",
        "1e-3",
        "--base-channels",
        "32",
        "--epochs",
        "30",
        "--monitor",
        "val_f1",
        "--monitor-mode",
        "max",
        "--device",
        "cuda:1",
    ]
    (tmp_path / "latest_checkpoint.pth").write_bytes(b"x")
    MlflowClient().log_artifact(run.info.run_id, str(tmp_path / "latest_checkpoint.pth"), "checkpoints")
    assert _child_command(spec, child, gpu=None)[-2:] == ["--resume", run.info.run_id]


def test_best_values_take_the_lowest_loss_and_the_highest_f1_and_the_parent_names_the_best_child() -> None:
    client = MlflowClient()
    children = []
    for lr, losses, f1s in (("1e-3", [0.5, 0.2, 0.3], [0.5, 0.9, 0.8]), ("3e-4", [0.6, 0.4, 0.35], [0.4, 0.6, 0.7])):
        with mlflow.start_run() as run:
            for step, (loss, f1) in enumerate(zip(losses, f1s), 1):
                mlflow.log_metrics({"val_loss": loss, "val_f1": f1, "lr": 0.1}, step=step)
        children.append(Child({"lr": lr}, run.info.run_id, "FINISHED", best=_best_values(client, run.info.run_id)))
    assert children[0].best == {"val_loss": 0.2, "val_f1": 0.9} and children[1].best == {
        "val_loss": 0.35,
        "val_f1": 0.7,
    }
    children.append(Child({"lr": "1e-2"}, children[0].run_id, "FAILED"))
    with mlflow.start_run() as parent:
        pass
    spec = SweepSpec("d.h5", {"lr": ["1e-3", "3e-4", "1e-2"]}, [], monitor="val_loss", monitor_mode="min")
    _summarise(client, parent.info.run_id, spec, children)
    run = mlflow.get_run(parent.info.run_id)
    assert (
        run.data.tags["glint_track.sweep.best_point"] == "lr=1e-3" and run.data.tags["glint_track.sweep.failed"] == "1"
    )
    assert run.data.metrics["best_val_loss"] == 0.2
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/summary.csv")
    rows = list(csv.DictReader(io.StringIO(summary)))
    assert [(r["lr"], r["status"], r["val_f1"]) for r in rows] == [
        ("1e-3", "FINISHED", "0.9"),
        ("3e-4", "FINISHED", "0.7"),
        ("1e-2", "FAILED", ""),
    ]
    lines = table(children, "val_loss").splitlines()
    assert len(lines) == 4 and lines[1].split()[-1] == "0.2" and lines[3].split()[-1] == "FAILED"
    picture = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="figures/children.png")
    assert Image.open(picture).width > 800  # one panel per compared metric, one line per child
