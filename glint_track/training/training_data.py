"""The data as a training uses it: the file checked (and, on resume, that it is the run's), the settings that depend
on it decided (how validation is held out, passes per epoch), split, kept on the device when it fits, batched, and
the training batches augmented."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch

from glint_track.data.augment import Augmenter, GlintTargets
from glint_track.data.batches import MIN_BATCH, AugmentedBatches, Batches, make_batches, place, split_indices
from glint_track.data.glint_file import GlintData, load_glint_file
from glint_track.errors import GlintTrackError
from glint_track.glints import Glints, ground_truth
from glint_track.training.config import EPOCH_FRAMES, TrainConfig
from glint_track.training.distributed import Distributed
from glint_track.training.parts import augment_share
from glint_track.training.resume import ResumePlan, check_same_data


@dataclass
class TrainingData:
    """The data as training uses it: split, on the device when it fits, batched, with its ground truth; and the
    settings as they apply to it (auto ones decided)."""

    cfg: TrainConfig
    data: GlintData
    resident: bool  # on the device (else streamed by loader workers)
    truth: Glints  # of every sample, indexed by the batches
    train_batches: Batches
    val_batches: Batches  # the whole validation set (the logged model is evaluated on it by rank 0)
    val_shard: Batches  # what this rank validates each epoch: every world-th sample under DDP, else all
    train_count: int
    val_idx: list[int]

    @property
    def val_groups(self) -> list[str] | None:
        """The group of each validation sample, where whole groups are held out."""
        groups = self.data.groups
        return [groups[i] for i in self.val_idx] if self.cfg.split_by == "group" and groups else None


def training_data(cfg: TrainConfig, plan: ResumePlan | None, ddp: Distributed, device: torch.device) -> TrainingData:
    """The data file, checked before anything is started (and, on resume, that it is the run's), split and
    batched, augmented for training; kept on the device when it fits."""
    data = load_glint_file(cfg.h5, cfg.cache_folder())
    if plan:
        check_same_data(plan, data.digest)
    cfg = replace(cfg, split_by=split_by(cfg, data))
    train_idx, val_idx = split_indices(
        data.num_samples, cfg.val_split, cfg.seed, data.groups if cfg.split_by == "group" else None
    )
    cfg = replace(cfg, passes_per_epoch=cfg.passes_per_epoch or max(1, round(EPOCH_FRAMES / len(train_idx))))
    if len(train_idx) // ddp.world_size < MIN_BATCH:
        raise GlintTrackError(
            f"{len(train_idx)} training samples cannot be shared by {ddp.world_size} GPUs with at least "
            f"{MIN_BATCH} each (BatchNorm needs them); use fewer GPUs or more data"
        )
    if len(val_idx) < ddp.world_size:
        raise GlintTrackError(
            f"{len(val_idx)} validation samples cannot give each of {ddp.world_size} GPUs one; "
            f"use a larger --val-split, fewer GPUs or more data"
        )
    # cuDNN autotuning (torch.backends.cudnn.benchmark) stays off: on an H100 it added 3-10 s to the first epoch
    # and gained nothing after it, at batch 16 or 256 (docs/benchmarks.md, issue 16)
    data, resident = place(data, device)
    truth = ground_truth(data.points, data.present, data.heatmaps).to(data.images.device)
    loading = {"seed": cfg.seed, "device": device, "num_workers": cfg.num_workers, "resident": resident}
    train_batches = make_batches(
        data, train_idx, cfg.batch_size, shuffle=True, shard=ddp.shard, passes=cfg.passes_per_epoch, **loading
    )
    if cfg.augment:
        targets = GlintTargets.of(truth, data.heatmaps).to(device)
        frames = min(1.0, EPOCH_FRAMES / len(train_idx))  # about EPOCH_FRAMES redrawn frames an epoch
        augmenter = Augmenter(targets, cfg.augment_strength, cfg.seed, ddp.rank, frames=frames)
        train_batches = AugmentedBatches(train_batches, augmenter, partial(augment_share, cfg))
    val_batches = make_batches(data, val_idx, cfg.batch_size, shuffle=False, **loading)
    rank, world = ddp.shard
    val_shard = (
        make_batches(data, val_idx[rank::world], cfg.batch_size, shuffle=False, **loading) if world > 1 else val_batches
    )
    return TrainingData(
        cfg, data, resident, truth, train_batches, val_batches, val_shard, len(train_idx), val_idx.tolist()
    )


def split_by(cfg: TrainConfig, data: GlintData) -> str:
    """How the validation set is held out: whole groups where the file has two or more (auto), else frames."""
    groups = set(data.groups or ())
    if cfg.split_by == "group" and len(groups) < 2:
        has = f"one group ({next(iter(groups))!r})" if groups else "no groups"
        raise GlintTrackError(
            f"--split-by group: {cfg.h5} has {has}; pack one sub-folder per participant or session "
            "(`glint-track pack --recursive`), or use --split-by frame"
        )
    if cfg.split_by == "auto":
        return "group" if len(groups) >= 2 else "frame"
    return cfg.split_by
