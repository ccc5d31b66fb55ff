"""The stateful parts of a training (model, optimizer, scaler, RNG, progress), built from the settings and,
on resume, restored from a checkpoint; the learning-rate schedule and the reproducibility switches."""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import random
import threading
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from glint_track.checkpoint.format import restore
from glint_track.checkpoint.schema import check_optimizer_fits
from glint_track.constants import RUNS_DIR
from glint_track.engine import Precision
from glint_track.errors import GlintTrackError
from glint_track.files import check_writable
from glint_track.glints import METRIC_NAMES
from glint_track.model import GlintUNet, model_shape
from glint_track.training.checkpointer import RNGState, TrainProgress
from glint_track.training.config import DECAY_SHARE, LossWeights, TrainConfig
from glint_track.training.distributed import Distributed
from glint_track.training.epoch import TrainStep
from glint_track.training.graphs import GraphedForward, GraphedStep, whole_step_capturable
from glint_track.training.losses import GlintLoss
from glint_track.training.resume import ResumePlan, describe_changes

log = logging.getLogger(__name__)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    fused = True if device.type == "cuda" else None  # one kernel for all weights on a GPU
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused
    )


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of `epoch` (1-based): a function of the settings alone, with no state of its own,
    so a resume that changes --lr, --epochs or --scheduler applies from its first epoch."""
    if cfg.scheduler == "cosine":  # from --lr down towards 0 over --epochs
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / cfg.epochs))
    if cfg.scheduler == "flat-cosine":  # --lr, then down towards 0 over the last DECAY_SHARE of the epochs
        flat = max(1, cfg.epochs - max(1, round(DECAY_SHARE * cfg.epochs)))  # epoch 1 at --lr
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * max(0, epoch - flat) / (cfg.epochs - flat + 1)))
    if cfg.scheduler == "step":
        return cfg.lr * cfg.step_gamma ** ((epoch - 1) // cfg.step_size)
    return cfg.lr


def augment_share(cfg: TrainConfig, epoch: int) -> float:
    """How much of --augment-strength applies in `epoch`: under --scheduler flat-cosine (the default) it decays with
    the learning rate, so the model sees the frames as recorded while it settles (YOLOX stops its strongest
    augmentation for the last epochs for the same reason); all of it under the other schedules."""
    return lr_at(cfg, epoch) / cfg.lr if cfg.scheduler == "flat-cosine" else 1.0


def set_hyperparameters(optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int) -> float:
    """This epoch's learning rate, weight decay and momentum into every parameter group; returns the lr."""
    lr = lr_at(cfg, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = cfg.weight_decay
        if "momentum" in group:
            group["momentum"] = cfg.momentum
    return lr


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-weight optimizer state tensor its weight's memory layout.

    A checkpoint written from a contiguous model (the research script's, or one trained with
    --no-channels-last) restores contiguous moments; fused GPU optimizers refuse moments whose strides
    differ from a channels_last weight's.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def epoch_metric_names(loss_fn: GlintLoss) -> list[str]:
    """Every metric logged per epoch (what --monitor may name)."""
    terms = loss_fn.term_names()
    losses = [f"{split}_{t}" for split in ("train", "val") for t in terms]
    return losses + [f"val_{m}" for m in METRIC_NAMES] + ["lr", "epoch_time_s", "images_per_s"]


def set_deterministic(enabled: bool) -> bool:
    """Deterministic kernels only (PyTorch raises for an op that has none) and no cuDNN autotuning, so
    the same inputs give the same bits on a GPU too. Returns the previous setting, to restore it."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read when it starts
        torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = enabled
    torch.use_deterministic_algorithms(enabled)
    return previous


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def import_optimizer_machinery() -> threading.Thread:
    """Start importing torch._dynamo, which building any PyTorch optimizer imports (1.0-1.5 s on a CPU, 2.4 s on an
    H200), in a thread: it then overlaps reading the data and starting CUDA, which wait outside the GIL. Join it
    before training_parts. A failure is left for the optimizer's own import to report."""

    def run() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module("torch._dynamo")

    thread = threading.Thread(target=run, name="import torch._dynamo", daemon=True)
    thread.start()
    return thread


def training_parts(
    cfg: TrainConfig, num_glints: int, device: torch.device, plan: ResumePlan | None
) -> tuple[dict[str, Any], Precision, GlintLoss]:
    """The stateful parts of training (model, optimizer, grad scaler, RNG, progress; what a checkpoint holds),
    the precision and the loss; on resume, restored from the checkpoint. Everything that can refuse a
    setting or a checkpoint does so here, before a run exists."""
    seed_everything(cfg.seed)
    precision = Precision.resolve(cfg.precision, device, cfg.channels_last)
    model = GlintUNet(num_glints, cfg.base_channels).to(device)  # its state_dict is what checkpoints hold
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = GlintLoss(cfg.loss, cfg.loss_weights())
    optimizer = build_optimizer(cfg, model, device)
    progress = TrainProgress(cfg.monitor, cfg.monitor_mode)
    parts = {
        "model": model,
        "optimizer": optimizer,
        "scaler": precision.scaler,
        "rng": RNGState(),
        "progress": progress,
    }
    known = epoch_metric_names(loss_fn)
    if cfg.monitor not in known:
        raise GlintTrackError(
            f"--monitor {cfg.monitor!r} is not a metric of this run; choose one of: {', '.join(known)}"
        )
    if plan:
        restore_state(plan, parts, num_glints)
    return parts, precision, loss_fn


#: The file in a run's local folder that names the run whose checkpoints and log it holds.
RUN_MARKER = ".glint-track-run"


def check_output_dir(output_dir: str | None, run_id: str | None = None) -> None:
    """The local folder (or, by default, `runs/`) can be created and written, and holds no other run's files (a
    continued run `run_id` may find its own), or one line says why not."""
    folder = Path(output_dir) if output_dir else RUNS_DIR
    option = f"--output-dir {folder}" if output_dir else f"the default output folder {folder.resolve()}/<run id>"
    if output_dir and folder.is_dir():
        marker = folder / RUN_MARKER
        owner = marker.read_text(errors="replace").strip()[:64] if marker.is_file() else None
        trained = any((folder / name).exists() for name in ("latest_checkpoint.pth", "best_model.pth", "training.log"))
        if (owner and owner != run_id) or (owner is None and trained and run_id is None):
            whose = f"run {owner}'s" if owner else "another training's"
            raise GlintTrackError(
                f"{option} holds {whose} checkpoints and log, which this run would replace; pass another --output-dir"
            )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_writable(folder)
    except OSError as e:
        raise GlintTrackError(
            f"{option} cannot be written ({e.strerror or e}); pass --output-dir with a writable folder"
        ) from e


def restore_state(plan: ResumePlan, parts: dict[str, Any], num_glints: int) -> None:
    """Load the checkpoint into the training parts; what was typed on resume wins over what it holds."""
    cfg, source = plan.cfg, plan.source
    glints = model_shape(source.checkpoint["model_state_dict"], source.label)[0]
    if glints != num_glints:
        raise GlintTrackError(
            f"{source.label}: the checkpoint's model predicts {glints} glints but {cfg.h5} has {num_glints} glint "
            f"channels; train on data with {glints} glints, or a new model (without --resume/--init-from)"
        )
    if plan.weights_only:  # --init-from: the weights alone; optimizer, epoch and progress start afresh
        restore({"model": parts["model"]}, source.checkpoint, source.label)
        log.info("starting from the weights of %s (fresh optimizer, warmed up over epoch 1)", source.label)
        plan.fresh_optimizer = True
        return
    restorable = dict(parts)
    if "optimizer" in plan.changed:
        log.warning(
            "--optimizer changed from %s to %s: it starts afresh at --lr %g", *plan.changed["optimizer"], cfg.lr
        )
        del restorable["optimizer"]
    missing = restore(restorable, source.checkpoint, source.label)
    plan.fresh_optimizer = "optimizer" in missing or "optimizer" in plan.changed
    loss_changed = any(name in plan.changed for name in ("loss", *(f.name for f in fields(LossWeights))))
    if loss_changed and cfg.monitor.endswith("loss"):
        log.warning(
            "the loss changed, so %s values before and after are not comparable: the best checkpoint starts afresh",
            cfg.monitor,
        )
        parts["progress"].best_value = parts["progress"].best_epoch = None
    optimizer = parts["optimizer"]
    for group in optimizer.param_groups:  # this process's implementation (fused on a GPU), not the saving one's
        group.update(
            {
                k: optimizer.defaults[k]
                for k in ("fused", "foreach", "capturable", "differentiable")
                if k in optimizer.defaults
            }
        )
    match_state_layout(optimizer)
    check_optimizer_fits(optimizer, source.label)
    if "optimizer" in missing:
        log.warning(
            "%s has no optimizer state (saved with --no-save-optimizer): weights, epoch and metrics are restored, "
            "a fresh %s optimizer starts at --lr %g",
            source.label,
            cfg.optimizer,
            cfg.lr,
        )
    if plan.changed:
        log.info(
            "resumed with settings typed on the command line: %s (they apply from epoch %d)",
            describe_changes(plan.changed),
            plan.start_epoch,
        )


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: GlintLoss,
    precision: Precision,
    ddp: Distributed,
    device: torch.device,
    cfg: TrainConfig,
) -> TrainStep:
    """What trains on each batch: the model, wrapped by DDP under torchrun and compiled with --compile, and the
    optimizer. On one GPU with --cuda-graphs (the default without --compile) the whole step is replayed from a
    CUDA graph, or only the model's forward and backward where the update cannot be captured (fp16's loss
    scaling, SGD). Checkpoints keep the plain model's state_dict."""
    if ddp.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        return TrainStep(torch.compile(model), loss_fn, precision, optimizer)
    if cfg.cuda_graphs and device.type == "cuda" and not ddp.enabled:  # DDP's gradient hooks run between kernels
        if whole_step_capturable(optimizer, precision):
            return GraphedStep(model, loss_fn, precision, optimizer, cfg.batch_size)
        return TrainStep(GraphedForward(model, cfg.batch_size), loss_fn, precision, optimizer)
    return TrainStep(model, loss_fn, precision, optimizer)
