"""Batches for training and validation: the train/val split, each epoch's order (from the seed alone, so a
resume sees the same batches), data resident on the device or streamed by loader workers, DDP shards."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from glint_track.data.augment import Augmenter
from glint_track.data.glint_file import GlintData
from glint_track.errors import GlintTrackError


def split_indices(
    num_samples: int, val_split: float, seed: int, groups: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/val split from the seed: the same on every start and every resume. With `groups` (each
    sample's participant, session or recording), whole groups are held out (split_groups)."""
    if not 0.0 < val_split < 1.0:
        raise GlintTrackError(f"--val-split {val_split} is outside (0, 1); use e.g. --val-split 0.1")
    if groups is not None:
        held_out = set(split_groups(groups, val_split, seed))
        val = np.array([i for i, g in enumerate(groups) if g in held_out], dtype=np.int64)
        train = np.array([i for i, g in enumerate(groups) if g not in held_out], dtype=np.int64)
        if len(train) < MIN_BATCH:
            raise GlintTrackError(
                f"holding out {', '.join(sorted(held_out))} for validation leaves {len(train)} training samples; "
                f"training needs at least {MIN_BATCH}: use more data, or --split-by frame"
            )
        return train, val
    n_val = int(round(num_samples * val_split))
    if n_val < 1 or num_samples - n_val < MIN_BATCH:
        raise GlintTrackError(
            f"--val-split {val_split} of {num_samples} samples leaves {n_val} for validation and "
            f"{num_samples - n_val} for training; validation needs at least 1 and training {MIN_BATCH} (BatchNorm "
            f"learns from batches of two or more): use more data or another --val-split"
        )
    order = np.random.default_rng(seed).permutation(num_samples)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def split_groups(groups: list[str], val_split: float, seed: int) -> list[str]:
    """The groups held out for validation: drawn in an order fixed by the seed, each taken while the validation set
    stays within 1.5× --val-split of the samples, until it reaches it; at least one group (the smallest if every one
    is larger) and never all of them."""
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    names = sorted(sizes)
    if len(names) < 2:
        raise GlintTrackError(
            f"--split-by group needs samples from two groups or more, and all are in {names[0]!r}: use --split-by "
            "frame, or pack one sub-folder per participant"
        )
    target, held, count = val_split * len(groups), [], 0
    for i in np.random.default_rng(seed).permutation(len(names)):
        if count >= target or len(held) == len(names) - 1:
            break
        if count + sizes[names[i]] <= max(1.5 * target, 1):
            held.append(names[i])
            count += sizes[names[i]]
    return sorted(held or [min(names, key=lambda n: (sizes[n], n))])


def epoch_order(num: int, shuffle: bool, seed: int, epoch: int, passes: int = 1) -> torch.Tensor:
    """Positions 0…num-1 in this epoch's order, `passes` times over (each pass a permutation of its own): drawn
    from (seed, epoch) alone, so a resumed run sees exactly the batches it would have seen, whichever loader
    serves them."""
    if not shuffle:
        return torch.arange(num)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.cat([torch.randperm(num, generator=generator) for _ in range(passes)])


def epoch_indices(
    indices: torch.Tensor, shuffle: bool, seed: int, epoch: int, shard: tuple[int, int], passes: int = 1
) -> torch.Tensor:
    """The samples this process trains on this epoch, in order. With `shard` = (rank, world size) of a
    DDP run, each rank takes every world-th sample of the same order, all ranks the same number (they
    step in lockstep); the few left over by the division change from epoch to epoch."""
    order = indices[epoch_order(len(indices), shuffle, seed, epoch, passes).to(indices.device)]
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


def _num_batches(num: int, batch_size: int, shard: tuple[int, int], passes: int = 1) -> int:
    num *= passes
    per_rank = num // shard[1] if shard[1] > 1 else num
    full, rest = divmod(per_rank, batch_size)
    return full + (rest >= MIN_BATCH or (rest > 0 and full == 0))


def _as_inputs(images: torch.Tensor, heatmaps: torch.Tensor, index: torch.Tensor) -> Batch:
    """uint8 N×H×W → float N×1×H×W in [0, 1]; heat-maps → float32; plus the samples' indices."""
    return images.unsqueeze(1).float().div_(255.0), heatmaps.float(), index


