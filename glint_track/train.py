"""The training loop, top to bottom: config → data → model → resume → epochs → MLflow.

Read `train()` from start to end to see everything a run does; each piece it calls lives in its own
module (data, model, losses, checkpoint, tracking).
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from glint_track import __version__
from glint_track.checkpoint import (
    BEST, LATEST, Checkpointer, RNGState, TrainProgress, load_checkpoint, restore, save_and_digest, save_atomic,
)
from glint_track.checkpoint_schema import check_optimizer_fits
from glint_track.config import TrainConfig
from glint_track.background import BackgroundWriter
from glint_track.distributed import Distributed
from glint_track.data import MIN_BATCH, Batches, GlintData, default_cache_dir, load_glint_file, make_batches, place, split_indices
from glint_track.errors import GlintTrackError
from glint_track.files import os_reason
from glint_track.losses import GlintLoss, LossWeights
from glint_track.save_process import SaveProcess
from glint_track.save_process import wanted as save_process_wanted
from glint_track.figures import heatmap_panel, threshold_curves, validation_grid
from glint_track.metrics import METRIC_NAMES, GlintMetrics, Glints, decode, ground_truth
from glint_track.model import GlintUNet, count_parameters, model_shape
from glint_track.run_log import RunLogHandler
from glint_track.resume import ResumePlan, check_same_data, describe_changes, plan_resume
from glint_track.stopping import StopRequest, TrainingStopped
from glint_track.tracking import (
    TAG_DATASET_DIGEST, TAG_RESUMED_FROM, RunTracker, check_tracking_server, git_commit, send_spool_if_pending, tracking_uri,
)

log = logging.getLogger(__name__)

#: Under DDP, ranks agree on a stop request every this many steps (a collective; every step would stall GPUs).
STOP_CHECK_EVERY = 16


@dataclass
class TrainResult:
    run_id: str
    experiment_id: str
    tracking_uri: str
    epochs: int
    best_value: float | None
    best_epoch: int | None
    monitor: str
    output_dir: Path
    glints: dict[str, float] | None  # the logged model's validation glint metrics (f1, loc_err_mean, …)
    spool: Path | None = None  # tracking calls the server has not received yet (see `glint-track sync`)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise GlintTrackError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GlintTrackError(f"--device {name}: no CUDA GPU is available here; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GlintTrackError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here; use cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    return device


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    fused = True if device.type == "cuda" else None  # one kernel for all weights on a GPU
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of `epoch` (1-based): a function of the settings alone, with no state of its own,
    so a resume that changes --lr, --epochs or --scheduler applies from its first epoch."""
    if cfg.scheduler == "cosine":  # from --lr down towards 0 over --epochs
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / cfg.epochs))
    if cfg.scheduler == "step":
        return cfg.lr * cfg.step_gamma ** ((epoch - 1) // cfg.step_size)
    return cfg.lr


def set_hyperparameters(optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int) -> float:
    """This epoch's learning rate, weight decay and momentum into every parameter group; returns the lr."""
    lr = lr_at(cfg, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = cfg.weight_decay
        if "momentum" in group:
            group["momentum"] = cfg.momentum
    return lr


@dataclass
class Precision:
    """Autocast dtype (None: fp32) and the gradient scaler that fp16 needs (a no-op otherwise)."""

    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    channels_last: bool

    @classmethod
    def resolve(cls, name: str, device: torch.device, channels_last: bool) -> Precision:
        """`auto` is bf16 where the hardware computes it natively (CUDA GPUs from Ampere on, CPUs with
        AVX512-BF16 or AMX: about 1.6× faster on such a CPU), fp32 elsewhere."""
        if name == "auto":
            name = "bf16" if _native_bf16(device) else "fp32"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        return cls(device.type, dtype, scaler, channels_last)

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)


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


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu_checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the getattr
    return device.type == "cpu" and any(getattr(torch.cpu, check, lambda: False)() for check in cpu_checks)


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


def run_epoch(
    model: torch.nn.Module,
    batches: Batches,
    loss_fn: GlintLoss,
    precision: Precision,
    optimizer: torch.optim.Optimizer | None,
    desc: str,
    glints: tuple[GlintMetrics, Glints, float] | None = None,
    after_step: Callable[[int], None] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """One pass over `batches`; trains when given an optimizer. Returns the sample-weighted mean of each
    loss term, and with `glints` = (metrics, ground truth of every sample, threshold) the glint metrics.
    `after_step(step)` runs after each step is launched (the stop check, releasing the writer);
    `reduce` sums the loss totals over DDP ranks, so every rank reports the mean over all samples.

    Everything is accumulated on the device and read once at the end, so no step waits for the host.
    """
    training = optimizer is not None
    model.train(training)
    sums: dict[str, torch.Tensor] = {}
    count = 0
    with torch.set_grad_enabled(training):
        for step, (images, targets, index) in enumerate(tqdm(batches, desc=desc, leave=False, disable=not sys.stderr.isatty(), unit="batch")):
            if precision.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with precision.autocast():
                logits = model(images)
            terms = loss_fn(logits, targets)
            if training:
                optimizer.zero_grad(set_to_none=True)
                precision.scaler.scale(terms["loss"]).backward()
                precision.scaler.step(optimizer)
                precision.scaler.update()
            elif glints is not None:
                metrics, truth, threshold = glints
                metrics.update(decode(logits, threshold), truth.take(index))
            n = images.shape[0]
            for name, value in terms.items():
                sums[name] = sums.get(name, 0) + value.detach() * n
            count += n
            if after_step is not None:
                after_step(step)
    names = list(sums)
    totals = torch.stack([sums[n].float() for n in names] + [torch.tensor(float(count), device=sums[names[0]].device)])
    totals = (reduce(totals) if reduce is not None else totals).tolist()
    result = {name: total / totals[-1] for name, total in zip(names, totals)}
    return result | (glints[0].compute() if glints is not None else {})


def predict_samples(
    model: torch.nn.Module, data: GlintData, index: torch.Tensor, precision: Precision, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images N×1×H×W, logits) for a few samples, for pictures."""
    model.eval()
    images = (data.images[index].unsqueeze(1).float() / 255.0).to(device)
    with torch.no_grad(), precision.autocast():
        logits = model(images.contiguous(memory_format=torch.channels_last) if precision.channels_last else images)
    return images, logits.float()


def infer(model: torch.nn.Module, batches: Batches, precision: Precision) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits, sample indices) of each batch, in eval mode without gradients."""
    model.eval()
    for images, _, index in batches:
        if precision.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), precision.autocast():  # closed before yielding: the caller's grad mode is its own
            logits = model(images)
        yield logits, index


def threshold_sweep(
    model: torch.nn.Module, batches: Batches, precision: Precision, truth: Glints, num_glints: int, match_radius: float
) -> dict[str, list[float]]:
    """Precision, recall and F1 at detection thresholds 0.05 … 0.95 over the validation set."""
    preds, truths = [], []
    for logits, index in infer(model, batches, precision):
        preds.append(decode(logits, 0.5))
        truths.append(truth.take(index))
    xy, score = torch.cat([p.xy for p in preds]), torch.cat([p.score for p in preds])
    gt = Glints(torch.cat([t.xy for t in truths]), torch.cat([t.score for t in truths]), torch.cat([t.present for t in truths]))
    curves: dict[str, list[float]] = {"threshold": [], "precision": [], "recall": [], "f1": []}
    for t in np.round(np.arange(0.05, 0.96, 0.05), 2):
        metrics = GlintMetrics(num_glints, match_radius)
        metrics.update(Glints(xy, score, score >= t), gt)
        result = metrics.compute()
        curves["threshold"].append(float(t))
        for k in ("precision", "recall", "f1"):
            curves[k].append(result[k])
    return curves


def train(cli_cfg: TrainConfig, explicit: frozenset[str] = frozenset()) -> TrainResult | None:
    """Train as `cli_cfg` says; on --resume, settings not in `explicit` come from the checkpoint.
    Under torchrun, every rank trains and rank 0 alone tracks and saves (the others return None)."""
    # -- settings: the command line, or the resumed checkpoint's overlaid by what was typed ---------
    check_tracking_server()
    plan: ResumePlan | None = None
    if cli_cfg.resume:
        if os.environ.get("RANK", "0") == "0":  # what a killed process left in its spool reaches the run first
            send_spool_if_pending(Path(cli_cfg.output_dir or Path("runs") / cli_cfg.resume) / "spool")
        plan = plan_resume(cli_cfg, explicit)  # refuses what cannot apply; AlreadyFinished when nothing is left
    cfg = plan.cfg if plan else cli_cfg
    cfg.validate()
    start_epoch = plan.start_epoch if plan else 1
    device = resolve_device(cfg.device)
    ddp = Distributed.from_env(device)  # rank 0 of 1 unless started by torchrun
    device = ddp.device(device)
    if not ddp.is_main:
        logging.getLogger("glint_track").setLevel(logging.WARNING)  # rank 0 reports for all

    # -- data: validated before anything is started, then kept on the device when it fits ------------
    cache_dir = (Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()) if cfg.cache else None
    data = load_glint_file(cfg.h5, cache_dir)
    if plan:
        check_same_data(plan, data.digest)
    train_idx, val_idx = split_indices(data.num_samples, cfg.val_split, cfg.seed)
    if len(train_idx) // ddp.world_size < MIN_BATCH:
        raise GlintTrackError(f"{len(train_idx)} training samples cannot be shared by {ddp.world_size} GPUs with at least "
                              f"{MIN_BATCH} each (BatchNorm needs them); use fewer GPUs or more data")
    if device.type == "cuda" and not cfg.deterministic:
        torch.backends.cudnn.benchmark = True  # picks the fastest convolution kernels by timing them
    data, resident = place(data, device)
    truth = ground_truth(data.points, data.present, data.heatmaps).to(data.images.device)
    preview_index = torch.as_tensor(val_idx[:8], dtype=torch.long, device=data.images.device)  # pictured every time
    train_batches = make_batches(data, train_idx, cfg.batch_size, True, cfg.seed, device, cfg.num_workers, resident, ddp.shard)
    val_batches = make_batches(data, val_idx, cfg.batch_size, False, cfg.seed, device, cfg.num_workers, resident)

    # -- model, loss, optimisation (restored from the checkpoint on resume) ----------------------------
    parts, precision, loss_fn = training_parts(cfg, data.num_glints, device, plan)
    model, optimizer, progress = parts["model"], parts["optimizer"], parts["progress"]
    step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if ddp.enabled else model
    step_model = torch.compile(step_model) if cfg.compile else step_model

    # -- the MLflow run (rank 0 only): new, continued, or the one `mlflow run` started ----------------
    if ddp.is_main:
        check_output_dir(cfg.output_dir)  # before a run exists: a folder we cannot write is exit 2, not a FAILED run
    stop = StopRequest()
    stop.install()  # SIGTERM / SIGINT from here on: finish the step in flight, keep the last checkpoint, KILLED
    was_deterministic = set_deterministic(cfg.deterministic)
    run: TrackedRun | None = None
    status, glints = "FAILED", None

    def between_steps(step: int) -> None:
        if step == 1 and run is not None:
            run.writer.release()  # the last epoch's files are written once the GPU has work queued
        if run is not None and run.lease is not None and run.lease.lost:
            raise GlintTrackError(f"run {run.tracker.run_id} was taken over by another process; this one stopped")
        if not ddp.enabled or step % STOP_CHECK_EVERY == 0:  # under DDP every rank must agree, at the same step
            stop.check(ddp.any if ddp.enabled else None)

    try:
        run = TrackedRun.open(cfg, plan, data, ddp, device) if ddp.is_main else None  # a failure here marks it FAILED
        log.info(
            "run %s: %d train / %d val images %s, %d glints, %s parameters, %s loss, %s on %s%s (data %s), epochs %d→%d",
            run.tracker.run_id if run else "-", len(train_idx), len(val_idx), "×".join(map(str, data.image_size)), data.num_glints,
            f"{count_parameters(model):,}", cfg.loss, precision.name, device, f" × {ddp.world_size} ranks" if ddp.enabled else "",
            ("on the device" if resident else f"streamed by {cfg.num_workers} workers") + (", from the cache" if data.from_cache else ""),
            start_epoch, cfg.epochs,
        )
        if run is not None:
            run.complete_resumed(progress)
        if plan and plan.finishing:
            log.info("run %s has finished all %d epochs but was stopped before its model was logged: logging it now", plan.source.run_id, cfg.epochs)

        # -- the epochs -------------------------------------------------------------------------------
        for epoch in range(start_epoch, cfg.epochs + 1):
            stop.check(ddp.any if ddp.enabled else None)
            lr = set_hyperparameters(optimizer, cfg, epoch)
            train_batches.set_epoch(epoch)
            t0 = time.perf_counter()
            train_terms = run_epoch(step_model, train_batches, loss_fn, precision, optimizer, f"epoch {epoch} train",
                                    after_step=between_steps, reduce=ddp.sum)
            train_time = time.perf_counter() - t0
            if run is not None:
                run.writer.release()  # fewer than three steps
            val_glints = (GlintMetrics(data.num_glints, cfg.match_radius), truth, cfg.threshold)
            val_terms = run_epoch(step_model, val_batches, loss_fn, precision, None, f"epoch {epoch} val", val_glints)
            metrics = {f"train_{k}": v for k, v in train_terms.items()} | {f"val_{k}": v for k, v in val_terms.items()}
            metrics |= {"lr": lr, "epoch_time_s": time.perf_counter() - t0, "images_per_s": len(train_idx) / train_time}
            is_best = progress.update(epoch, metrics)
            if run is not None:
                run.writer.hold()  # until the next epoch's first steps are on the GPU (see BackgroundWriter)
                run.checkpointer.save(parts, cfg.to_dict(), epoch, is_best)
                run.writer.submit(run.tracker.log_metrics, metrics, epoch)  # after the checkpoint: a resume never logs a step twice
                if (is_best and cfg.image_every == 0) or (cfg.image_every and epoch % cfg.image_every == 0):
                    images, logits = predict_samples(model, data, preview_index, precision, device)
                    grid = validation_grid(images, decode(logits, cfg.threshold), truth.take(preview_index), cfg.match_radius)
                    run.writer.submit(run.tracker.log_image, grid, f"val_images/epoch_{epoch:03d}.png")
            log.info(
                "epoch %d/%d  train_loss %.5f  val_loss %.5f  val_f1 %.3f  val_err %.2f px  lr %.3g  %.1f img/s  %.1fs%s",
                epoch, cfg.epochs, metrics["train_loss"], metrics["val_loss"], metrics["val_f1"], metrics["val_loc_err_mean"],
                lr, metrics["images_per_s"], metrics["epoch_time_s"], "  (best)" if is_best else "",
            )
        stop.check(ddp.any if ddp.enabled else None)  # a stop asked for during the last epoch: its model is logged on resume
        if run is not None:
            run.writer.flush()
            glints = run.log_best_model(model, val_batches, loss_fn, precision, truth, preview_index, plan is not None and plan.finishing)
        status = "FINISHED"
    except (TrainingStopped, KeyboardInterrupt):
        status = "KILLED"
        if run is not None:
            log.warning("stopped: run %s marked KILLED with the checkpoint of its last finished epoch; resume with --resume %s",
                        run.tracker.run_id, run.tracker.run_id)
        raise
    finally:
        stop.restore()
        set_deterministic(was_deterministic)
        ddp.close()
        spool = run.close(status) if run is not None else None
    if run is None:
        return None
    return TrainResult(
        run.tracker.run_id, run.tracker.experiment_id, tracking_uri(), cfg.epochs, progress.best_value, progress.best_epoch,
        cfg.monitor, run.output_dir, glints, spool,
    )


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
    parts = {"model": model, "optimizer": optimizer, "scaler": precision.scaler, "rng": RNGState(), "progress": progress}
    known = epoch_metric_names(loss_fn)
    if cfg.monitor not in known:
        raise GlintTrackError(f"--monitor {cfg.monitor!r} is not a metric of this run; choose one of: {', '.join(known)}")
    if plan:
        restore_state(plan, parts, num_glints)
    return parts, precision, loss_fn


def check_output_dir(output_dir: str | None) -> None:
    """The local folder (or, by default, `runs/`) can be created and written, or one line says why not."""
    folder = Path(output_dir) if output_dir else Path("runs")
    option = f"--output-dir {folder}" if output_dir else f"the default output folder {folder.resolve()}/<run id>"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".glint-track-write-test-"):
            pass
    except OSError as e:
        raise GlintTrackError(f"{option} cannot be written ({e.strerror or e}); pass --output-dir with a writable folder") from e


