"""Glint HDF5 files: validation, loading, the deterministic train/val split and batch loading.

The layout is the one the old packer wrote (see README, "Data format"): `images` N×H×W uint8,
`heatmaps` N×C×h×w float16/float32 with h = H/4, optional `present` N×C, `stems` N and attributes.
Every check runs before training starts, so a bad file costs seconds, not a wasted GPU hour.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from glint_track.constants import COMPRESSIONS
from glint_track.data.chunks import read_gzip_chunks
from glint_track.data.h5check import REPACK, check_layout, check_memory, check_stored, fail, open_datasets
from glint_track.errors import GlintTrackError
from glint_track.files import atomic_path, file_digest, first_line, not_a_file

log = logging.getLogger(__name__)


@dataclass
class GlintData:
    """A whole glint file in memory: uint8 images and heat-maps as torch tensors."""

    path: Path
    images: torch.Tensor  # N×H×W uint8
    heatmaps: torch.Tensor  # N×C×h×w float16/float32
    present: torch.Tensor | None  # N×C uint8
    points: torch.Tensor | None  # N×C×2 float32 glint centres in image pixels, NaN where absent
    stems: list[str] | None
    groups: list[str] | None = None  # each sample's participant, session or recording, where the file says
    attrs: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    from_cache: bool = False  # the decoded arrays came memory-mapped from the cache

    def to(self, device: torch.device) -> GlintData:
        """The same data with images and heat-maps on `device` (no copy when they are there already)."""
        return replace(self, images=self.images.to(device), heatmaps=self.heatmaps.to(device))

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_glints(self) -> int:
        return int(self.heatmaps.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])


def _unreadable(path: Path, error: OSError) -> GlintTrackError:
    """HDF5 refuses a file another process holds open for writing (its lock), and reports a truncated or
    damaged one on open or on read: each has its own fix."""
    if isinstance(error, BlockingIOError) or "unable to lock file" in str(error):
        return fail(
            path,
            "is locked: another program has it open for writing (a packer or synth still running, an HDF5 viewer)",
            "let it finish or close it, then run again",
        )
    fix = "the file is truncated or damaged: copy or pack it again"
    return fail(path, f"cannot be read ({first_line(error)})", fix)


def _attrs(f: h5py.File) -> dict[str, Any]:
    """The file's attributes as plain values; one h5py cannot convert is left out."""
    out = {}
    for key in f.attrs:
        try:
            value = f.attrs[key]
        except (OSError, TypeError, ValueError):
            log.debug("attribute %r of %s cannot be read; ignored", key, f.filename)
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out[key] = (
            value.item()
            if isinstance(value, np.generic)
            else value.tolist()
            if isinstance(value, np.ndarray)
            else value
        )
    return out


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


#: The longest sample name kept (a stem or a group), in characters.
MAX_NAME_CHARS = 256


def _names(dataset: h5py.Dataset) -> list[str]:
    """A name per sample (h5check bounded their declared size), one line each, at most MAX_NAME_CHARS long."""
    return [" ".join(_text(v).split())[:MAX_NAME_CHARS] for v in dataset[()]]


