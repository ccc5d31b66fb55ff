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
from typing import Any, Iterator

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from glint_track.errors import GlintTrackError
from glint_track.files import atomic_path, file_digest, first_line
from glint_track.h5check import REPACK, check_layout, check_memory, check_stored, fail, open_datasets

log = logging.getLogger(__name__)

COMPRESSIONS = ("gzip", "lzf", "none")


@dataclass
class GlintData:
    """A whole glint file in memory: uint8 images and heat-maps as torch tensors."""

    path: Path
    images: torch.Tensor  # N×H×W uint8
    heatmaps: torch.Tensor  # N×C×h×w float16/float32
    present: torch.Tensor | None  # N×C uint8
    points: torch.Tensor | None  # N×C×2 float32 glint centres in image pixels, NaN where absent
    stems: list[str] | None
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
        out[key] = value.item() if isinstance(value, np.generic) else value.tolist() if isinstance(value, np.ndarray) else value
    return out


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "glint-track"


def load_glint_file(path: str | Path, cache_dir: Path | None = None) -> GlintData:
    """Validate and load a glint HDF5 file, raising GlintTrackError with the fix on any problem.

    The file may come from anyone: h5check refuses, from metadata alone, what would read outside it or
    allocate more than it holds, and every value the trainer relies on is range-checked here.
    With `cache_dir`, the decoded arrays are kept there as uncompressed .npy files named by the file's
    SHA-256 and memory-mapped: parallel runs on one file share a single copy in RAM (the page cache),
    and only the first run pays for decompression.
    """
    path = Path(path)
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "no such file"
        raise GlintTrackError(f"{path}: {problem}; check --h5, or write demo data with `glint-track synth --out {path}`")
    if not h5py.is_hdf5(path):
        raise fail(path, "is not an HDF5 file", "pass a glint .h5 file written by the packer or `glint-track synth`")
    digest = file_digest(path)
    try:
        with h5py.File(path, "r") as f:
            datasets = open_datasets(path, f)
            check_layout(path, datasets)
            check_memory(path, datasets)
            check_stored(path, datasets)
            stems = [_text(s) for s in datasets["stems"][()]] if "stems" in datasets else None
            points = _read_points(path, datasets) if "points" in datasets else None
            expected = {name: (tuple(ds.shape), _native(ds.dtype)) for name, ds in datasets.items() if name in ("images", "heatmaps")}
            expected |= {"present": (tuple(datasets["present"].shape), np.dtype(np.uint8))} if "present" in datasets else {}
            arrays = _read_cache(cache_dir / digest, expected) if cache_dir else None
            from_cache = arrays is not None
            if arrays is None:
                arrays = _decode(path, datasets)
            attrs = _attrs(f)
    except OSError as e:  # truncated or damaged file: h5py reports it on open or on read
        raise fail(path, f"cannot be read ({first_line(e)})", "the file is truncated or damaged: copy or pack it again") from e
    if not from_cache and cache_dir and _write_cache(cache_dir, digest, arrays):
        arrays = _read_cache(cache_dir / digest, expected) or arrays  # this process maps the shared copy too
    with warnings.catch_warnings():  # memory-mapped arrays are read-only; training only ever reads them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return GlintData(
        path=path, images=tensors["images"], heatmaps=tensors["heatmaps"], present=tensors.get("present"),
        points=torch.from_numpy(points) if points is not None else None, stems=stems, attrs=attrs, digest=digest, from_cache=from_cache,
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
        raise fail(path, f"'points' holds coordinates outside the {H}×{W} image or not finite in {bad} samples",
                   "absent glints must be NaN, present ones inside the image: " + REPACK)
    return points


def _decode(path: Path, datasets: dict[str, h5py.Dataset]) -> dict[str, np.ndarray]:
    """The images, heat-maps and presence flags, read once and checked for what training relies on."""
    heatmaps = datasets["heatmaps"]
    arrays = {"images": datasets["images"][()], "heatmaps": heatmaps.astype(_native(heatmaps.dtype))[()]}
    _check_heatmap_values(path, arrays["heatmaps"])
    if "present" in datasets:
        present = datasets["present"][()]
        if not np.isin(present, (0, 1)).all():
            raise fail(path, "'present' holds values other than 0 and 1", "it flags each glint as absent (0) or present (1): " + REPACK)
        arrays["present"] = present.astype(np.uint8)
    return arrays


