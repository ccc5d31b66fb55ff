"""`glint-track sync`: send what a training kept in its spool while the tracking server was away."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import mlflow

from glint_track.errors import GlintTrackError
from glint_track.files import first_line
from glint_track.tracking.send import send
from glint_track.tracking.server import check_tracking_server, get_run, tracking_uri
from glint_track.tracking.spool import Spool
from glint_track.tracking.tracker import RunTracker

log = logging.getLogger(__name__)


def sync(directory: Path) -> tuple[str, int]:
    """Send everything in a spool to its run (`glint-track sync`); returns (run ID, calls sent)."""
    spool = Spool.open(directory)
    if "MLFLOW_TRACKING_URI" not in os.environ:
        mlflow.set_tracking_uri(spool.tracking_uri)
    check_tracking_server()
    tracker = RunTracker(get_run(spool.run_id))
    try:
        sent = spool.replay(lambda op, args, file: send(tracker, op, args, file))
    except Exception as e:
        raise GlintTrackError(
            f"sending {directory} to {tracking_uri()} stopped ({first_line(e)[:200]}); what was sent is removed "
            f"from the spool, run `glint-track sync {directory}` again"
        ) from e
    return spool.run_id, sent


def send_spool_if_pending(directory: Path) -> None:
    """Send what a killed or disconnected training left in `directory`, if anything."""
    if (directory / "spool.json").is_file() and len(Spool.open(directory)):
        run_id, sent = sync(directory)
        log.info("sent %d calls left in %s to run %s", sent, directory, run_id)
