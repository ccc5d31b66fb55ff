"""What the benchmark scripts share."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def make_workdir(path: Path | None, prefix: str) -> Path:
    """The folder a benchmark writes its data, runs and MLflow store into (a new temp folder by default)."""
    workdir = (path or Path(tempfile.mkdtemp(prefix=prefix))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def tensors(obj: object) -> list[torch.Tensor]:
    """Every tensor in a nested checkpoint state, in a fixed order, to compare two states bit for bit."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []
