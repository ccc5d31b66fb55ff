"""Checkpoints written by the child process (save_process.py): same contents as in-process, errors
carried back, a dead child replaced by in-process writes, no orphan after a SIGKILL, exact resumes."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import latest_checkpoint, run_cli, train_tiny
from mlflow.tracking import MlflowClient

from glint_track.checkpoint.format import gather, load_checkpoint, save_and_digest
from glint_track.files import file_digest
from glint_track.model import GlintUNet
from glint_track.training.checkpointer import RNGState, TrainProgress, snapshot
from glint_track.training.save_process import SaveProcess

pytestmark = pytest.mark.skipif(not SaveProcess.available(), reason="the save process needs Linux (memfd)")


def _state(width: int = 4) -> dict:
    """A real training state: channels_last weights, Adam moments, RNG, progress, plus odd tensors."""
    model = GlintUNet(4, width).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 1, 32, 32).contiguous(memory_format=torch.channels_last)).sum().backward()
    optimizer.step()
    parts = {"model": model, "optimizer": optimizer, "rng": RNGState(), "progress": TrainProgress("val_loss", "min")}
    state = gather(parts, {"lr": 1e-3}, True, {"num_glints": 4})
    state["odd"] = {
        "empty": torch.empty(0, 3),
        "mask": torch.tensor([True, False]),
        "half": torch.randn(3, 5).bfloat16(),
        "scalar": torch.tensor(7),
    }
    return snapshot(state)


def assert_same(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride() and torch.equal(a, b), where
        return
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_child_writes_what_torch_save_writes_and_its_digest(tmp_path: Path) -> None:
    writer = SaveProcess()
    try:
        child = writer._proc.pid  # started with the object, before any checkpoint
        small, large = _state(4), _state(8)  # the larger state outgrows the buffer: it grows, same child
        for state in (small, large, small):
            digest = writer(state, tmp_path / "child.pth")
            save_and_digest(state, tmp_path / "here.pth")
            assert digest == file_digest(tmp_path / "child.pth")
            assert_same(
                torch.load(tmp_path / "child.pth", weights_only=True),
                torch.load(tmp_path / "here.pth", weights_only=True),
            )
        weights = load_checkpoint(tmp_path / "child.pth")["model_state_dict"].values()
        wide = [w for w in weights if w.dim() == 4 and w.shape[1] > 1 and w.shape[2] > 1]
        assert wide and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in wide)
        assert not list(tmp_path.glob(".*.tmp")) and writer._proc.pid == child
    finally:
        writer.close()


def test_child_errors_come_back_as_the_same_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    writer = SaveProcess()
    try:
        with pytest.raises(OSError) as error:
            writer(_state(), tmp_path / "file" / "latest_checkpoint.pth")
        assert isinstance(error.value, (NotADirectoryError, FileExistsError))
        writer(_state(), tmp_path / "ok.pth")  # the child is still serving
        assert load_checkpoint(tmp_path / "ok.pth")["epoch"] == 0
    finally:
        writer.close()


def test_a_dead_child_is_replaced_by_writing_in_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = SaveProcess()
    try:
        writer(_state(), tmp_path / "a.pth")
        writer._proc.kill()
        writer._proc.wait()
        digest = writer(_state(), tmp_path / "b.pth")
        assert digest == file_digest(tmp_path / "b.pth") and "writing checkpoints in this process" in caplog.text
        assert writer._proc is None
    finally:
        writer.close()


def test_the_child_dies_with_a_killed_trainer(tmp_path: Path) -> None:
    """SIGKILL the trainer: its writer must not outlive it (it could finish a file behind a resumed run)."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
        from pathlib import Path
        from test_save_process import _state
        from glint_track.training.save_process import SaveProcess
        writer = SaveProcess()
        writer(_state(), Path({str(tmp_path / "c.pth")!r}))
        print(writer._proc.pid, flush=True)
        time.sleep(60)
    """)
    trainer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(trainer.stdout.readline())
    os.kill(child, 0)  # alive
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"writer process {child} outlived its killed trainer")


def test_training_through_the_child_resumes_bit_identically(tiny_h5: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, straight = train_tiny(tiny_h5, "--epochs", "3", "--save-freq", "1", "--scheduler", "none")  # see test_train
    monkeypatch.setenv("GLINT_TRACK_SAVE_PROCESS", "on")
    first, run_id = train_tiny(tiny_h5, "--epochs", "2", "--save-freq", "1", "--scheduler", "none")
    assert "checkpoints are serialised by process" in first.output
    result = run_cli("train", "--resume", run_id, "--epochs", "3")
    assert result.exit_code == 0, result.output
    resumed, path = latest_checkpoint(run_id)
    load_checkpoint(path)  # its checksum file verifies
    reference, _ = latest_checkpoint(straight)
    for part in ("model_state_dict", "optimizer_state_dict"):
        assert_same(resumed[part], reference[part], part)
    names = {Path(f.path).name for f in MlflowClient().list_artifacts(run_id, "checkpoints")}
    assert {"epoch_001.pth", "epoch_002.pth", "epoch_003.pth", "best_model.pth"} <= names


def test_a_wrong_setting_is_one_line_before_any_run(tiny_h5: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLINT_TRACK_SAVE_PROCESS", "sometimes")
    result = run_cli("train", "--h5", str(tiny_h5), "--device", "cpu", "--epochs", "1")
    assert result.exit_code == 2 and "GLINT_TRACK_SAVE_PROCESS='sometimes': use auto, on or off" in result.output
    assert not MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])


def test_a_child_that_cannot_start_leaves_checkpoints_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    gc.collect()  # earlier tests' garbage (sessions, containers) closes its files now, not during the count
    open_fds = set(os.listdir("/proc/self/fd"))
    writer = SaveProcess()
    digest = writer(_state(), tmp_path / "a.pth")
    assert digest == file_digest(tmp_path / "a.pth") and "writing checkpoints in this process" in caplog.text
    assert set(os.listdir("/proc/self/fd")) - open_fds == set()  # no pipe or memfd left open
