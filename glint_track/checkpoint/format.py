"""Checkpoints: what goes in one, how it is written (atomically) and read (without unpickling code).

A checkpoint is gathered from the `state_dict()` of each stateful part of training (model, optimizer,
grad scaler, RNG, progress) and restored through their `load_state_dict()`; no field is copied by hand.
The file keeps the research script's keys (`epoch`, `model_state_dict`, `optimizer_state_dict`,
`train_args`, `metrics`, `timestamp`) so old tools read ours and we resume theirs.

Which files a training writes after each epoch is `training.checkpointer`'s concern.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from glint_track.checkpoint.schema import CorruptCheckpoint, check_container, check_fields
from glint_track.errors import GlintTrackError
from glint_track.files import atomic_path, file_digest, first_line
from glint_track.model import canonical_state_dict

#: 2: the research script's layer names (1 had names of our own, renamed on load).
FORMAT_VERSION = 2
LATEST = "latest_checkpoint.pth"
BEST = "best_model.pth"
ARTIFACT_DIR = "checkpoints"
EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pth$")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


#: Checkpoint key of each stateful part; `progress` is spread over the top level (`epoch`, `metrics`, `best`).
PART_KEYS = {
    "model": "model_state_dict",
    "optimizer": "optimizer_state_dict",
    "scaler": "scaler_state_dict",
    "rng": "rng_state",
}
#: Parts left out by --no-save-optimizer: resuming re-creates them from the command line.
OPTIMIZER_PARTS = ("optimizer", "scaler")


def gather(
    parts: dict[str, Stateful],
    train_args: dict[str, Any],
    save_optimizer: bool,
    model_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One checkpoint dict from the parts' state_dict()s; `model_info` (glints, width, input size) lets
    evaluate/predict rebuild and feed the model without the training file."""
    state: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "train_args": train_args,
        "save_optimizer": save_optimizer,
        "model_info": model_info or {},
    }
    for name, part in parts.items():
        if name == "progress":
            state.update(part.state_dict())
        elif save_optimizer or name not in OPTIMIZER_PARTS:
            state[PART_KEYS[name]] = part.state_dict()
    state["timestamp"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return state


def restore(parts: dict[str, Stateful], checkpoint: dict[str, Any], source: str) -> list[str]:
    """Load each part present in the checkpoint; return the names of the parts it did not have."""
    missing = []
    for name, part in parts.items():
        key = PART_KEYS.get(name)
        if name == "progress":
            part.load_state_dict(checkpoint)
        elif checkpoint.get(key):  # an empty state (e.g. a disabled fp16 grad scaler) restores nothing
            try:
                part.load_state_dict(checkpoint[key])
            except (RuntimeError, ValueError, KeyError) as e:
                raise GlintTrackError(
                    f"{source}: its {name} state does not fit this {name} ({first_line(e)}); resume with the same "
                    f"--base-channels, data (glint count) and --optimizer as the run that wrote it"
                ) from e
        else:
            missing.append(name)
    return missing


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Serialise to a temp file in the same folder, fsync, then rename: a reader sees the old file or the new one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def save_and_digest(state: dict[str, Any], path: Path) -> str:
    """save_atomic, then the SHA-256 of the bytes written (what the checksum file records)."""
    save_atomic(state, path)
    return file_digest(path)


def copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def checksum_path(path: Path) -> Path:
    """Where a checkpoint's SHA-256 is kept: beside it, locally and in the run."""
    return path.with_name(path.name + ".sha256")


def load_checkpoint(path: str | Path, label: str | None = None) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True: tensors and plain containers only, never pickled code.
    When its checksum file is beside it, the bytes are verified first (it may list two digests: the
    file's and the one it replaces, see Checkpointer._publish). `label` names the checkpoint in errors
    where its path is a download's temporary copy (`runs:/<id>/checkpoints/best_model.pth`)."""
    path = Path(path)
    label = label or str(path)
    if not path.is_file():
        raise GlintTrackError(
            f"{path}: no such checkpoint file; pass a run ID, a runs:/ URI or an existing .pth file to --resume"
        )
    sidecar = checksum_path(path)
    if sidecar.is_file() and file_digest(path) not in sidecar.read_text(errors="replace")[:4096].split():
        raise CorruptCheckpoint(
            f"{label}: checksum mismatch, the file is truncated or corrupted; use an earlier checkpoint of the run"
        )
    check_container(path, label)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise GlintTrackError(
            f"{label}: refused to load, it holds objects other than tensors and plain data, which could run code; "
            f"re-save it as a plain state dict from a trusted copy"
        ) from e
    except Exception as e:  # torch's reader of bytes from anyone: any failure means an unreadable file, never a crash
        raise CorruptCheckpoint(
            f"{label}: not a readable checkpoint ({first_line(e)}); it may be truncated, use an earlier one"
        ) from e
    if (
        isinstance(checkpoint, dict)
        and "model_state_dict" not in checkpoint
        and checkpoint
        and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    ):
        checkpoint = {"epoch": 0, "model_state_dict": checkpoint}  # a bare weights file (best_model_weights.pt)
    check_fields(checkpoint, label)
    checkpoint["model_state_dict"] = canonical_state_dict(checkpoint["model_state_dict"])
    checkpoint.setdefault("epoch", 0)
    checkpoint["train_args"] = checkpoint.get("train_args") or {}
    return checkpoint


def epoch_file(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pth"


def tree_map(fn: Callable[[Any], Any], obj: Any, leaf: type = torch.Tensor) -> Any:
    """`obj` with every `leaf` inside its dicts, lists and tuples replaced by fn(leaf), in order."""
    if isinstance(obj, leaf):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: tree_map(fn, v, leaf) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(tree_map(fn, v, leaf) for v in obj)
    return obj
