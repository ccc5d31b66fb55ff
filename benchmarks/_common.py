"""What the benchmark scripts share."""

from __future__ import annotations

import tempfile
from pathlib import Path


def make_workdir(path: Path | None, prefix: str) -> Path:
    """The folder a benchmark writes its data, runs and MLflow store into (a new temp folder by default)."""
    workdir = (path or Path(tempfile.mkdtemp(prefix=prefix))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir
