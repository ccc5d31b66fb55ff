"""The training loop, top to bottom: settings → data → model → epochs (the MLflow run opening beside the first)
→ logged model.

Read `train()` from start to end to see everything a run does; each step it takes lives in a module of
its own (training.parts, training.epoch, training.opening, training.tracked_run, data.batches, tracking). Nothing here
imports MLflow: a new run's first step does not wait for it (training.opening).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from glint_track.engine import Precision, resolve_device
from glint_track.errors import GlintTrackError
from glint_track.glints import GlintMetrics, Glints
from glint_track.model import count_parameters
from glint_track.text import px
from glint_track.tracking.local_store import check_local_store
from glint_track.training.checkpointer import TrainProgress
from glint_track.training.config import TrainConfig
from glint_track.training.distributed import Distributed
from glint_track.training.epoch import TrainStep, Validation, train_epoch, validate
from glint_track.training.opening import RunOpening
from glint_track.training.parts import (
    check_output_dir,
    import_optimizer_machinery,
    set_deterministic,
    set_hyperparameters,
    train_step,
    training_parts,
)
from glint_track.training.preview import Preview
from glint_track.training.resume import ResumePlan, plan_init, plan_resume
from glint_track.training.stopping import StopRequest, TrainingStopped
from glint_track.training.training_data import TrainingData, training_data

if TYPE_CHECKING:
    from glint_track.training.tracked_run import TrackedRun

log = logging.getLogger(__name__)

#: Under DDP, ranks agree on a stop request every this many steps (a collective; every step would stall GPUs).
STOP_CHECK_EVERY = 16
#: How soon a background thread (opening the run, writing checkpoints) hands the GIL back to the training thread
#: while training, instead of Python's 5 ms: every PyTorch call releases the GIL and takes it back, and a GPU step
#: is a few such calls of microseconds each, which would otherwise wait up to 5 ms each while MLflow is imported.
SWITCH_INTERVAL_S = 0.0002


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
    by_group: dict[str, dict[str, float]] | None = None  # those metrics per held-out group (participant)

    @classmethod
    def of(
        cls, run: TrackedRun, progress: TrainProgress, glints: dict[str, float] | None, spool: Path | None
    ) -> TrainResult:
        cfg = run.cfg
        return cls(
            run.tracker.run_id,
            run.tracker.experiment_id,
            run.tracker.tracking_uri,
            cfg.epochs,
            progress.best_value,
            progress.best_epoch,
            cfg.monitor,
            run.output_dir,
            glints,
            spool,
            run.by_group,
        )


def train(
    cli_cfg: TrainConfig, explicit: frozenset[str] = frozenset(), launched: float | None = None
) -> TrainResult | None:
    """Train as `cli_cfg` says; on --resume, settings not in `explicit` come from the checkpoint.
    Under torchrun, every rank trains and rank 0 alone tracks and saves (the others return None).
    `launched`: when the command started (time.time()), for the first epoch's line to say how long the start took."""
    optimizer_imports = import_optimizer_machinery()  # beside reading the data and starting CUDA
    check_local_store()  # a store that cannot be written: one line now, before a resume reads the run or data loads
    cfg, plan = settings(cli_cfg, explicit)
    device = resolve_device(cfg.device)
    ddp = Distributed.from_env(device)  # rank 0 of 1 unless started by torchrun
    device = ddp.device(device)
    if not ddp.is_main:
        logging.getLogger("glint_track").setLevel(logging.WARNING)  # rank 0 reports for all
    opening = RunOpening() if ddp.is_main else None  # rank 0's run; every line from here goes to its training.log
    stop, was_deterministic, switch_interval = StopRequest(), None, sys.getswitchinterval()
    status, glints = "FAILED", None
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        td = training_data(cfg, plan, ddp, device)
        cfg = td.cfg  # with the choices made from the data (the split, passes per epoch), as the run records them
        optimizer_imports.join()
        parts, precision, loss_fn = training_parts(cfg, td.data.num_glints, device, plan)  # restored on resume
        model, optimizer, progress = parts["model"], parts["optimizer"], parts["progress"]
        step = train_step(model, optimizer, loss_fn, precision, ddp, device, cfg)
        if opening is not None:
            # before a run exists: a folder we cannot write, or another run's, is exit 2, not a run
            check_output_dir(cfg.output_dir, plan.source.run_id if plan and plan.same_run else None)
            # every input is checked: the run is opened (MLflow imported, store opened, run described) beside epoch 1
            announce = log_start(cfg, plan, td, ddp, model, precision, device)
            opening.prepare(cfg, plan, td.data, ddp, device, progress.best_epoch, announce)
            if plan is not None and plan.same_run:  # claimed before training: a run another process holds is refused
                opening.take()
        stop.install()  # SIGTERM / SIGINT from here on: finish the step in flight, keep the last checkpoint, KILLED
        was_deterministic = set_deterministic(cfg.deterministic)
        between_steps = BetweenSteps(opening, ddp, stop, launched)
        preview = Preview(model, td.data, td.truth, td.val_idx, precision, device, cfg.threshold, cfg.match_radius)
        last: Validation | None = None  # the latest epoch's: what the logged model scores, if it is the best
        for epoch in range(plan.start_epoch if plan else 1, cfg.epochs + 1):
            stop.check(ddp.agree)
            warm_up = plan is not None and plan.fresh_optimizer and epoch == plan.start_epoch
            metrics, last = fit_epoch(epoch, cfg, step, td, ddp, between_steps, warm_up)
            check_finite(metrics, epoch, cfg, opening)  # before anything of this epoch is kept
            is_best = progress.update(epoch, metrics)
            line = (epoch, cfg.epochs, metrics, is_best, between_steps.start_up())
            if opening is not None:  # the run, waited for if it is still opening
                run = opening.take()
                run.save_epoch(parts, epoch, metrics, is_best, preview)
                run.writer.submit(log_epoch, *line)  # once its checkpoint and metrics are in: a printed epoch is kept
            else:
                log_epoch(*line)
        stop.check(ddp.agree)  # a stop asked for during the last epoch: its model is logged on resume
        if opening is not None:
            finishing = plan is not None and plan.finishing
            reuse = last if last is not None and last.epoch == progress.best_epoch else None  # the model holds them
            glints = opening.take().log_best_model(
                model, td.val_batches, loss_fn, precision, preview, finishing, reuse, td.val_groups
            )
        status = "FINISHED"
    except (TrainingStopped, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        stop.restore()
        sys.setswitchinterval(switch_interval)
        if was_deterministic is not None:
            set_deterministic(was_deterministic)
        ddp.close(finished=status == "FINISHED")
        spool = opening.close(status) if opening is not None else None
    if opening is None:
        return None
    return TrainResult.of(opening.take(), progress, glints, spool)


def fit_epoch(
    epoch: int,
    cfg: TrainConfig,
    step: TrainStep,
    td: TrainingData,
    ddp: Distributed,
    between_steps: BetweenSteps,
    warm_up: bool = False,
) -> tuple[dict[str, float], Validation | None]:
    """Train one epoch and validate it; returns what is logged for it (at step = epoch) and, on one process, the
    validation (under DDP each rank validates a share). `warm_up`: the learning rate rises over the epoch (a fresh
    optimizer on trained weights)."""
    lr = set_hyperparameters(step.optimizer, cfg, epoch)
    td.train_batches.set_epoch(epoch)
    t0 = time.perf_counter()
    train_terms = train_epoch(
        step, td.train_batches, desc=f"epoch {epoch} train", after_step=between_steps, reduce=ddp.sum, warm_up=warm_up
    )
    images_per_s = td.train_count * cfg.passes_per_epoch / (time.perf_counter() - t0)
    between_steps.epoch_trained()
    glint_metrics = GlintMetrics(td.data.num_glints, cfg.match_radius)
    predictions: list[tuple[Glints, Glints]] = []
    val_terms = validate(
        step.model,
        td.val_shard,
        step.loss_fn,
        step.precision,
        glint_metrics,
        td.truth,
        cfg.threshold,
        desc=f"epoch {epoch} val",
        reduce=ddp.sum if ddp.enabled else None,
        gather=ddp.gather_rows,
        predictions=None if ddp.enabled else predictions,
    )
    metrics = {f"train_{k}": v for k, v in train_terms.items()} | {f"val_{k}": v for k, v in val_terms.items()}
    metrics |= {"lr": lr, "epoch_time_s": time.perf_counter() - t0, "images_per_s": images_per_s}
    return metrics, None if ddp.enabled else Validation(epoch, val_terms, predictions)


def check_finite(metrics: dict[str, float], epoch: int, cfg: TrainConfig, opening: RunOpening | None) -> None:
    """A loss that is not a number stops the training before its epoch is saved: the weights it leaves are no model,
    and the last checkpoint (the epoch before) stays the run's newest, to resume from with a lower --lr."""
    bad = [k for k in ("train_loss", "val_loss") if not math.isfinite(metrics[k])]
    if not bad:
        return
    run = opening.run.tracker.run_id if opening is not None and opening.run is not None else None
    lower = min(cfg.lr / 10, TrainConfig.lr)
    resume = (
        f"the checkpoint of epoch {epoch - 1} is kept: resume from it with --resume {run} --lr {lower:g}"
        if run and epoch > 1
        else f"train again with --lr {lower:g}"
    )
    raise GlintTrackError(
        f"the {bad[0].replace('_', ' ')} became {metrics[bad[0]]} in epoch {epoch}: --lr {cfg.lr:g} is too high for "
        f"this data (or the loss weights are): {resume}"
    )


def settings(cli_cfg: TrainConfig, explicit: frozenset[str]) -> tuple[TrainConfig, ResumePlan | None]:
    """The command line's settings, or on --resume the checkpoint's overlaid by what was typed (refusing
    what cannot apply; AlreadyFinished when nothing is left to do)."""
    plan = None
    source = cli_cfg.init_from or cli_cfg.resume
    if source and not Path(source).is_file():  # a run is read: from a store that exists (none is created for it)
        from glint_track.tracking.server import require_local_store

        require_local_store()
    if cli_cfg.init_from:  # a fine-tuning: the model's weights, from the tracking store or a file
        from glint_track.tracking.server import open_tracking_store

        open_tracking_store()
        plan = plan_init(cli_cfg, explicit)
    elif cli_cfg.resume and Path(cli_cfg.resume).is_file():  # a new run from a file: checked before any store is opened
        plan = plan_resume(cli_cfg, explicit)
    elif cli_cfg.resume:  # the checkpoint comes from the tracking store: it is opened first (MLflow imported)
        from glint_track.tracking.server import open_tracking_store
        from glint_track.tracking.sync import send_spool_if_pending

        open_tracking_store()
        if os.environ.get("RANK", "0") == "0":  # what a killed process left in its spool reaches the run first
            send_spool_if_pending(cli_cfg.run_folder(cli_cfg.resume) / "spool")
        plan = plan_resume(cli_cfg, explicit)
    cfg = plan.cfg if plan else cli_cfg
    cfg.validate()
    return cfg, plan


class BetweenSteps:
    """What runs between training steps: releasing the checkpoint writer once the GPU has work queued,
    giving up a run another process took over, and the stop check (under DDP every rank agrees, at the
    same step)."""

    def __init__(self, opening: RunOpening | None, ddp: Distributed, stop: StopRequest, launched: float | None) -> None:
        self.opening, self.ddp, self.stop = opening, ddp, stop
        self.launched = launched  # when the command started (time.time()), if known
        self.first_step: float | None = None  # when this process launched its first training step
        self.reported = False

    def start_up(self) -> float | None:
        """Seconds from the command's start to its first training step, once (the first epoch's line says it)."""
        if self.reported or self.launched is None or self.first_step is None:
            return None
        self.reported = True
        return self.first_step - self.launched

    def __call__(self, step: int) -> None:
        if self.first_step is None:
            self.first_step = time.time()
        if self.opening is not None:
            self.opening.check()  # what failed while opening the run stops training now; an open run is taken
            run = self.opening.run
            if step == 1 and run is not None:
                run.writer.release()  # the last epoch's files are written once the GPU has work queued
            if run is not None and run.lease is not None and run.lease.lost:
                raise GlintTrackError(f"run {run.tracker.run_id} was taken over by another process; this one stopped")
        if not self.ddp.enabled or step % STOP_CHECK_EVERY == 0:
            self.stop.check(self.ddp.agree)

    def epoch_trained(self) -> None:
        if self.opening is not None and self.opening.run is not None:
            self.opening.run.writer.release()  # an epoch of fewer than two steps


def log_start(
    cfg: TrainConfig,
    plan: ResumePlan | None,
    td: TrainingData,
    ddp: Distributed,
    model: torch.nn.Module,
    precision: Precision,
    device: torch.device,
) -> Callable[[TrackedRun], None]:
    """The line on what is trained, where and from which epoch, logged once the run exists (beside epoch 1)."""
    data, groups = td.data, td.val_groups
    held_out = f" (held out: {len(set(groups))} of {len(set(data.groups or ()))} groups)" if groups else ""
    passes = f", {cfg.passes_per_epoch} passes an epoch" if cfg.passes_per_epoch > 1 else ""
    augment = (
        f", augmented (strength {cfg.augment_strength:g}, {td.train_batches.augmenter.frames:.0%} of frames)"
        if cfg.augment
        else ""
    )
    what = (
        f"{td.train_count} train / {len(td.val_idx)} val images{held_out} {'×'.join(map(str, data.image_size))}"
        f"{passes}{augment}, "
        f"{data.num_glints} glints, {count_parameters(model):,} parameters, {cfg.loss} loss, {precision.name} on "
        f"{device}{f' × {ddp.world_size} ranks' if ddp.enabled else ''} (data "
        f"{'on the device' if td.resident else f'streamed by {cfg.num_workers} workers'}"
        f"{', from the cache' if data.from_cache else ''}), epochs {plan.start_epoch if plan else 1}→{cfg.epochs}"
    )

    def announce(run: TrackedRun) -> None:
        log.info("run %s: %s", run.tracker.run_id, what)
        if plan and plan.finishing:
            log.info(
                "run %s has finished all %d epochs but was stopped before its model was logged: logging it now",
                plan.source.run_id,
                cfg.epochs,
            )

    return announce


def log_epoch(
    epoch: int, epochs: int, metrics: dict[str, float], is_best: bool, start_up_s: float | None = None
) -> None:
    """The epoch's line; the first epoch's says how long the command took to launch its first training step."""
    log.info(
        "epoch %d/%d  train_loss %.5f  val_loss %.5f  val_f1 %.3f  val_err %s  lr %.3g  %.1f img/s  %.1fs%s%s",
        epoch,
        epochs,
        metrics["train_loss"],
        metrics["val_loss"],
        metrics["val_f1"],
        px(metrics["val_loc_err_mean"]),
        metrics["lr"],
        metrics["images_per_s"],
        metrics["epoch_time_s"],
        "  (best)" if is_best else "",
        f"  (first step launched {start_up_s:.2f} s after the command started)" if start_up_s is not None else "",
    )
