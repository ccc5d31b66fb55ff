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
from glint_track.files import atomic_path, file_digest
from glint_track.model import OUTPUT_STRIDE, SIZE_MULTIPLE

log = logging.getLogger(__name__)

HEATMAP_DTYPES = (np.float16, np.float32)
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


def _fail(path: Path, problem: str, fix: str) -> GlintTrackError:
    return GlintTrackError(f"{path}: {problem}; {fix}")


def _check_layout(path: Path, f: h5py.File) -> None:
    """Check names, ranks, dtypes and sizes from the metadata alone (nothing is read yet)."""
    repack = "re-pack it with the labelme packer or `glint-track synth`"
    for name in ("images", "heatmaps"):
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise _fail(path, f"dataset '{name}' is missing (found: {sorted(f.keys()) or 'nothing'})", repack)
    images, heatmaps = f["images"], f["heatmaps"]
    if images.ndim != 3:
        raise _fail(path, f"'images' has shape {images.shape}, expected N×H×W (3 dimensions)", repack)
    if heatmaps.ndim != 4:
        raise _fail(path, f"'heatmaps' has shape {heatmaps.shape}, expected N×C×h×w (4 dimensions)", repack)
    if images.dtype != np.uint8:
        raise _fail(path, f"'images' has dtype {images.dtype}, expected uint8 (0-255 grayscale)", repack)
    if heatmaps.dtype not in HEATMAP_DTYPES:
        raise _fail(path, f"'heatmaps' has dtype {heatmaps.dtype}, expected float16 or float32", repack)
    n, n_hm = images.shape[0], heatmaps.shape[0]
    if n != n_hm:
        raise _fail(path, f"'images' has {n} samples but 'heatmaps' has {n_hm}", "the file is inconsistent: " + repack)
    if n == 0:
        raise _fail(path, "the file holds no samples", "pack at least a few annotated images into it")
    if heatmaps.shape[1] == 0:
        raise _fail(path, "'heatmaps' has 0 glint channels", repack)
    H, W = images.shape[1:]
    h, w = heatmaps.shape[2:]
    if H % OUTPUT_STRIDE or W % OUTPUT_STRIDE or (h, w) != (H // OUTPUT_STRIDE, W // OUTPUT_STRIDE):
        raise _fail(
            path,
            f"heat-maps are {h}×{w} but images are {H}×{W}; the model needs heat-maps of exactly 1/{OUTPUT_STRIDE} "
            f"the image size ({H // OUTPUT_STRIDE}×{W // OUTPUT_STRIDE}) and image sides divisible by {SIZE_MULTIPLE}",
            f"re-pack with --hm-size {H // OUTPUT_STRIDE}x{W // OUTPUT_STRIDE}",
        )
    if H % SIZE_MULTIPLE or W % SIZE_MULTIPLE:
        raise _fail(path, f"image size {H}×{W} is not divisible by {SIZE_MULTIPLE}, which the UNet's 4 poolings need",
                    f"re-pack at a size divisible by {SIZE_MULTIPLE}")
    for name, shape in (("present", (n, heatmaps.shape[1])), ("stems", (n,)), ("points", (n, heatmaps.shape[1], 2))):
        if name in f and tuple(f[name].shape) != shape:
            raise _fail(path, f"'{name}' has shape {f[name].shape}, expected {shape}", repack)


def _attr_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "glint-track"


def load_glint_file(path: str | Path, cache_dir: Path | None = None) -> GlintData:
    """Validate and load a glint HDF5 file, raising GlintTrackError with the fix on any problem.

    With `cache_dir`, the decoded arrays are kept there as uncompressed .npy files named by the file's
    SHA-256 and memory-mapped: parallel runs on one file share a single copy in RAM (the page cache),
    and only the first run pays for decompression.
    """
    path = Path(path)
    if not path.exists():
        raise GlintTrackError(f"{path}: no such file; check --h5, or write demo data with `glint-track synth --out {path}`")
    if not h5py.is_hdf5(path):
        raise _fail(path, "is not an HDF5 file", "pass a glint .h5 file written by the packer or `glint-track synth`")
    try:
        with h5py.File(path, "r") as f:
            _check_layout(path, f)
            stems = [s.decode() if isinstance(s, bytes) else str(s) for s in f["stems"][...]] if "stems" in f else None
            attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
            points = f["points"][...].astype(np.float32) if "points" in f else None
    except OSError as e:  # truncated or damaged file: h5py reports it on open or on read
        raise _fail(path, f"cannot be read ({str(e).splitlines()[0]})", "the file is truncated or damaged: copy or pack it again") from e
    digest = file_digest(path)
    arrays = _read_cache(cache_dir / digest) if cache_dir else None
    from_cache = arrays is not None
    if arrays is None:
        arrays = _decode(path)
        if cache_dir and _write_cache(cache_dir, digest, arrays):
            arrays = _read_cache(cache_dir / digest)  # this process maps the shared copy too
    with warnings.catch_warnings():  # memory-mapped arrays are read-only; training only ever reads them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return GlintData(
        path=path, images=tensors["images"], heatmaps=tensors["heatmaps"], present=tensors.get("present"),
        points=torch.from_numpy(points) if points is not None else None, stems=stems, attrs=attrs, digest=digest, from_cache=from_cache,
    )


def _decode(path: Path) -> dict[str, np.ndarray]:
    try:
        with h5py.File(path, "r") as f:
            arrays = {"images": f["images"][...], "heatmaps": f["heatmaps"][...]}
            if "present" in f:
                arrays["present"] = f["present"][...].astype(np.uint8)
    except OSError as e:
        raise _fail(path, f"cannot be read ({str(e).splitlines()[0]})", "the file is truncated or damaged: copy or pack it again") from e
    heatmaps = arrays["heatmaps"]
    if not np.isfinite(heatmaps).all():
        bad = int((~np.isfinite(heatmaps)).any(axis=(1, 2, 3)).sum())
        raise _fail(path, f"'heatmaps' holds NaN or infinite values in {bad} samples", "re-pack the file; targets must be finite, in [0, 1]")
    if not heatmaps.any():
        raise _fail(path, "no glint is annotated in any sample (every heat-map is zero)",
                    "check that the labels are named g1..gN (or pass --prefix) when packing")
    return arrays


def _read_cache(folder: Path) -> dict[str, np.ndarray] | None:
    if not (folder / "images.npy").is_file():
        return None
    return {p.stem: np.load(p, mmap_mode="r") for p in sorted(folder.glob("*.npy"))}


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
    if n_val < 1 or num_samples - n_val < 1:
        raise GlintTrackError(
            f"--val-split {val_split} of {num_samples} samples leaves {n_val} for validation and "
            f"{num_samples - n_val} for training; both need at least one: use more data or another --val-split"
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


def _num_batches(num: int, batch_size: int, shard: tuple[int, int]) -> int:
    per_rank = num // shard[1] if shard[1] > 1 else num
    return (per_rank + batch_size - 1) // batch_size


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
        for chunk in order.split(self.batch_size):
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
        yield from (chunk.tolist() for chunk in order.split(self.batch_size))

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
