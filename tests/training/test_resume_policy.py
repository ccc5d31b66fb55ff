"""Resume: what the user typed wins and is recorded, what cannot apply is refused in one line, a finished
run resumed to its own epochs is a no-op, and a checkpoint file starts a new run of its own."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from conftest import fails_cleanly, latest_checkpoint, run_cli, train_tiny
from mlflow.tracking import MlflowClient

from glint_track.cli import main


def history(run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, key)}


def test_a_typed_lr_applies_to_the_restored_optimizer_and_the_run_says_so(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "2", "--lr", "0.003", "--scheduler", "none")
    result = run_cli("train", "--resume", run_id, "--epochs", "3", "--lr", "0.0001")
    assert result.exit_code == 0, result.output
    assert "lr 0.003 → 0.0001" in result.output
    # constant, lr was one value at step 0; now it changed, every epoch has its own
    assert history(run_id, "lr") == {0: 0.003, 1: 0.003, 2: 0.003, 3: pytest.approx(0.0001)}
    checkpoint, _ = latest_checkpoint(run_id)
    assert checkpoint["optimizer_state_dict"]["state"][0]["step"] == 3 * 3  # Adam's moments went on (3 steps an epoch)
    assert checkpoint["optimizer_state_dict"]["param_groups"][0]["lr"] == pytest.approx(0.0001)
    assert checkpoint["train_args"]["lr"] == 0.0001
    run = MlflowClient().get_run(run_id)
    assert run.data.params["lr"] == "0.003"  # params cannot change: the tag beside it says what applies since when
    assert run.data.tags["glint_track.override.lr"] == "0.0001 from epoch 3"
    assert run.data.tags["glint_track.override.epochs"] == "3 from epoch 3"
    assert "glint_track.override.resume" not in run.data.tags  # which run was resumed is not a changed setting
    assert "Resumed at epoch 3 with epochs 2 → 3, lr 0.003 → 0.0001." in run.data.tags["mlflow.note.content"]
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/train_args.json")["lr"] == 0.0001


def test_a_cosine_schedule_stretches_to_the_typed_epochs(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "2", "--lr", "0.004", "--scheduler", "cosine")
    assert history(run_id, "lr") == {1: 0.004, 2: pytest.approx(0.002)}  # half way down over 2 epochs
    result = run_cli("train", "--resume", run_id, "--epochs", "6")
    assert result.exit_code == 0, result.output
    assert history(run_id, "lr")[3] == pytest.approx(0.004 * 0.5 * (1 + math.cos(math.pi * 2 / 6)))  # 0.003: over 6 now


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        (["--base-channels", "8"], "its model has base width 4, so --base-channels 8 cannot continue it"),
        (["--seed", "7"], "--seed 7 would change the validation images of run"),
        (["--val-split", "0.5"], "--val-split 0.5 would change the validation images of run"),
        (["--experiment", "other"], "belongs to experiment 'glint-track' and a run cannot move"),
    ],
)
def test_what_cannot_apply_is_refused_in_one_line_before_anything_is_written(
    tiny_h5: Path, typed: list[str], message: str
) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    before = MlflowClient().get_run(run_id)
    result = CliRunner().invoke(main, ["train", "--resume", run_id, "--epochs", "2", *typed])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error:")]) == 1
    after = MlflowClient().get_run(run_id)
    assert (after.data.params, after.data.tags, after.info.status) == (
        before.data.params,
        before.data.tags,
        before.info.status,
    )


def test_other_data_cannot_continue_a_run_but_the_same_file_elsewhere_can(tiny_h5: Path, tmp_path: Path) -> None:
    from glint_track.data.synth import write_synthetic

    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    other = write_synthetic(tmp_path / "other.h5", num_samples=32, size=32, num_glints=4, seed=9)
    result = CliRunner().invoke(main, ["train", "--resume", run_id, "--epochs", "2", "--h5", str(other)])
    assert result.exit_code == 2 and "is not the data run" in result.output, result.output
    moved = tmp_path / "moved.h5"
    moved.write_bytes(tiny_h5.read_bytes())
    result = CliRunner().invoke(main, ["train", "--resume", run_id, "--epochs", "2", "--h5", str(moved)])
    assert result.exit_code == 0, result.output


def test_resuming_a_finished_run_to_its_own_epochs_is_a_no_op(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "2")
    before = MlflowClient().get_run(run_id)
    for _ in range(2):  # a requeued job runs the same command again
        result = CliRunner().invoke(main, ["train", "--resume", run_id, "--epochs", "2"])
        assert result.exit_code == 0, result.output
        assert (
            result.output.strip() == f"run {run_id} has already finished its 2 epochs: nothing to do "
            "(pass --epochs larger than 2 to train it further)"
        )
    after = MlflowClient().get_run(run_id)
    assert (after.data.params, after.data.tags) == (before.data.params, before.data.tags)
    assert repr(sorted(after.data.metrics.items())) == repr(sorted(before.data.metrics.items()))  # NaN-safe
    assert after.info.status == "FINISHED" and after.info.end_time == before.info.end_time


def test_resuming_a_local_file_starts_a_new_run_and_leaves_its_folder_alone(tiny_h5: Path, tmp_path: Path) -> None:
    _, source_run = train_tiny(tiny_h5, "--epochs", "2", "--save-freq", "1", "--keep-last-n", "1", "--output-dir", "B")
    folder = tmp_path / "B"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert "epoch_002.pth" in before
    result = run_cli("train", "--resume", str(folder / "epoch_002.pth"), "--epochs", "4")
    assert result.exit_code == 0, result.output
    new_run = next(line.split()[1] for line in result.output.splitlines() if line.startswith("Run "))
    assert new_run != source_run
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before  # nothing there changed
    assert sorted(p.name for p in (tmp_path / "runs" / new_run).glob("epoch_*.pth")) == ["epoch_004.pth"]
    run = MlflowClient().get_run(new_run)
    assert run.data.tags["glint_track.resumed_from"] == str(folder / "epoch_002.pth")
    assert sorted(history(new_run, "val_loss")) == [3, 4] and sorted(history(source_run, "val_loss")) == [1, 2]


def test_a_runs_uri_starts_a_new_run_from_that_checkpoint(tiny_h5: Path) -> None:
    _, source_run = train_tiny(
        tiny_h5, "--epochs", "3", "--save-freq", "1", "--keep-last-n", "3", "--scheduler", "none"
    )
    result = run_cli(
        "train", "--resume", f"runs:/{source_run}/checkpoints/epoch_001.pth", "--epochs", "2", "--lr", "0.0005"
    )
    assert result.exit_code == 0, result.output
    new_run = next(line.split()[1] for line in result.output.splitlines() if line.startswith("Run "))
    assert new_run != source_run and sorted(history(source_run, "val_loss")) == [1, 2, 3]
    assert history(new_run, "lr") == {0: 0.0005} and MlflowClient().get_run(new_run).data.params["lr"] == "0.0005"


def test_a_typed_loss_applies_and_its_best_checkpoint_starts_afresh(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1", "--loss", "bce")  # val_loss ~0.1
    result = run_cli(
        "train", "--resume", run_id, "--epochs", "2", "--loss", "dice"
    )  # ~0.9: worse on paper, not in fact
    assert result.exit_code == 0, result.output
    assert "val_loss values before and after are not comparable" in result.output
    best, _ = latest_checkpoint(run_id, "best_model.pth")
    assert best["epoch"] == 2 and best["train_args"]["loss"] == "dice"  # the first epoch of the new loss is its best


def test_a_resume_from_another_folder_finds_the_data_the_run_recorded(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trained with a relative --h5 in one folder, resumed by run ID in another (as `mlflow run` does, in the
    project's folder): the run's recorded absolute path finds the file; moved or changed, one line says which file
    the run learnt from and how to pass it."""
    project = tmp_path / "lab"
    (project / "proj").mkdir(parents=True)
    data = project / "proj" / "demo.h5"
    data.write_bytes(tiny_h5.read_bytes())
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")  # the store, from any folder
    _, run_id = train_tiny(Path("proj/demo.h5"), "--epochs", "1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    resumed = run_cli("train", "--resume", run_id, "--epochs", "2")
    assert resumed.exit_code == 0, resumed.output
    digest = MlflowClient().get_run(run_id).data.tags["glint_track.dataset.digest"]

    data.rename(project / "moved.h5")
    line = fails_cleanly(["train", "--resume", run_id, "--epochs", "3"], f"learnt from {data.resolve()}")
    assert f"content digest {digest[:12]}" in line and "-P h5=FILE" in line and "synth" not in line
    resumed = run_cli("train", "--resume", run_id, "--epochs", "3", "--h5", str(project / "moved.h5"))
    assert resumed.exit_code == 0, resumed.output

    moved = (project / "moved.h5").resolve()  # where the run now records its data: rewritten there
    moved.write_bytes(tiny_h5.read_bytes()[:-64] + bytes(64))
    line = fails_cleanly(["train", "--resume", run_id, "--epochs", "4"], f"{moved} has changed since run")
    assert f"≠ {digest[:12]}" in line and "-P h5=FILE" in line


def test_a_plain_resume_records_no_change_of_data(tiny_h5: Path) -> None:
    """A continued run finds its file where it recorded it (an absolute path) while its param holds the path as
    typed: that is not a change of setting, and the run must not say the data changed."""
    shutil.copy(tiny_h5, "data.h5")
    _, run_id = train_tiny(Path("data.h5"), "--epochs", "1")
    assert run_cli("train", "--resume", run_id, "--epochs", "2").exit_code == 0
    tags = MlflowClient().get_run(run_id).data.tags
    assert [t for t in tags if t.startswith("glint_track.override.")] == ["glint_track.override.epochs"], tags


def test_a_fresh_optimizer_warms_up_so_a_fine_tuning_starts_no_worse(tmp_path: Path) -> None:
    """After --init-from (a fresh Adam on trained weights) val F1 fell from 1.0 to 0.3 in the first epoch: Adam's
    first steps move every weight by about the learning rate. The first epoch's learning rate now rises from ~0."""
    from glint_track.data.synth import write_synthetic

    h5 = write_synthetic(tmp_path / "d.h5", num_samples=64, size=64, num_glints=4, seed=1)
    common = ["--h5", str(h5), "--base-channels", "8", "--batch-size", "8", "--val-split", "0.25", "--device", "cpu"]
    common += ["--scheduler", "none", "--no-system-metrics"]
    parent = run_cli("train", *common, "--epochs", "20", "--passes-per-epoch", "1", "--no-augment")
    assert parent.exit_code == 0, parent.output
    parent_id = next(line.split()[1] for line in parent.output.splitlines() if line.startswith("Run "))
    before = MlflowClient().get_run(parent_id).data.metrics
    assert before["best_val_f1"] >= 0.9, before  # a model that finds glints: "no worse" cannot pass by accident
    tuned = run_cli("train", *common, "--init-from", parent_id, "--epochs", "1", "--lr", "0.002")  # 6 passes, augmented
    assert tuned.exit_code == 0 and "warmed up over epoch 1" in tuned.output, tuned.output
    tuned_id = next(line.split()[1] for line in tuned.output.splitlines() if line.startswith("Run "))
    after = MlflowClient().get_run(tuned_id).data.metrics
    assert after["val_f1"] >= before["best_val_f1"] - 0.02, (before, after)
    assert after["val_loc_err_mean"] <= before["best_val_loc_err_mean"] + 0.1, (before, after)