def load_glint_file(path: str | Path, cache_dir: Path | None = None) -> GlintData:
    """Validate and load a glint HDF5 file, raising GlintTrackError with the fix on any problem.

    The file may come from anyone: h5check refuses, from metadata alone, what would read outside it or
    allocate more than it holds, and every value the trainer relies on is range-checked here.
    With `cache_dir`, the decoded arrays are kept there as uncompressed .npy files named by the file's
    SHA-256 and memory-mapped: parallel runs on one file share a single copy in RAM (the page cache),
    and only the first run pays for decompression.
    """
    path = Path(path)
    if problem := not_a_file(path):
        raise GlintTrackError(
            f"{path}: {problem}; check --h5, or write demo data with `glint-track synth --out {path}`"
        )
    if not h5py.is_hdf5(path):
        raise fail(path, "is not an HDF5 file", "pass a glint .h5 file written by the packer or `glint-track synth`")
    digest = file_digest(path)
    try:
        with h5py.File(path, "r") as f:
            datasets = open_datasets(path, f)
            check_layout(path, datasets)
            check_memory(path, datasets)
            check_stored(path, datasets)
            stems, groups = (_names(datasets[name]) if name in datasets else None for name in ("stems", "groups"))
            points = _read_points(path, datasets) if "points" in datasets else None
            expected = {
                name: (tuple(ds.shape), _native(ds.dtype))
                for name, ds in datasets.items()
                if name in ("images", "heatmaps")
            }
            expected |= (
                {"present": (tuple(datasets["present"].shape), np.dtype(np.uint8))} if "present" in datasets else {}
            )
            arrays = _read_cache(cache_dir / digest, expected) if cache_dir else None
            from_cache = arrays is not None
            if arrays is None:
                arrays = _decode(path, datasets)
            attrs = _attrs(f)
    except OSError as e:
        raise _unreadable(path, e) from e
    if not from_cache and cache_dir and _write_cache(cache_dir, digest, arrays):
        arrays = _read_cache(cache_dir / digest, expected) or arrays  # this process maps the shared copy too
    with warnings.catch_warnings():  # memory-mapped arrays are read-only; training only ever reads them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return GlintData(
        path=path,
        images=tensors["images"],
        heatmaps=tensors["heatmaps"],
        present=tensors.get("present"),
        points=torch.from_numpy(points) if points is not None else None,
        stems=stems,
        groups=groups,
        attrs=attrs,
        digest=digest,
        from_cache=from_cache,
    )


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=")


def _read_points(path: Path, datasets: dict[str, h5py.Dataset]) -> np.ndarray:
    """N×C×2 glint centres: both coordinates NaN (absent) or both finite and inside the image."""
    points = datasets["points"].astype(np.float32)[()]
    H, W = datasets["images"].shape[1:]
    x, y = points[..., 0], points[..., 1]
    absent = np.isnan(x) & np.isnan(y)
    inside = (x >= -1) & (x <= W) & (y >= -1) & (y <= H)  # NaN or ±inf are never inside
    if not (absent | inside).all():
        bad = int((~(absent | inside)).any(axis=1).sum())
        raise fail(
            path,
            f"'points' holds coordinates outside the {H}×{W} image or not finite in {bad} samples",
            "absent glints must be NaN, present ones inside the image: " + REPACK,
        )
    return points


def _decode(path: Path, datasets: dict[str, h5py.Dataset]) -> dict[str, np.ndarray]:
    """The images, heat-maps and presence flags, read once and checked for what training relies on."""
    arrays = {name: _read(datasets[name]) for name in ("images", "heatmaps")}
    _check_heatmap_values(path, arrays["heatmaps"])
    if "present" in datasets:
        present = datasets["present"][()]
        if not np.isin(present, (0, 1)).all():
            raise fail(
                path,
                "'present' holds values other than 0 and 1",
                "it flags each glint as absent (0) or present (1): " + REPACK,
            )
        arrays["present"] = present.astype(np.uint8)
    return arrays


def _read(dataset: h5py.Dataset) -> np.ndarray:
    """A whole dataset in native byte order, its gzip chunks inflated on every core where it has the plain layout."""
    array = read_gzip_chunks(dataset)
    if array is None:
        array = dataset[()]
    return array.astype(_native(array.dtype), copy=False)


