"""The research script's checkpoints (SEED.md) and glint-track's format-1 checkpoints load for resume,
evaluate and predict; Adam state written by the research script resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import latest_checkpoint, run_cli
from mlflow.tracking import MlflowClient
from PIL import Image
from torch import nn

from glint_track.checkpoint.format import load_checkpoint
from glint_track.data.glint_file import load_glint_file
from glint_track.model import GlintUNet, count_parameters


class _ResearchBlock(nn.Module):
    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1, bias=False),
            nn.BatchNorm2d(o),
            nn.ReLU(inplace=True),
            nn.Conv2d(o, o, 3, padding=1, bias=False),
            nn.BatchNorm2d(o),
            nn.ReLU(inplace=True),
        )


class ResearchUNet(nn.Module):
    """The research script's model as SEED.md describes it: module names, registration order and shapes."""

    def __init__(self, c: int = 8, b: int = 16) -> None:
        super().__init__()
        self.enc1, self.enc2, self.enc3, self.enc4 = (
            _ResearchBlock(1, b),
            _ResearchBlock(b, 2 * b),
            _ResearchBlock(2 * b, 4 * b),
            _ResearchBlock(4 * b, 8 * b),
        )
        self.bottleneck = _ResearchBlock(8 * b, 16 * b)
        self.up3 = nn.ConvTranspose2d(16 * b, 8 * b, 2, stride=2)
        self.dec3 = _ResearchBlock(16 * b, 8 * b)
        self.up2 = nn.ConvTranspose2d(8 * b, 4 * b, 2, stride=2)
        self.dec2 = _ResearchBlock(8 * b, 4 * b)
        self.out_conv = nn.Conv2d(4 * b, c, 1)


