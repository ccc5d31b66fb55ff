"""What a checkpoint file and each of its fields may hold, checked before anything uses them.

Checkpoints are passed around between people, so a file is treated as untrusted: its container must
be the zip format torch.save writes (entries stored, never compressed: nothing inflates past the file's
size), it is read with `weights_only=True` (checkpoint.load_checkpoint), and then every field is
type- and range-checked here, so a crafted or damaged file stops with one line before a run is created.
"""

from __future__ import annotations

import math
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glint_track.constants import MAX_SIDE, SIZE_MULTIPLE
from glint_track.errors import GlintTrackError, shown
from glint_track.files import first_line

#: Fields that, when present, hold a dict (None counts as absent).
DICT_FIELDS = ("train_args", "metrics", "best", "optimizer_state_dict", "scaler_state_dict", "rng_state", "model_info")


#: How torch.save began a file before 1.6: a pickle (protocol 2) of its magic number 0x1950a86a20f9469cfc6c.
LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def refuse(label: str, problem: str) -> GlintTrackError:
    return GlintTrackError(
        f"{label}: {problem}; the checkpoint is damaged or was not written by glint-track or the "
        f"research script: use another one"
    )


class CorruptCheckpoint(GlintTrackError):
    """A checkpoint whose bytes are damaged (checksum mismatch or unreadable), as opposed to a wrong one."""