def restore_state(plan: ResumePlan, parts: dict[str, Any], num_glints: int) -> None:
    """Load the checkpoint into the training parts; what was typed on resume wins over what it holds."""
    cfg, source = plan.cfg, plan.source
    glints = model_shape(source.checkpoint["model_state_dict"], source.label)[0]
    if glints != num_glints:
        raise GlintTrackError(
            f"{source.label}: the checkpoint's model predicts {glints} glints but {cfg.h5} has {num_glints} glint "
            f"channels; resume with the data it was trained on, or start a new run"
        )
    restorable = dict(parts)
    if "optimizer" in plan.changed:
        log.warning("--optimizer changed from %s to %s: it starts afresh at --lr %g", *plan.changed["optimizer"], cfg.lr)
        del restorable["optimizer"]
    missing = restore(restorable, source.checkpoint, source.label)
    loss_changed = any(name in plan.changed for name in ("loss", *(f.name for f in fields(LossWeights))))
    if loss_changed and cfg.monitor.endswith("loss"):
        log.warning("the loss changed, so %s values before and after are not comparable: the best checkpoint starts afresh", cfg.monitor)
        parts["progress"].best_value = parts["progress"].best_epoch = None
    optimizer = parts["optimizer"]
    for group in optimizer.param_groups:  # this process's implementation (fused on a GPU), not the saving one's
        group.update({k: optimizer.defaults[k] for k in ("fused", "foreach", "capturable", "differentiable") if k in optimizer.defaults})
    match_state_layout(optimizer)
    check_optimizer_fits(optimizer, source.label)
    if "optimizer" in missing:
        log.warning(
            "%s has no optimizer state (saved with --no-save-optimizer): weights, epoch and metrics are restored, "
            "a fresh %s optimizer starts at --lr %g", source.label, cfg.optimizer, cfg.lr,
        )
    if plan.changed:
        log.info("resumed with settings typed on the command line: %s (they apply from epoch %d)",
                 describe_changes(plan.changed), plan.start_epoch)


