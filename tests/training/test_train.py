"""End-to-end training through the CLI into MLflow's embedded store: params, metrics, artifacts, resume."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY, latest_checkpoint, run_cli, train_tiny
from mlflow.tracking import MlflowClient

from glint_track.cli import main
from glint_track.data.glint_file import load_glint_file
from glint_track.training import loop as loop_module


def artifact_names(run_id: str, path: str | None = None) -> set[str]:
    return {Path(f.path).name for f in MlflowClient().list_artifacts(run_id, path)}


def test_two_epoch_run_logs_params_metrics_checkpoints_and_model(tiny_h5: Path) -> None:
    result, run_id = train_tiny(
        tiny_h5, "--epochs", "2", "--save-freq", "1", "--run-name", "tiny", "--image-every", "1"
    )
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert Path("mlflow.db").exists()  # MLflow's embedded default store, in the working directory
    params = run.data.params
    assert params["save_optimizer"] == "True" and params["loss"] == "peak-bce" and params["epochs"] == "2"
    assert params["h5"] == str(tiny_h5) and params["base_channels"] == "4"
    tags = run.data.tags
    (dataset_input,) = run.inputs.dataset_inputs
    assert (
        dataset_input.dataset.name == "tiny" and dataset_input.dataset.digest == tags["glint_track.dataset.digest"][:16]
    )
    assert str(tiny_h5) in dataset_input.dataset.source and "heatmaps" in dataset_input.dataset.schema
    assert tags["glint_track.dataset.samples"] == "32" and len(tags["glint_track.dataset.digest"]) == 64
    for name in ("train_loss", "val_loss", "epoch_time_s", "images_per_s"):
        assert [m.step for m in MlflowClient().get_metric_history(run_id, name)] == [1, 2], name
    assert artifact_names(run_id) >= {"checkpoints", "train_args.json", "training.log", "val_images", "figures"}
    assert artifact_names(run_id, "val_images") == {"epoch_001.png", "epoch_002.png"}
    assert artifact_names(run_id, "figures") == {"heatmaps_best.png", "threshold_curves.png", "threshold_curves.json"}
    curves = mlflow.artifacts.load_dict(f"runs:/{run_id}/figures/threshold_curves.json")
    assert len(curves["threshold"]) == len(curves["f1"]) == 49 and 0.3 in curves["threshold"]  # 0.02…0.98, in use
    files = {"latest_checkpoint.pth", "best_model.pth", "epoch_001.pth", "epoch_002.pth"}
    assert artifact_names(run_id, "checkpoints") == files | {f"{name}.sha256" for name in files}
    args = mlflow.artifacts.load_dict(f"runs:/{run_id}/train_args.json")
    assert args["batch_size"] == 8 and args["save_optimizer"] is True
    log_text = mlflow.artifacts.load_text(f"runs:/{run_id}/training.log")
    assert "epoch 2/2" in log_text
    # plain log lines (no progress bar) when not attached to a terminal, and the closing hints
    assert "epoch 1/2" in result.output and f"--resume {run_id}" in result.output and "mlflow ui" in result.output
    # the end leads with the glint result, and says plainly when the model finds few glints (2 tiny epochs: none)
    best = run.data.metrics
    assert f"Run {run_id} finished 2 epochs: val F1 {best['best_val_f1']:.3f}, no glint found, best" in result.output
    assert "Warning: val F1 0.000. The model finds few glints. Train longer (--epochs)" in result.output
    assert run.data.tags["mlflow.note.content"].startswith("**Glints: val F1 0.000, no glint found**")
    assert "val_err none found" in result.output and "nan" not in result.output  # no glint found: no error to show
    assert "The model finds few glints" in run.data.tags["mlflow.note.content"]
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    images = load_glint_file(tiny_h5).images[:3].numpy()
    glints = model.predict(images)
    assert list(glints.columns) == ["image", "glint", "x", "y", "score", "present"] and len(glints) == 3 * 4
    assert glints["image"].tolist() == [0] * 4 + [1] * 4 + [2] * 4 and glints["glint"].tolist()[:4] == [
        "g1",
        "g2",
        "g3",
        "g4",
    ]
    assert glints["x"].between(-1, 32).all() and glints["score"].between(0, 1).all()
    assert len(model.predict(images, params={"threshold": 0.999})) == 12


@pytest.mark.timeout(240)
def test_the_default_recipe_learns_to_find_glints(tmp_path: Path, train_precision: str) -> None:
    """README's promise, on the CPU in under a minute: no tuning flag, a small data set (128 images of 32²: the
    default gives it 4 passes an epoch, augmented), the defaults' 15 epochs reach val F1 ≥ 0.9 with glints placed to
    within 1.5 px, and the last line says so."""
    from glint_track.data.synth import write_synthetic

    h5 = write_synthetic(tmp_path / "small.h5", num_samples=128, size=32, num_glints=4, seed=5)
    result = run_cli("train", "--h5", str(h5), "--device", "cpu")
    assert result.exit_code == 0, result.output
    line = next(
        line for line in result.output.splitlines() if line.startswith("Run ") and " finished 15 epochs" in line
    )
    f1, error = float(line.split("val F1 ")[1].split(",")[0]), float(line.split("mean glint error ")[1].split(" px")[0])
    assert f1 >= 0.9 and error <= 1.5, line
    assert "finds few glints" not in result.output


def test_checkpoint_keys_and_sizes_with_and_without_optimizer(tiny_h5: Path) -> None:
    _, full_id = train_tiny(tiny_h5, "--epochs", "1")
    _, slim_id = train_tiny(tiny_h5, "--epochs", "1", "--no-save-optimizer")
    full, full_path = latest_checkpoint(full_id)
    slim, slim_path = latest_checkpoint(slim_id)
    old_keys = {"epoch", "model_state_dict", "train_args", "metrics", "timestamp"}
    assert old_keys | {"optimizer_state_dict", "rng_state", "best", "format_version"} <= set(full)
    assert old_keys <= set(slim) and "optimizer_state_dict" not in slim
    assert MlflowClient().get_run(slim_id).data.params["save_optimizer"] == "False"
    # Adam keeps two moments per weight: the optimizer roughly doubles the file over the weights alone
    ratio = full_path.stat().st_size / slim_path.stat().st_size
    assert 2.5 < ratio < 3.5, ratio


def test_resume_by_run_id_continues_the_same_run_exactly(tiny_h5: Path, train_precision: str) -> None:
    # a constant learning rate: the default flat-cosine schedule is a function of --epochs, so a run of 2 epochs
    # extended to 3 would not have trained its first 2 as a run of 3 does (resume under it: the kill tests)
    _, straight = train_tiny(tiny_h5, "--epochs", "3", "--scheduler", "none")
    _, run_id = train_tiny(tiny_h5, "--epochs", "2", "--scheduler", "none")
    first, _ = latest_checkpoint(run_id)
    result = run_cli("train", "--resume", run_id, "--epochs", "3")  # every other setting comes from the checkpoint
    assert result.exit_code == 0, result.output
    assert f"Run {run_id} finished" in result.output
    history = MlflowClient().get_metric_history(run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]
    resumed, _ = latest_checkpoint(run_id)
    assert resumed["epoch"] == 3
    steps_per_epoch = 3  # 24 training images / batch 8
    assert resumed["optimizer_state_dict"]["state"][0]["step"] == 3 * steps_per_epoch
    assert first["optimizer_state_dict"]["state"][0]["step"] == 2 * steps_per_epoch
    # moments, RNG and data order all restored: identical to an uninterrupted 3-epoch run
    reference, _ = latest_checkpoint(straight)
    for key, value in reference["model_state_dict"].items():
        assert torch.equal(value, resumed["model_state_dict"][key]), key
    for index, state in reference["optimizer_state_dict"]["state"].items():
        for moment in ("exp_avg", "exp_avg_sq", "step"):  # both of Adam's moments and its step count
            assert torch.equal(state[moment], resumed["optimizer_state_dict"]["state"][index][moment]), (index, moment)
    assert reference["rng_state"]["torch"].equal(resumed["rng_state"]["torch"])
    assert MlflowClient().get_run(run_id).data.tags["glint_track.override.epochs"] == "3 from epoch 3"


def test_resume_without_optimizer_state_warns_and_uses_lr(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1", "--no-save-optimizer", "--lr", "0.001", "--scheduler", "none")
    result = run_cli("train", "--resume", run_id, "--epochs", "2", "--lr", "0.0005")
    assert result.exit_code == 0, result.output
    assert "has no optimizer state" in result.output and "--lr 0.0005" in result.output
    lrs = {m.step: m.value for m in MlflowClient().get_metric_history(run_id, "lr")}
    assert lrs == {0: 0.001, 1: 0.001, 2: 0.0005}


def test_resume_with_another_optimizer_starts_it_afresh(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    result = run_cli("train", "--resume", run_id, "--epochs", "2", "--optimizer", "sgd", "--lr", "0.01")
    assert result.exit_code == 0, result.output
    assert "--optimizer changed from adam to sgd" in result.output
    checkpoint, _ = latest_checkpoint(run_id)
    assert "momentum_buffer" in checkpoint["optimizer_state_dict"]["state"][0]


def test_keep_last_n_deletes_old_epoch_artifacts(tiny_h5: Path, tmp_path: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "4", "--save-freq", "1", "--keep-last-n", "2", "--output-dir", "out")
    names = artifact_names(run_id, "checkpoints")
    assert {n for n in names if n.startswith("epoch_")} == {
        "epoch_003.pth",
        "epoch_004.pth",
        "epoch_003.pth.sha256",
        "epoch_004.pth.sha256",
    }
    assert sorted(p.name for p in (tmp_path / "out").glob("epoch_*.pth")) == ["epoch_003.pth", "epoch_004.pth"]


def test_research_script_aliases_are_accepted(tiny_h5: Path) -> None:
    _, run_id = train_tiny(
        tiny_h5,
        "--epochs",
        "1",
        "--batch",
        "4",
        "--no_save_optimizer",
        "--save_freq",
        "1",
        "--keep_last_n",
        "1",
        "--output_dir",
        "legacy",
    )
    params = MlflowClient().get_run(run_id).data.params
    assert (params["batch_size"], params["save_optimizer"], params["save_freq"], params["keep_last_n"]) == (
        "4",
        "False",
        "1",
        "1",
    )
    assert MlflowClient().get_run(run_id).data.tags["glint_track.local_copy"] == "legacy"


def test_hybrid_loss_trains_and_logs_each_term(tiny_h5: Path) -> None:
    _, run_id = train_tiny(
        tiny_h5, "--epochs", "3", "--loss", "hybrid", "--lam-dice", "0.5", "--scheduler", "cosine", "--lr", "0.003"
    )
    client = MlflowClient()
    for term in ("loss", "focal", "bce", "dice", "div", "agg"):
        for split in ("train", "val"):
            assert len(client.get_metric_history(run_id, f"{split}_{term}")) == 3, f"{split}_{term}"
    losses = [m.value for m in client.get_metric_history(run_id, "train_loss")]
    assert losses[-1] < losses[0]
    lrs = [m.value for m in client.get_metric_history(run_id, "lr")]
    assert lrs[0] == pytest.approx(0.003) and lrs[-1] < lrs[0]  # cosine schedule applied
    checkpoint, _ = latest_checkpoint(run_id)
    assert checkpoint["optimizer_state_dict"]["param_groups"][0]["lr"] == pytest.approx(
        lrs[-1]
    )  # the lr it trained with


@pytest.mark.parametrize(("exception", "status"), [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")])
def test_interrupted_and_failed_runs_are_marked_and_keep_their_checkpoint(
    tiny_h5: Path, monkeypatch: pytest.MonkeyPatch, exception: type[BaseException], status: str
) -> None:
    real_train_epoch = loop_module.train_epoch

    def train_epoch(*args, **kwargs):
        if kwargs["desc"].startswith("epoch 2"):
            raise exception("stop")
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(loop_module, "train_epoch", train_epoch)
    result = CliRunner().invoke(main, ["train", "--h5", str(tiny_h5), *TINY, "--epochs", "3"])
    assert result.exit_code != 0
    assert isinstance(result.exception, exception) or "Aborted" in result.output  # Click turns Ctrl-C into "Aborted!"
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.info.status == status
    checkpoint, _ = latest_checkpoint(run.info.run_id)
    assert checkpoint["epoch"] == 1
    assert "training.log" in artifact_names(run.info.run_id)


def test_train_help_documents_every_flag_with_examples() -> None:
    result = run_cli("train", "--help")
    assert result.exit_code == 0 and "Examples:" in result.output
    from glint_track.cli.train import train_cmd

    for param in train_cmd.params:
        for opt in param.opts + param.secondary_opts:
            assert opt in result.output, opt
        assert param.help or param.name in {"h5"}, param.name


def test_save_optimizer_help_names_the_parts_it_keeps() -> None:
    """--no-save-optimizer leaves out OPTIMIZER_PARTS (optimizer, fp16 scaler); there is no scheduler state (the
    schedule is a function of the epoch), so the help must not promise one."""
    from glint_track.checkpoint.format import OPTIMIZER_PARTS
    from glint_track.cli.train import train_cmd

    (option,) = [p for p in train_cmd.params if p.name == "save_optimizer"]
    assert OPTIMIZER_PARTS == ("optimizer", "scaler")
    assert "optimizer's state" in option.help and "loss scale" in option.help and "scheduler" not in option.help


def test_python_dash_m_entry_point() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "glint_track", "--version"], capture_output=True, text=True, check=True, timeout=120
    )
    assert "glint-track" in out.stdout
