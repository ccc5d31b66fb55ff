"""The spool: tracking calls kept on disk while the server is away, sent in order, each removed once sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from glint_track.errors import GlintTrackError
from glint_track.tracking.spool import Spool


def test_entries_replay_in_order_with_their_files_and_are_removed_once_sent(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path / "spool", "a" * 32, "http://server:5000")
    upload = tmp_path / "train_args.json"
    upload.write_text("v1")
    spool.append("metrics", {"metrics": {"loss": 1.0}, "step": 1})
    spool.append("artifact", {"dir": None, "name": upload.name}, upload)
    upload.unlink()  # replaced by the next epoch: the spool holds its own copy
    spool.append("end", {"status": "FINISHED"})
    seen = []
    assert spool.replay(lambda op, args, file: seen.append((op, args, file.read_text() if file else None))) == 3
    assert seen == [
        ("metrics", {"metrics": {"loss": 1.0}, "step": 1}, None),
        ("artifact", {"dir": None, "name": "train_args.json"}, "v1"),
        ("end", {"status": "FINISHED"}, None),
    ]
    assert len(spool) == 0 and sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["spool.json"]


def test_a_failed_replay_keeps_the_failed_call_and_everything_after_it(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path / "spool", "a" * 32, "http://server:5000")
    for step in (1, 2, 3):
        spool.append("metrics", {"step": step})
    sent = []

    def send(op: str, args: dict, file: Path | None) -> None:
        if args["step"] == 2:
            raise ConnectionError("server away again")
        sent.append(args["step"])

    with pytest.raises(ConnectionError):
        spool.replay(send)
    assert sent == [1] and [e.args["step"] for e in Spool.open(tmp_path / "spool").entries()] == [2, 3]


def test_a_newer_upload_of_the_same_artifact_replaces_the_pending_one(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path / "spool", "a" * 32, "http://server:5000")
    latest = tmp_path / "latest_checkpoint.pth"
    args = {"dir": "checkpoints", "name": latest.name}
    for epoch in (1, 2, 3):
        latest.write_text(f"epoch {epoch}")
        spool.append("artifact", args, latest)
        spool.append("metrics", {"step": epoch})
    kept = [(e.op, e.file.read_text() if e.file else e.args["step"]) for e in spool.entries()]
    assert kept == [("metrics", 1), ("metrics", 2), ("artifact", "epoch 3"), ("metrics", 3)]


def test_reopening_reads_the_run_and_server_and_a_folder_that_is_no_spool_is_one_line(tmp_path: Path) -> None:
    Spool.create(tmp_path / "spool", "b" * 32, "http://server:5000")
    reopened = Spool.open(tmp_path / "spool")
    assert (reopened.run_id, reopened.tracking_uri) == ("b" * 32, "http://server:5000")
    with pytest.raises(GlintTrackError, match="not a glint-track spool"):
        Spool.open(tmp_path)