def check_container(path: Path, label: str) -> None:
    """A zip archive as torch.save writes it: every entry stored uncompressed, none larger than the file.
    `label` names it in errors."""
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_TORCH_HEAD))
    if head.startswith(b"\x80") and not zipfile.is_zipfile(path):
        if head[2:] == LEGACY_TORCH_HEAD[2:]:
            raise GlintTrackError(
                f"{label}: saved in torch's format from before 1.6, which declares its tensor sizes before they can be "
                f"checked, so it is not read; re-save it with a current torch "
                f"(torch.save(torch.load(f), f) on a trusted machine)"
            )
        raise GlintTrackError(
            f"{label}: a plain Python pickle, not a torch.save file; a pickle can run code, so it is not read: "
            f"save the weights with torch.save(model.state_dict(), f) on a trusted machine"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            damaged = archive.testzip() if all(e.compress_type == zipfile.ZIP_STORED for e in entries) else None
    except Exception as e:  # zipfile on bytes from anyone raises many types (NotImplementedError for odd flags, …)
        reason = (
            "an empty file"
            if not head
            else "no complete zip archive"
            if head.startswith(b"PK\x03\x04")
            else "not a torch.save file"
        )
        raise CorruptCheckpoint(
            f"{label}: not a readable checkpoint ({reason}); it may be truncated, use an earlier one"
        ) from e
    if damaged is not None:  # torch.save records each entry's CRC-32; torch.load does not check it
        raise CorruptCheckpoint(
            f"{label}: its entry {damaged!r} fails its CRC check, the file is damaged; use an earlier one"
        )
    size = path.stat().st_size
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.file_size > size:
            raise refuse(
                label,
                f"its entry {entry.filename!r} is compressed or larger than the file (torch.save never "
                f"writes such entries)",
            )


def check_fields(checkpoint: Any, label: str) -> None:
    """Every field glint-track reads has the type and range it must have."""
    if not isinstance(checkpoint, dict) or not all(isinstance(k, str) for k in checkpoint):
        raise refuse(label, f"it holds a {type(checkpoint).__name__}, not a dict of named fields")
    weights = checkpoint.get("model_state_dict")
    if not isinstance(weights, dict) or not weights:
        what = (
            "is empty"
            if isinstance(weights, dict)
            else f"is a {type(weights).__name__}"
            if weights is not None
            else "is missing"
        )
        raise refuse(label, f"its model_state_dict {what} (it must map layer names to weight tensors)")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise refuse(label, "its model_state_dict holds entries that are not named tensors")
    epoch = checkpoint.get("epoch", 0)
    if not _is_int(epoch) or epoch < 0:
        raise refuse(label, f"its epoch is {shown(epoch)}, not a whole number ≥ 0")
    for name in DICT_FIELDS:
        value = checkpoint.get(name)
        if value is not None and not (isinstance(value, dict) and all(isinstance(k, (str, int)) for k in value)):
            raise refuse(label, f"its {name} is a {type(value).__name__}, not a dict")
    version = checkpoint.get("format_version", 0)
    if not _is_int(version):
        raise refuse(label, f"its format_version is {shown(version)}, not a number")
    metrics = checkpoint.get("metrics") or {}  # ours: name → value; the research script's: {"train": {…}, "val": {…}}
    if not all(_is_number(v) or (isinstance(v, dict) and all(map(_is_number, v.values()))) for v in metrics.values()):
        raise refuse(label, "its metrics are not numbers by name")
    _check_best(checkpoint.get("best"), label)
    _check_optimizer(checkpoint.get("optimizer_state_dict"), label)
    if any(not isinstance(v, (int, float, torch.Tensor)) for v in (checkpoint.get("scaler_state_dict") or {}).values()):
        raise refuse(label, "its scaler_state_dict holds values that are not numbers")
    if checkpoint.get("rng_state"):
        check_rng(checkpoint["rng_state"], label)
    _check_model_info(checkpoint.get("model_info") or {}, label)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_best(best: dict[str, Any] | None, label: str) -> None:
    if not best:
        return
    ok = (
        isinstance(best.get("monitor"), str)
        and best.get("mode") in ("min", "max")
        and (best.get("value") is None or (_is_number(best["value"]) and not math.isnan(best["value"])))
        and (best.get("epoch") is None or (_is_int(best["epoch"]) and best["epoch"] >= 0))
    )
    if not ok:
        raise refuse(label, f"its best-checkpoint record {shown(best)} is not (monitor, min|max, value, epoch)")


def _check_optimizer(state: dict[str, Any] | None, label: str) -> None:
    """The structure torch's load_state_dict expects; shapes are compared with the model once it exists
    (see check_optimizer_fits)."""
    if not state:
        return
    groups, per_param = state.get("param_groups"), state.get("state", {})
    ok = (
        isinstance(groups, list)
        and all(
            isinstance(g, dict) and isinstance(g.get("params"), list) and all(_is_int(p) for p in g["params"])
            for g in groups
        )
        and isinstance(per_param, dict)
        and all(isinstance(v, dict) for v in per_param.values())
    )
    if not ok:
        raise refuse(label, "its optimizer_state_dict is not an optimizer's state (param_groups and per-weight state)")


def check_optimizer_fits(optimizer: torch.optim.Optimizer, label: str) -> None:
    """After load_state_dict: each per-weight tensor (Adam's moments, SGD's momentum) has its weight's shape
    and a floating dtype; torch itself would only fail at the first step, after a run exists."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if key == "step":  # a count: a number or a one-element tensor
                    ok = _is_number(value) or (isinstance(value, torch.Tensor) and value.numel() == 1)
                else:  # a per-weight buffer (Adam's moments, SGD's momentum; SGD keeps None before its first step)
                    ok = (value is None and key == "momentum_buffer") or (
                        isinstance(value, torch.Tensor) and value.shape == param.shape and value.is_floating_point()
                    )
                if not ok:
                    raise refuse(
                        label,
                        f"its optimizer state {key!r} is {shown(value)} for a weight of shape {tuple(param.shape)}",
                    )


def check_rng(state: dict[str, Any], label: str) -> None:
    """Each generator state is accepted by a throwaway generator of its kind (the same checks as restoring)."""
    try:
        torch.Generator().set_state(state["torch"])
        n = state["numpy"]
        keys = n["keys"].numpy() if isinstance(n, dict) and isinstance(n.get("keys"), torch.Tensor) else None
        if keys is None or keys.shape != (624,) or keys.min() < 0 or keys.max() >= 2**32:
            raise ValueError("numpy keys are not 624 32-bit words")
        np.random.RandomState().set_state(
            ("MT19937", keys.astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        )
        random.Random().setstate(state["python"])
        cuda = state.get("cuda") or []
        if not isinstance(cuda, list) or not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda):
            raise ValueError("CUDA states are not byte tensors")
    except Exception as e:  # whatever a generator says about a state it refuses (OverflowError included)
        raise refuse(label, f"its rng_state is not a random generator state ({shown(first_line(e))})") from e


def _check_model_info(info: dict[str, Any], label: str) -> None:
    """Counts of at least 1; the trained image size within what `predict --input-size` accepts (predict and export
    allocate images of that size), each side a multiple of SIZE_MULTIPLE."""
    size = info.get("image_size")
    ok = all(info.get(k) is None or (_is_int(info[k]) and info[k] >= 1) for k in ("num_glints", "base_channels")) and (
        size is None
        or (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(s) and s >= 1 for s in size))
    )
    if not ok:
        raise refuse(label, f"its model_info {shown(info)} is not (num_glints, base_channels, image_size)")
    if size is not None and not all(s <= MAX_SIDE and s % SIZE_MULTIPLE == 0 for s in size):
        raise refuse(
            label,
            f"its model_info says it was trained on {shown(size)} images; a side must be a multiple of "
            f"{SIZE_MULTIPLE} up to {MAX_SIDE}",
        )