class ResidentBatches:
    """Batches gathered by index from data already on the training device (uint8 images, float16/32
    heat-maps, moved there once by `GlintData.to`), so no step waits for the host or a worker.
    On the CPU nothing is copied: a memory-mapped cache stays shared between processes."""

    def __init__(
        self,
        data: GlintData,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int,
        shard: tuple[int, int],
        passes: int = 1,
    ) -> None:
        self.images, self.heatmaps = data.images, data.heatmaps
        self.device = data.images.device
        self.indices = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        self.batch_size, self.shuffle, self.seed, self.shard, self.passes = batch_size, shuffle, seed, shard, passes
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return _num_batches(len(self.indices), self.batch_size, self.shard, self.passes)

    def __iter__(self) -> Iterator[Batch]:
        order = epoch_indices(self.indices, self.shuffle, self.seed, self.epoch, self.shard, self.passes)
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
    def __init__(
        self, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int, shard: tuple[int, int], passes: int
    ) -> None:
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.batch_size, self.shuffle, self.seed, self.shard, self.passes = batch_size, shuffle, seed, shard, passes
        self.epoch = 0

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_indices(self.indices, self.shuffle, self.seed, self.epoch, self.shard, self.passes)
        yield from (chunk.tolist() for chunk in batch_chunks(order, self.batch_size))

    def __len__(self) -> int:
        return _num_batches(len(self.indices), self.batch_size, self.shard, self.passes)


class HostBatches:
    """Fallback when the data does not fit on the GPU: worker processes gather batches into pinned
    memory and each is copied to the device asynchronously."""

    def __init__(
        self,
        data: GlintData,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int,
        device: torch.device,
        num_workers: int,
        shard: tuple[int, int],
        passes: int = 1,
    ) -> None:
        self.sampler = _EpochBatchSampler(indices, batch_size, shuffle, seed, shard, passes)
        self.device = device
        self.loader = DataLoader(
            _BatchDataset(data),
            sampler=self.sampler,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            yield tuple(t.to(self.device, non_blocking=True) for t in batch)


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
    data: GlintData,
    indices: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    device: torch.device,
    num_workers: int,
    resident: bool,
    shard: tuple[int, int] = (0, 1),
    passes: int = 1,
) -> Batches:
    """Batches of `indices`, `passes` times over per epoch; with `shard` = (rank, world size), only this DDP rank's
    share of each epoch."""
    if resident:  # `data` already on `device` (GlintData.to)
        return ResidentBatches(data, indices, batch_size, shuffle, seed, shard, passes)
    return HostBatches(data, indices, batch_size, shuffle, seed, device, num_workers, shard, passes)


#: (images N×1×H×W float, target heat-maps N×C×h×w float, sample indices N)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


#: Pixels augmented in one call on a GPU (512 frames of 256²): the augmenter is a few dozen small kernels whatever the
#: count, which for one batch of 16 took about half as long as the training step on an H100; this many at once cost it
#: a few per cent, and the call's memory stays under 1 GB. A CPU augments batch by batch (in its caches).
AUGMENT_CHUNK_PIXELS = 512 * 256 * 256


class AugmentedBatches:
    """Training batches as another camera, eye and moment could have recorded them: drawn anew by the augmenter
    (data/augment.py) on the training device (on a GPU AUGMENT_CHUNK_PIXELS at a time), each batch with its targets
    rendered for it. The batches are the same as without augmentation, in the same order."""

    def __init__(
        self, batches: Batches, augmenter: Augmenter, share: Callable[[int], float] = lambda epoch: 1.0
    ) -> None:
        self.batches, self.augmenter, self.share = batches, augmenter, share
        self.chunk = AUGMENT_CHUNK_PIXELS if augmenter.device.type == "cuda" else 0

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)
        self.augmenter.set_epoch(epoch, self.share(epoch))

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        pending: list[Batch] = []
        pixels = 0
        for batch in self.batches:
            pending.append(batch)
            pixels += batch[0].numel()
            if pixels >= self.chunk:
                yield from self._augmented(pending)
                pending, pixels = [], 0
        yield from self._augmented(pending)

    def _augmented(self, batches: list[Batch]) -> Iterator[Batch]:
        if not batches:
            return
        images, heatmaps, index = (torch.cat(parts) for parts in zip(*batches))
        images, heatmaps = self.augmenter(images, heatmaps, index)
        sizes = [len(b[2]) for b in batches]
        yield from zip(images.split(sizes), heatmaps.split(sizes), index.split(sizes))


Batches = ResidentBatches | HostBatches | AugmentedBatches