class TrackedRun:
    """What rank 0 keeps for a run besides training: the MLflow run (with its claim, see lease.py), its
    local folder and log file, the background writer and the checkpointer."""

    def __init__(self, cfg: TrainConfig, plan: ResumePlan | None, data: GlintData, tracker: RunTracker,
                 save_process: SaveProcess | None) -> None:
        self.cfg, self.plan, self.data, self.tracker = cfg, plan, data, tracker
        self.lease = tracker.lease
        self.same_run = plan is not None and plan.same_run
        self.output_dir = Path(cfg.output_dir or Path("runs") / tracker.run_id)
        cfg.output_dir = str(self.output_dir)
        cfg.experiment = tracker.experiment_name  # `mlflow run` may have chosen it
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = self.output_dir / "training.log"
        self.file_handler = RunLogHandler(self.log_file)
        package_log = logging.getLogger("glint_track")
        package_log.addHandler(self.file_handler)
        if package_log.getEffectiveLevel() > logging.INFO:  # the run's log artifact always has the epoch lines
            package_log.setLevel(logging.INFO)
        resume = plan.source if plan else None
        if self.same_run and resume.best and not (self.output_dir / BEST).exists():
            save_atomic(resume.best, self.output_dir / BEST)
        self.writer = BackgroundWriter()  # checkpoint files, uploads and metrics, off the training thread
        model_info = {"num_glints": data.num_glints, "base_channels": cfg.base_channels, "image_size": list(data.image_size)}
        self.save_process = save_process  # torch.save off the training GIL (see save_process.py)
        self.checkpointer = Checkpointer(self.output_dir, tracker, cfg.save_optimizer, cfg.save_freq, cfg.keep_last_n,
                                         self.writer, model_info, resume.published if self.same_run else None,
                                         self.save_process or save_and_digest)
        tracker.spool_to(self.output_dir / "spool")  # where calls go while the tracking server is unreachable

    @classmethod
    def open(cls, cfg: TrainConfig, plan: ResumePlan | None, data: GlintData, ddp: Distributed, device: torch.device) -> TrackedRun:
        """Start (or continue) the run and log what describes it. From here on every failure marks it FAILED."""
        save_process = SaveProcess() if save_process_wanted(device) else None  # a wrong setting: exit 2, no run
        continued = plan.source.run_id if plan and plan.same_run else None
        tracker = RunTracker.start(cfg.experiment, cfg.run_name, continued, cfg.system_metrics)
        try:
            run = cls(cfg, plan, data, tracker, save_process)
        except BaseException as e:
            tracker.finish("FAILED", wait_s=0)
            if isinstance(e, OSError):
                raise GlintTrackError(f"setting up the output folder failed ({e}); run {tracker.run_id} is marked FAILED: "
                                      f"pass --output-dir with a writable folder") from e
            raise
        try:
            run.describe(ddp)
        except BaseException:
            run.close("FAILED")
            raise
        return run

    def describe(self, ddp: Distributed) -> None:
        """Params, tags and the dataset; on a continued run, what changed and from which epoch."""
        cfg, plan, data, tracker = self.cfg, self.plan, self.data, self.tracker
        start = plan.start_epoch if plan else 1
        if plan and not plan.same_run:
            tracker.set_tags({TAG_RESUMED_FROM: plan.source.label})
        tracker.log_config(cfg.to_dict() | {"world_size": ddp.world_size, "global_batch_size": cfg.batch_size * ddp.world_size}, start)
        if self.same_run and plan.changed:
            tracker.add_history(f"Resumed at epoch {start} with {describe_changes(plan.changed)}.")
        tags = {
            "glint_track.dataset.path": str(data.path.resolve()),
            "glint_track.dataset.samples": data.num_samples,
            TAG_DATASET_DIGEST: data.digest,
            "glint_track.dataset.glints": data.num_glints,
            "glint_track.version": __version__,
        }
        if commit := git_commit():
            tags["mlflow.source.git.commit"] = commit
        tracker.set_tags(tags)
        tracker.log_dataset(data)

    def complete_resumed(self, progress: TrainProgress) -> None:
        """Finish what a process killed while saving its last checkpoint left undone."""
        if not self.same_run:
            return
        resume = self.plan.source
        checkpoint, done = resume.checkpoint, int(resume.checkpoint["epoch"])
        metrics = {k: v for k, v in (checkpoint.get("metrics") or {}).items() if isinstance(v, (int, float))}
        if metrics and done not in self.tracker.metric_steps("train_loss"):
            self.tracker.log_metrics(metrics, done)
        best_is_this = progress.best_epoch == done and (resume.best is None or int(resume.best["epoch"]) != done)
        self.checkpointer.complete(checkpoint, best_is_this)

    def log_best_model(
        self, model: torch.nn.Module, val_batches: Batches, loss_fn: GlintLoss, precision: Precision, truth: Glints,
        preview_index: torch.Tensor, finishing: bool,
    ) -> dict[str, float]:
        """The logged weights' validation metrics, heat-maps and threshold curves, the model itself, and the
        run's description led by its glint result. Returns those metrics (with the epoch they come from)."""
        cfg, data, tracker = self.cfg, self.data, self.tracker
        device = data.images.device
        best_file = self.output_dir / BEST
        chosen = load_checkpoint(best_file if best_file.exists() else self.output_dir / LATEST)
        model.load_state_dict(chosen["model_state_dict"])
        epoch = int(chosen["epoch"])
        glints = run_epoch(model, val_batches, loss_fn, precision, None, "best val",
                           (GlintMetrics(data.num_glints, cfg.match_radius), truth, cfg.threshold))
        if not (finishing and epoch in tracker.metric_steps("best_val_loss")):
            tracker.log_metrics({f"best_val_{k}": v for k, v in glints.items()}, step=epoch)
        tracker.summarise(glint_summary(glints, epoch, cfg.epochs))
        images, logits = predict_samples(model, data, preview_index[:4], precision, device)
        tracker.log_image(heatmap_panel(images, logits), "figures/heatmaps_best.png")
        curves = threshold_sweep(model, val_batches, precision, truth, data.num_glints, cfg.match_radius)
        tracker.log_dict(curves, "figures/threshold_curves.json")
        tracker.log_image(threshold_curves(curves["threshold"], curves["precision"], curves["recall"], curves["f1"]),
                          "figures/threshold_curves.png")
        if not (finishing and tracker.has_complete_model()):  # a stopped process may have logged it already
            tracker.log_model(best_file if best_file.exists() else self.output_dir / LATEST, data.image_size, cfg.register_model)
        return glints | {"epoch": epoch}

    def close(self, status: str) -> Path | None:
        """Send everything still queued, upload the log, end the run; returns the spool folder if the
        tracking server has not received everything. Any failure here makes the run FAILED."""
        try:
            self.writer.close()  # a run never ends with a checkpoint or metric still unsent
        except Exception as e:
            log.error("saving the last checkpoint or metrics failed (%s)", e.format_message() if isinstance(e, GlintTrackError) else os_reason(e))
            status = "FAILED"
        finally:
            if self.save_process is not None:
                self.save_process.close()
        logging.getLogger("glint_track").removeHandler(self.file_handler)
        self.file_handler.close()
        try:
            if self.log_file.exists():
                self.tracker.log_artifact(self.log_file)
        except Exception as e:
            log.error("uploading the training log failed (%s)", os_reason(e))
            status = "FAILED"
        pending = self.tracker.finish(status, float(os.environ.get("GLINT_TRACK_SYNC_WAIT_S", "60")))
        if not pending:
            return None
        spool = self.tracker.spool.directory
        log.warning(
            "the tracking server at %s did not come back: %d calls for run %s (metrics, checkpoints, its status) "
            "are kept in %s; send them with: glint-track sync %s", tracking_uri(), pending, self.tracker.run_id, spool, spool,
        )
        return spool


def glint_summary(glints: dict[str, float], epoch: int, epochs: int) -> str:
    """What the run page leads with: how well the logged model finds glints."""
    text = (f"**Glints: val F1 {glints['f1']:.3f}, mean error {glints['loc_err_mean']:.2f} px** "
            f"(median {glints['loc_err_median']:.2f} px, precision {glints['precision']:.3f}, recall {glints['recall']:.3f}; "
            f"logged model = epoch {epoch} of {epochs})")
    if glints["f1"] < POOR_F1:
        text += f"\n\n⚠ {POOR_ADVICE}"
    return text


#: Below this validation F1 a run ends with a warning: the model finds few of the glints.
POOR_F1 = 0.5
POOR_ADVICE = ("The model finds few glints. Train longer (--epochs), check the labels with `glint-track inspect FILE "
               "--preview preview.png`, or go back to the default loss and learning rate if you changed them.")
