"""Checkpoint files: gathered from state_dict()s, written atomically, read without unpickling code."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from glint_track.checkpoint.format import gather, load_checkpoint, restore, save_atomic
from glint_track.errors import GlintTrackError
from glint_track.model import GlintUNet
from glint_track.training.checkpointer import RNGState, TrainProgress, snapshot
from glint_track.training.parts import match_state_layout


def _parts() -> dict:
    model = GlintUNet(num_glints=2, base_channels=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.zeros(2, 1, 16, 16)).sum().backward()
    optimizer.step()
    return {"model": model, "optimizer": optimizer, "rng": RNGState(), "progress": TrainProgress("val_loss", "min")}


def test_keys_with_and_without_optimizer_state(tmp_path: Path) -> None:
    parts = _parts()
    full = gather(parts, {"lr": 1e-3}, save_optimizer=True)
    slim = gather(parts, {"lr": 1e-3}, save_optimizer=False)
    common = {
        "format_version",
        "epoch",
        "model_state_dict",
        "train_args",
        "metrics",
        "best",
        "timestamp",
        "rng_state",
        "save_optimizer",
        "model_info",
    }
    assert set(full) == common | {"optimizer_state_dict"}
    assert set(slim) == common
    save_atomic(full, tmp_path / "full.pth")
    save_atomic(slim, tmp_path / "slim.pth")
    assert (tmp_path / "slim.pth").stat().st_size < (tmp_path / "full.pth").stat().st_size


def test_restore_round_trips_every_part(tmp_path: Path) -> None:
    parts = _parts()
    parts["progress"].update(5, {"val_loss": 0.25})
    save_atomic(gather(parts, {}, True), tmp_path / "c.pth")
    expected = torch.rand(3)  # the RNG stream right after the save
    fresh = _parts()
    assert restore(fresh, load_checkpoint(tmp_path / "c.pth"), "c.pth") == []
    assert torch.equal(torch.rand(3), expected)
    assert fresh["progress"].epoch == 5 and fresh["progress"].best_value == 0.25
    old_state = parts["optimizer"].state_dict()["state"][0]
    new_state = fresh["optimizer"].state_dict()["state"][0]
    assert torch.equal(old_state["exp_avg"], new_state["exp_avg"]) and torch.equal(
        old_state["exp_avg_sq"], new_state["exp_avg_sq"]
    )


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "latest.pth"
    save_atomic({"model_state_dict": {"w": torch.ones(2)}, "epoch": 1}, path)
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_atomic({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]  # no temp file left behind


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_payload_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.save({"model_state_dict": {}, "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(GlintTrackError, match="refused to load"):
        load_checkpoint(tmp_path / "evil.pth")
    assert "must never run" not in capsys.readouterr().out


def test_truncated_checkpoint_is_reported(tmp_path: Path) -> None:
    save_atomic(gather(_parts(), {}, True), tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(GlintTrackError, match="cut.pth: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pth")


def test_a_sound_checkpoint_that_is_not_the_one_its_checksum_file_names_is_refused(tmp_path: Path) -> None:
    """The checksum file is what tells a run's own file from another sound one put in its place (an older
    version a sync left behind, a file copied over from another run): both load, only one is this run's."""
    from glint_track.checkpoint.format import checksum_path, file_digest

    parts = _parts()
    save_atomic(gather(parts, {}, True), tmp_path / "latest_checkpoint.pth")
    checksum_path(tmp_path / "latest_checkpoint.pth").write_text(file_digest(tmp_path / "latest_checkpoint.pth") + "\n")
    assert load_checkpoint(tmp_path / "latest_checkpoint.pth")["epoch"] == parts["progress"].epoch
    parts["progress"].update(7, {"val_loss": 0.1})
    save_atomic(gather(parts, {}, True), tmp_path / "latest_checkpoint.pth")  # sound, but not the listed one
    with pytest.raises(GlintTrackError, match="checksum mismatch"):
        load_checkpoint(tmp_path / "latest_checkpoint.pth")


def test_data_parallel_prefix_and_bare_weights_are_accepted(tmp_path: Path) -> None:
    model = GlintUNet(num_glints=2, base_channels=4)
    wrapped = collections.OrderedDict((f"module.{k}", v) for k, v in model.state_dict().items())
    torch.save({"epoch": 3, "model_state_dict": wrapped}, tmp_path / "dp.pth")
    assert set(load_checkpoint(tmp_path / "dp.pth")["model_state_dict"]) == set(model.state_dict())
    torch.save(model.state_dict(), tmp_path / "best_model_weights.pt")
    assert load_checkpoint(tmp_path / "best_model_weights.pt")["epoch"] == 0


def test_snapshot_copies_keep_layout_and_do_not_alias() -> None:
    weight = torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    copy = snapshot({"w": [weight]})["w"][0]
    assert copy.stride() == weight.stride() and torch.equal(copy, weight)
    weight.add_(1)
    assert not torch.equal(copy, weight)


def test_restored_optimizer_moments_take_the_layout_of_channels_last_weights(tmp_path: Path) -> None:
    parts = _parts()  # a contiguous model, as the research script wrote them
    save_atomic(gather(parts, {}, True), tmp_path / "c.pth")
    model = GlintUNet(num_glints=2, base_channels=4).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    restore({"model": model, "optimizer": optimizer}, load_checkpoint(tmp_path / "c.pth"), "c.pth")
    conv = model.enc1.seq[0].weight
    assert optimizer.state[conv]["exp_avg"].stride() != conv.stride()
    match_state_layout(optimizer)
    assert optimizer.state[conv]["exp_avg"].stride() == conv.stride()
    assert torch.equal(
        optimizer.state[conv]["exp_avg"], parts["optimizer"].state[parts["model"].enc1.seq[0].weight]["exp_avg"]
    )
