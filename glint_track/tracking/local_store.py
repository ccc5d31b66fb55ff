"""The local MLflow store checked before anything is written to it, without importing MLflow (it takes seconds,
and MLflow finds an unwritable store only after retrying for minutes)."""

from __future__ import annotations

import os
from pathlib import Path

from glint_track.errors import GlintTrackError
from glint_track.files import check_writable


def check_local_store(alternative: str = "") -> None:
    """A local MLflow store (./mlflow.db without MLFLOW_TRACKING_URI, or a sqlite: one) whose folder cannot be
    written is said now, in one line, without importing MLflow: MLflow would find out beside the first epoch and
    retry creating its engine for about two minutes first. `alternative`: another way out, said last."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if not uri.startswith("sqlite:///"):
        return
    database = Path(uri[len("sqlite:///") :] or "mlflow.db")
    try:
        if not database.parent.is_dir():
            raise NotADirectoryError(20, "Not a directory (or missing)", str(database.parent))
        check_writable(database.parent)
        if database.exists() and not os.access(database, os.W_OK):
            raise PermissionError(13, "Permission denied", str(database))
    except OSError as e:
        raise GlintTrackError(
            f"the MLflow store {database.absolute()} cannot be written ({e.strerror or e}): run in a folder you can "
            "write, or set MLFLOW_TRACKING_URI to a store you can (e.g. sqlite:////home/me/mlflow.db)" + alternative
        ) from e