def seed_key_list() -> list[str]:
    """The state-dict keys SEED.md lists, in its order."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    block = ["seq.0.weight", *(f"seq.1.{k}" for k in bn), "seq.3.weight", *(f"seq.4.{k}" for k in bn)]
    keys = [f"{name}.{k}" for name in ("enc1", "enc2", "enc3", "enc4", "bottleneck") for k in block]
    keys += [
        "up3.weight",
        "up3.bias",
        *(f"dec3.{k}" for k in block),
        "up2.weight",
        "up2.bias",
        *(f"dec2.{k}" for k in block),
    ]
    return keys + ["out_conv.weight", "out_conv.bias"]


def test_our_model_has_the_research_models_keys_order_and_shapes() -> None:
    ours, theirs = GlintUNet(8, 16).state_dict(), ResearchUNet(8, 16).state_dict()
    assert list(theirs) == seed_key_list() == list(ours)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert count_parameters(ResearchUNet()) == count_parameters(GlintUNet()) == 1_897_752
    assert theirs["up3.weight"].shape == (256, 128, 2, 2) and theirs["out_conv.weight"].shape == (8, 64, 1, 1)


def research_checkpoint(h5: Path, steps: int = 2) -> tuple[dict, ResearchUNet]:
    """What train_glint_unet.py saved: its model trained a little with Adam, under DataParallel."""
    torch.manual_seed(0)
    model = ResearchUNet(c=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        model.out_conv(model.dec2.seq(torch.rand(2, 128, 8, 8))).mean().backward()  # touches the head and dec2 only
        optimizer.step()
    checkpoint = {
        "epoch": 1,
        "model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
        "optimizer_state_dict": optimizer.state_dict(),
        "train_args": {
            "h5": str(h5),
            "output_dir": "old_runs/a",
            "batch": 8,
            "lr": 1e-3,
            "epochs": 1,
            "val_split": 0.25,
            "loss": "focal",
            "agg_wF": 1.0,
            "no_save_optimizer": False,
            "gpu": "0,1",
            "preload": True,
        },
        "metrics": {"train": {"loss": 0.1}, "val": {"loss": 0.2}},
        "timestamp": "2025-01-01 12:00:00",
    }
    return checkpoint, model


@pytest.mark.parametrize("name", ["best_model.pth", "latest_checkpoint.pth", "checkpoint_epoch_001.pth"])
def test_research_checkpoint_resumes_with_its_adam_state_into_a_new_run(
    tiny_h5: Path, tmp_path: Path, name: str
) -> None:
    checkpoint, model = research_checkpoint(tiny_h5)
    source = tmp_path / "old_runs" / "a" / name
    source.parent.mkdir(parents=True)
    torch.save(checkpoint, source)
    before = source.read_bytes()
    result = run_cli("train", "--resume", str(source), "--epochs", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    run_id = next(line.split()[1] for line in result.output.splitlines() if line.startswith("Run "))
    run = MlflowClient().get_run(run_id)
    assert run.data.params["batch_size"] == "8" and run.data.params["h5"] == str(tiny_h5)
    assert run.data.tags["glint_track.resumed_from"] == str(source)
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "val_loss")] == [2]
    resumed, _ = latest_checkpoint(run_id)
    # Adam went on from the research script's state: its step counter and moments, not a fresh optimizer
    head = len(list(model.parameters())) - 2  # out_conv.weight, which the research steps moved
    assert resumed["optimizer_state_dict"]["state"][head]["step"] == 2 + 3  # 24 training images / batch 8
    assert "no optimizer state" not in result.output
    # a new run in its own folder: the research run's folder is untouched
    assert Path(run.data.tags["glint_track.local_copy"]) == Path("runs") / run_id
    assert source.read_bytes() == before and sorted(p.name for p in source.parent.iterdir()) == [name]


@pytest.mark.parametrize("prefixed", [True, False])
def test_research_files_load_for_evaluate_and_predict(tiny_h5: Path, tmp_path: Path, prefixed: bool) -> None:
    checkpoint, model = research_checkpoint(tiny_h5)
    weights = checkpoint["model_state_dict"] if prefixed else model.state_dict()
    torch.save(weights, tmp_path / "best_model_weights.pt")  # the bare state dict
    torch.save(checkpoint | {"model_state_dict": weights}, tmp_path / "best_model.pth")
    for file in ("best_model_weights.pt", "best_model.pth"):
        loaded = GlintUNet.from_checkpoint(load_checkpoint(tmp_path / file), file)
        assert torch.equal(loaded.out_conv.weight, model.out_conv.weight)
        result = run_cli("evaluate", "--model", str(tmp_path / file), "--h5", str(tiny_h5), "--json", "--device", "cpu")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["samples"] == 32
    Image.fromarray(load_glint_file(tiny_h5).images[0].numpy()).save(tmp_path / "eye.png")
    result = run_cli(
        "predict",
        "--model",
        str(tmp_path / "best_model.pth"),
        str(tmp_path / "eye.png"),
        "--out",
        str(tmp_path / "p.json"),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "p.json").read_text())) == 4


def test_format_1_checkpoints_of_glint_track_load(tmp_path: Path) -> None:
    """glint-track 0.1 named the layers enc1.0, up1.up, up1.conv, head; such files still load."""
    model = GlintUNet(num_glints=3, base_channels=4)
    old_names = {
        "up3.": "up1.up.",
        "dec3.seq.": "up1.conv.",
        "up2.": "up2.up.",
        "dec2.seq.": "up2.conv.",
        "out_conv.": "head.",
    }
    old = {}
    for key, value in model.state_dict().items():
        for new, was in old_names.items():
            if key.startswith(new):
                key = was + key[len(new) :]
                break
        old[key.replace(".seq.", ".")] = value
    assert "enc1.0.weight" in old and "up1.conv.0.weight" in old and "head.bias" in old
    torch.save({"format_version": 1, "epoch": 3, "model_state_dict": old, "train_args": {}}, tmp_path / "v1.pth")
    loaded = GlintUNet.from_checkpoint(load_checkpoint(tmp_path / "v1.pth"), "v1.pth")
    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, 32, 32), np.float32))
    assert torch.equal(loaded(x), model.eval()(x))