def _check_heatmap_values(path: Path, heatmaps: np.ndarray, block: int = 1024) -> None:
    """Finite and in [0, 1] (they are targets for probabilities), checked a block of samples at a time
    so no full-size temporary is made."""
    for start in range(0, len(heatmaps), block):
        part = heatmaps[start : start + block]
        low, high = part.min(), part.max()  # NaN propagates into both
        if not np.isfinite(low) or not np.isfinite(high):
            bad = int((~np.isfinite(heatmaps)).any(axis=(1, 2, 3)).sum())
            raise fail(
                path,
                f"'heatmaps' holds NaN or infinite values in {bad} samples",
                "re-pack the file; targets must be finite, in [0, 1]",
            )
        if low < 0 or high > 1:
            raise fail(
                path,
                f"'heatmaps' holds values outside [0, 1] (from {low:g} to {high:g} in samples {start}…)",
                "targets are probabilities: re-pack the file (the packer clips them to [0, 1])",
            )
    if not heatmaps.any():
        raise fail(
            path,
            "no glint is annotated in any sample (every heat-map is zero)",
            "check that the labels are named g1..gN (or pass --prefix) when packing",
        )


def _read_cache(folder: Path, expected: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray] | None:
    """The cached arrays, memory-mapped, if the entry is complete and matches the file's layout; a damaged
    entry (a disk that filled up, a crash) is removed with a warning, to be rebuilt."""
    if not folder.is_dir():
        return None
    try:
        arrays = {p.stem: np.load(p, mmap_mode="r") for p in sorted(folder.glob("*.npy"))}
        layout = {name: (tuple(a.shape), a.dtype) for name, a in arrays.items()}
    except (OSError, ValueError, EOFError) as e:
        problem = first_line(e)
    else:
        if layout == expected:
            return arrays
        problem = f"it holds {sorted(layout)} where the file has {sorted(expected)} of other shapes"
    log.warning("the cached copy of the data in %s is damaged (%s); decoding the file again", folder, problem)
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _write_cache(cache_dir: Path, digest: str, arrays: dict[str, np.ndarray]) -> bool:
    """Write the decoded arrays into a temp folder, then rename it into place (atomic: a concurrent
    starter either finds the complete folder or none; if two write at once, the first rename wins)."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=cache_dir))
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        try:
            os.rename(tmp, cache_dir / digest)
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
        return True
    except OSError as e:  # a full or read-only cache disk slows things down but must not stop training
        log.warning("could not cache the decoded data in %s (%s); continuing without the cache", cache_dir, e)
        if "tmp" in locals():
            shutil.rmtree(tmp, ignore_errors=True)
        return False


def written_by_glint_track(path: Path) -> bool:
    """A data file `pack` or `synth` wrote (so another of theirs may replace it): HDF5 whose `source` says so."""
    if not h5py.is_hdf5(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            return _text(f.attrs.get("source", b"")).startswith("glint-track ")
    except (OSError, ValueError):
        return False


def write_glint_file(
    out: Path,
    images: np.ndarray,
    heatmaps: np.ndarray,
    points: np.ndarray,
    radii: np.ndarray,
    stems: list[str],
    attrs: dict,
    compression: str = "gzip",
    groups: list[str] | None = None,
) -> None:
    """Write the SEED layout (plus `points`, `radii`, and `groups` when given: each sample's participant or session)
    to a temp file beside `out`, then rename it into place."""
    if compression not in COMPRESSIONS:
        raise GlintTrackError(f"unknown --compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    codec = None if compression == "none" else compression
    try:
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
            for name, arr in (("images", images), ("heatmaps", heatmaps), ("points", points), ("radii", radii)):
                f.create_dataset(name, data=arr, chunks=(1, *arr.shape[1:]), compression=codec)
            f.create_dataset("present", data=(~np.isnan(points[..., 0])).astype(np.uint8), compression=codec)
            f.create_dataset("stems", data=stems, dtype=h5py.string_dtype())
            if groups is not None:
                f.create_dataset("groups", data=groups, dtype=h5py.string_dtype())
            f.attrs.update(attrs)
    except OSError as e:
        raise GlintTrackError(
            f"{out}: could not be written ({e}); nothing was changed there: free some space or choose another path"
        ) from e
