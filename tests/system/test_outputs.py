"""No output lands on an input, and nothing a file from someone else says chooses where this machine writes: outputs
replace only what the same command wrote, folders of outputs never hold the inputs, a run's local folder is its own;
a loss that is not a number stops before its epoch is kept."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import h5py
import mlflow
import torch
from conftest import TINY, fails_cleanly, latest_checkpoint, run_cli, train_tiny
from mlflow.tracking import MlflowClient
from PIL import Image

from glint_track.data.synth import write_synthetic


def test_outputs_replace_only_what_the_command_wrote(tiny_h5: Path, tmp_path: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    frames = tmp_path / "frames"
    write_synthetic(tmp_path / "f.h5", num_samples=2, size=32, num_glints=4, labelme_dir=frames)
    annotation = frames / "synth_000000.json"
    before = annotation.read_bytes()
    fails_cleanly(  # someone's annotations as predict's --out
        ["predict", "--model", run_id, str(frames), "--out", str(annotation)],
        f"--out {annotation}: the file exists and is not predictions glint-track wrote",
    )
    fails_cleanly(  # the frames' own folder as --overlay-dir: an overlay per frame, named as the frame
        ["predict", "--model", run_id, str(frames), "--out", "p.csv", "--overlay-dir", str(frames)],
        "--overlay-dir",
    )
    fails_cleanly(  # pack's output onto one of its inputs
        ["pack", "--in-dir", str(frames), "--out", str(annotation), "--num-glints", "4"],
        f"--out {annotation}: the file exists and is not a data file glint-track wrote",
    )
    assert annotation.read_bytes() == before and not Path("p.csv").exists()
    fails_cleanly(["synth", "--out", str(annotation)], "is not a data file glint-track wrote")
    assert annotation.read_bytes() == before

    for _ in range(2):  # what predict, pack and synth wrote, they may write again
        assert run_cli("predict", "--model", run_id, str(frames), "--out", "p.csv").exit_code == 0
        assert run_cli("predict", "--model", run_id, str(frames), "--out", "p.json").exit_code == 0
        assert run_cli("pack", "--in-dir", str(frames), "--out", "packed.h5", "--num-glints", "4").exit_code == 0
        assert run_cli("synth", "--out", "s.h5", "--num-samples", "2", "--size", "32").exit_code == 0
    assert len(json.loads(Path("p.json").read_text())) == 2 * 4
    with h5py.File("other.h5", "w") as f:  # an HDF5 file glint-track did not write: a data set of someone's
        f["x"] = [1]
    fails_cleanly(["synth", "--out", "other.h5"], "--out other.h5: the file exists and is not a data file")
    Image.new("L", (32, 32)).save(tmp_path / "frame.png")
    fails_cleanly(["predict", "--model", run_id, str(tmp_path / "frame.png"), "--out", str(tmp_path)], "--out")


def test_a_run_folder_is_its_own(tiny_h5: Path) -> None:
    """--output-dir naming another run's folder would replace its checkpoints and mix its log: refused; the run's
    own folder is fine for its resume."""
    _, first = train_tiny(tiny_h5, "--epochs", "1", "--output-dir", "mine")
    saved = Path("mine/latest_checkpoint.pth").read_bytes()
    fails_cleanly(["train", "--h5", str(tiny_h5), *TINY, "--output-dir", "mine"], f"holds run {first}'s checkpoints")
    assert Path("mine/latest_checkpoint.pth").read_bytes() == saved
    assert run_cli("train", "--resume", first, "--epochs", "2").exit_code == 0  # its own folder
    Path("research").mkdir()
    Path("research/best_model.pth").write_bytes(b"the research script's")
    fails_cleanly(["train", "--h5", str(tiny_h5), *TINY, "--output-dir", "research"], "holds another training's")


def test_a_loss_that_is_not_a_number_stops_before_its_epoch_is_kept(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1", "--scheduler", "none")
    line = fails_cleanly(
        ["train", "--resume", run_id, "--epochs", "3", "--lr", "1e308"], "loss became nan in epoch 2: --lr 1e+308"
    )
    assert f"resume from it with --resume {run_id} --lr 0.001" in line
    assert MlflowClient().get_run(run_id).info.status == "FAILED"
    checkpoint, _ = latest_checkpoint(run_id)
    assert checkpoint["epoch"] == 1 and all(torch.isfinite(t).all() for t in checkpoint["model_state_dict"].values())
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "train_loss")] == [1]
    resumed = run_cli("train", "--resume", run_id, "--epochs", "2", "--lr", "0.001")  # what the message offers
    assert resumed.exit_code == 0, resumed.output


def test_a_checkpoint_file_chooses_no_folder_and_no_model_name(tiny_h5: Path, tmp_path: Path) -> None:
    """Where the decoded-data cache goes and which registered model a run adds to come from the command line: a
    checkpoint from someone else carries them in its train_args, and they are ignored."""
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    checkpoint, _ = latest_checkpoint(run_id)
    elsewhere = tmp_path / "elsewhere"
    checkpoint["train_args"] |= {"cache_dir": str(elsewhere), "register_model": "theirs"}
    torch.save(checkpoint, tmp_path / "sent.pth")
    result = run_cli("train", "--resume", str(tmp_path / "sent.pth"), "--h5", str(tiny_h5), "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert not elsewhere.exists() and not MlflowClient().search_registered_models()
    new_run = next(line.split()[1] for line in result.output.splitlines() if line.startswith("Run "))
    args = mlflow.artifacts.load_dict(f"runs:/{new_run}/train_args.json")
    assert args["cache_dir"] is None and args["register_model"] is None


def test_outputs_get_the_permissions_the_umask_gives_not_owner_only(tmp_path: Path) -> None:
    """Files are written under a temporary name and renamed into place; mkstemp makes them 0600, which would hide
    a lab's packed data, frames to label and checkpoints from the colleagues the umask lets read them."""
    umask = os.umask(0o022)
    os.umask(umask)
    assert run_cli("synth", "--out", "d.h5", "--num-samples", "4", "--size", "32").exit_code == 0
    assert run_cli("select", "d.h5", "--out", "pick", "-k", "2").exit_code == 0
    for path in [Path("d.h5"), *Path("pick").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