def _check_heatmap_values(path: Path, heatmaps: np.ndarray, block: int = 1024) -> None:
    """Finite and in [0, 1] (they are targets for probabilities), checked a block of samples at a time
    so no full-size temporary is made."""
    for start in range(0, len(heatmaps), block):
        part = heatmaps[start : start + block]
        low, high = part.min(), part.max()  # NaN propagates into both
        if not np.isfinite(low) or not np.isfinite(high):
            bad = int((~np.isfinite(heatmaps)).any(axis=(1, 2, 3)).sum())
            raise fail(path, f"'heatmaps' holds NaN or infinite values in {bad} samples", "re-pack the file; targets must be finite, in [0, 1]")
        if low < 0 or high > 1:
            raise fail(path, f"'heatmaps' holds values outside [0, 1] (from {low:g} to {high:g} in samples {start}…)",
                       "targets are probabilities: re-pack the file (the packer clips them to [0, 1])")
    if not heatmaps.any():
        raise fail(path, "no glint is annotated in any sample (every heat-map is zero)",
                   "check that the labels are named g1..gN (or pass --prefix) when packing")


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


def write_glint_file(
    out: Path, images: np.ndarray, heatmaps: np.ndarray, points: np.ndarray, radii: np.ndarray,
    stems: list[str], attrs: dict, compression: str = "gzip",
) -> None:
    """Write the SEED layout (plus `points`, `radii`) to a temp file beside `out`, then rename it into place."""
    if compression not in COMPRESSIONS:
        raise GlintTrackError(f"unknown --compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    codec = None if compression == "none" else compression
    try:
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
            for name, arr in (("images", images), ("heatmaps", heatmaps), ("points", points), ("radii", radii)):
                f.create_dataset(name, data=arr, chunks=(1, *arr.shape[1:]), compression=codec)
            f.create_dataset("present", data=(~np.isnan(points[..., 0])).astype(np.uint8), compression=codec)
            f.create_dataset("stems", data=stems, dtype=h5py.string_dtype())
            f.attrs.update(attrs)
    except OSError as e:
        raise GlintTrackError(f"{out}: could not be written ({e}); nothing was changed there: free some space or choose another path") from e


def split_indices(num_samples: int, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/val split from the seed: the same on every start and every resume."""
    if not 0.0 < val_split < 1.0:
        raise GlintTrackError(f"--val-split {val_split} is outside (0, 1); use e.g. --val-split 0.1")
    n_val = int(round(num_samples * val_split))
    if n_val < 1 or num_samples - n_val < MIN_BATCH:
        raise GlintTrackError(
            f"--val-split {val_split} of {num_samples} samples leaves {n_val} for validation and "
            f"{num_samples - n_val} for training; validation needs at least 1 and training {MIN_BATCH} (BatchNorm "
            f"learns from batches of two or more): use more data or another --val-split"
        )
    order = np.random.default_rng(seed).permutation(num_samples)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def epoch_order(num: int, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """Positions 0…num-1 in this epoch's order: a permutation drawn from (seed, epoch) alone, so a
    resumed run sees exactly the batches it would have seen, whichever loader serves them."""
    if not shuffle:
        return torch.arange(num)
    return torch.randperm(num, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def epoch_indices(indices: torch.Tensor, shuffle: bool, seed: int, epoch: int, shard: tuple[int, int]) -> torch.Tensor:
    """The samples this process trains on this epoch, in order. With `shard` = (rank, world size) of a
    DDP run, each rank takes every world-th sample of the same order, all ranks the same number (they
    step in lockstep); the few left over by the division change from epoch to epoch."""
    order = indices[epoch_order(len(indices), shuffle, seed, epoch).to(indices.device)]
    rank, world = shard
    return order[rank : len(order) // world * world : world] if world > 1 else order


#: The smallest training batch: BatchNorm cannot train on one sample (at the 1×1 bottleneck of 16² images
#: it has a single value per channel), so a last batch of one joins the batch before it.
MIN_BATCH = 2


def batch_chunks(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """`order` cut into batches of `batch_size`, a last batch smaller than MIN_BATCH merged into the one before."""
    chunks = list(order.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) < MIN_BATCH:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def _num_batches(num: int, batch_size: int, shard: tuple[int, int]) -> int:
    per_rank = num // shard[1] if shard[1] > 1 else num
    full, rest = divmod(per_rank, batch_size)
    return full + (rest >= MIN_BATCH or (rest > 0 and full == 0))


#: (images N×1×H×W float, target heat-maps N×C×h×w float, sample indices N)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _as_inputs(images: torch.Tensor, heatmaps: torch.Tensor, index: torch.Tensor) -> Batch:
    """uint8 N×H×W → float N×1×H×W in [0, 1]; heat-maps → float32; plus the samples' indices."""
    return images.unsqueeze(1).float().div_(255.0), heatmaps.float(), index


class ResidentBatches:
    """Batches gathered by index from data already on the training device (uint8 images, float16/32
    heat-maps, moved there once by `GlintData.to`), so no step waits for the host or a worker.
    On the CPU nothing is copied: a memory-mapped cache stays shared between processes."""

    def __init__(self, data: GlintData, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int, shard: tuple[int, int]) -> None:
        self.images, self.heatmaps = data.images, data.heatmaps
        self.device = data.images.device
        self.indices = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        self.batch_size, self.shuffle, self.seed, self.shard = batch_size, shuffle, seed, shard
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return _num_batches(len(self.indices), self.batch_size, self.shard)

    def __iter__(self) -> Iterator[Batch]:
        order = epoch_indices(self.indices, self.shuffle, self.seed, self.epoch, self.shard)
        for chunk in batch_chunks(order, self.batch_size):
            yield _as_inputs(self.images[chunk], self.heatmaps[chunk], chunk)


class _BatchDataset(Dataset):
    """Indexing with a list of sample indices gathers the whole batch at once (in a worker)."""

    def __init__(self, data: GlintData) -> None:
        self.images = data.images
        self.heatmaps = data.heatmaps

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, idx: list[int]) -> Batch:
        index = torch.as_tensor(idx, dtype=torch.long)
        return _as_inputs(self.images[index], self.heatmaps[index], index)


class _EpochBatchSampler(Sampler[list[int]]):
    def __init__(self, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int, shard: tuple[int, int]) -> None:
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.batch_size, self.shuffle, self.seed, self.shard = batch_size, shuffle, seed, shard
        self.epoch = 0

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_indices(self.indices, self.shuffle, self.seed, self.epoch, self.shard)
        yield from (chunk.tolist() for chunk in batch_chunks(order, self.batch_size))

    def __len__(self) -> int:
        return _num_batches(len(self.indices), self.batch_size, self.shard)


class HostBatches:
    """Fallback when the data does not fit on the GPU: worker processes gather batches into pinned
    memory and each is copied to the device asynchronously."""

    def __init__(
        self, data: GlintData, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int, device: torch.device,
        num_workers: int, shard: tuple[int, int],
    ) -> None:
        self.sampler = _EpochBatchSampler(indices, batch_size, shuffle, seed, shard)
        self.device = device
        self.loader = DataLoader(
            _BatchDataset(data), sampler=self.sampler, batch_size=None, num_workers=num_workers,
            pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            yield tuple(t.to(self.device, non_blocking=True) for t in batch)


Batches = ResidentBatches | HostBatches


def fits_on_device(data: GlintData, device: torch.device, fraction: float = 0.5) -> bool:
    """True on the CPU (the data is in RAM already) and on a GPU whose free memory holds the data
    `1/fraction` times over, leaving the rest for activations."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return data.images.nbytes + data.heatmaps.nbytes <= fraction * free


def place(data: GlintData, device: torch.device) -> tuple[GlintData, bool]:
    """The data moved to `device` when it fits there (once, for every split), and whether it did."""
    resident = fits_on_device(data, device)
    return (data.to(device) if resident else data), resident


def make_batches(
    data: GlintData, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int, device: torch.device,
    num_workers: int, resident: bool, shard: tuple[int, int] = (0, 1),
) -> Batches:
    """Batches of `indices`; with `shard` = (rank, world size), only this DDP rank's share of each epoch."""
    if resident:  # `data` already on `device` (GlintData.to)
        return ResidentBatches(data, indices, batch_size, shuffle, seed, shard)
    return HostBatches(data, indices, batch_size, shuffle, seed, device, num_workers, shard)
