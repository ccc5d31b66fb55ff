"""The MLflow side of one training, on rank 0: the run, its local folder and log, checkpoints, pictures and
the logged model at the end."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from glint_track import __version__, figures
from glint_track.checkpoint.format import BEST, LATEST, load_checkpoint, save_and_digest, save_atomic
from glint_track.data.batches import Batches
from glint_track.data.glint_file import GlintData
from glint_track.engine import Precision
from glint_track.errors import GlintTrackError
from glint_track.figures import threshold_curves
from glint_track.files import os_reason
from glint_track.glints import GlintMetrics, metrics_by_group, threshold_sweep
from glint_track.text import counted, glint_error
from glint_track.tracking import logged_model
from glint_track.tracking.server import tracking_uri
from glint_track.tracking.tags import (
    TAG_DATASET_DIGEST,
    TAG_DATASET_PATH,
    TAG_EPOCHS,
    TAG_INIT_FROM,
    TAG_INIT_FROM_RUN,
    TAG_LOCAL_COPY,
    TAG_RESUMED_FROM,
    TAG_TRAIN_TIME,
)
from glint_track.tracking.tracker import RunTracker, git_commit
from glint_track.training.background import BackgroundWriter
from glint_track.training.checkpointer import Checkpointer, KeepPolicy
from glint_track.training.config import INVOCATION, TrainConfig
from glint_track.training.distributed import Distributed
from glint_track.training.epoch import Validation, validate
from glint_track.training.losses import GlintLoss
from glint_track.training.parts import RUN_MARKER
from glint_track.training.preview import Preview
from glint_track.training.resume import ResumePlan, describe_changes
from glint_track.training.run_log import RunLogHandler
from glint_track.training.save_process import SaveProcess
from glint_track.training.save_process import wanted as save_process_wanted

log = logging.getLogger(__name__)


class TrackedRun:
    """What rank 0 keeps for a run besides training: the MLflow run (with its claim, see lease.py), its
    local folder and log file, the background writer and the checkpointer."""

    def __init__(
        self,
        cfg: TrainConfig,
        plan: ResumePlan | None,
        data: GlintData,
        tracker: RunTracker,
        save_process: SaveProcess | None,
        log_handler: RunLogHandler,
    ) -> None:
        self.cfg, self.plan, self.data, self.tracker = cfg, plan, data, tracker
        self.lease = tracker.lease
        self.same_run = plan is not None and plan.same_run
        self.started = time.monotonic()  # the run's training time: this process's part, added at close()
        self.lr_each_epoch = True  # decided by describe() (see _chart_lr)
        self.by_group: dict[str, dict[str, float]] | None = None  # the logged model's metrics per held-out group
        self.output_dir = cfg.run_folder(tracker.run_id)
        cfg.output_dir = str(self.output_dir)
        cfg.experiment = tracker.experiment_name  # `mlflow run` may have chosen it
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / RUN_MARKER).write_text(tracker.run_id + "\n")  # whose files these are (check_output_dir)
        self.log_file = self.output_dir / "training.log"
        self.log_handler = log_handler  # attached since training started; its early lines go in first
        log_handler.open(self.log_file)
        resume = plan.source if plan else None
        if self.same_run and resume.best and not (self.output_dir / BEST).exists():
            save_atomic(resume.best, self.output_dir / BEST)
        self.writer = BackgroundWriter()  # checkpoint files, uploads and metrics, off the training thread
        model_info = {
            "num_glints": data.num_glints,
            "base_channels": cfg.base_channels,
            "image_size": list(data.image_size),
        }
        self.save_process = save_process  # torch.save off the training GIL (see save_process.py)
        self.checkpointer = Checkpointer(
            self.output_dir,
            tracker,
            KeepPolicy(cfg.save_optimizer, cfg.save_freq, cfg.keep_last_n),
            writer=self.writer,
            model_info=model_info,
            published=resume.published if self.same_run else None,
            serializer=self.save_process or save_and_digest,
        )
        tracker.spool_to(self.output_dir / "spool")  # where calls go while the tracking server is unreachable

    @classmethod
    def open(
        cls,
        cfg: TrainConfig,
        plan: ResumePlan | None,
        data: GlintData,
        ddp: Distributed,
        device: torch.device,
        log_handler: RunLogHandler,
    ) -> TrackedRun:
        """Start (or continue) the run and log what describes it. From here on every failure marks it FAILED.
        Any thread may call it (training does so beside its first epoch); `activate` is for the training thread."""
        use_child = save_process_wanted(device)  # a wrong setting: exit 2, no run
        continued = plan.source.run_id if plan and plan.same_run else None
        tracker = RunTracker.start(cfg.experiment, cfg.run_name, continued, still_current=plan and plan.check_current)
        save_process = SaveProcess() if use_child else None  # its interpreter and torch import run beside epoch 1
        try:
            run = cls(cfg, plan, data, tracker, save_process, log_handler)
        except BaseException as e:
            if save_process is not None:
                save_process.close()
            tracker.finish("FAILED", wait_s=0)
            if isinstance(e, OSError):
                raise GlintTrackError(
                    f"setting up the output folder failed ({e}); run {tracker.run_id} is marked FAILED: "
                    f"pass --output-dir with a writable folder"
                ) from e
            raise
        try:
            run.describe(ddp)
        except BaseException:
            run.close("FAILED")
            raise
        return run

    def warm_up_the_end(self) -> None:
        """What the end of the run imports and builds the first time (matplotlib, MLflow's model logging), done
        beside training so that the command returns soon after its last epoch."""
        figures.warm_up()
        logged_model.warm_up()

    def activate(self) -> None:
        """In the training thread: the run becomes MLflow's active run there (the model is logged and the run
        ended from it), and MLflow's system-metrics sampler starts."""
        self.tracker.activate(self.cfg.system_metrics)

    def describe(self, ddp: Distributed) -> None:
        """Params, tags and the dataset; on a continued run, what changed and from which epoch."""
        cfg, plan, data, tracker = self.cfg, self.plan, self.data, self.tracker
        start = plan.start_epoch if plan else 1
        if plan and plan.weights_only:  # a fine-tuning: its lineage, and the data its start learnt from beside its own
            parent = {TAG_INIT_FROM_RUN: plan.parent_run} if plan.parent_run else {}
            tracker.set_tags({TAG_INIT_FROM: plan.source.label} | parent)
            if plan.parent_run:
                tracker.log_parent_datasets(plan.parent_run)
        elif plan and not plan.same_run:
            tracker.set_tags({TAG_RESUMED_FROM: plan.source.label})
        scale = {"world_size": ddp.world_size, "global_batch_size": cfg.batch_size * ddp.world_size}
        # a continued run found its data where it recorded it (the same content, checked): not a change of setting
        same_data = {"h5"} if self.same_run and not plan.h5_typed else set()
        tracker.log_config(cfg.params() | scale, start, INVOCATION | same_data, everything=cfg.to_dict() | scale)
        if self.same_run and plan.changed:
            tracker.add_history(f"Resumed at epoch {start} with {describe_changes(plan.changed)}.")
        self.lr_each_epoch = self._chart_lr(start)
        tags = {
            TAG_DATASET_PATH: str(data.path.resolve()),
            "glint_track.dataset.samples": data.num_samples,
            TAG_DATASET_DIGEST: data.digest,
            "glint_track.dataset.glints": data.num_glints,
            "glint_track.version": __version__,
            TAG_LOCAL_COPY: cfg.output_dir,
        }
        if commit := git_commit():
            tags["mlflow.source.git.commit"] = commit
        tracker.set_tags(tags)
        tracker.log_dataset(data)

    def _chart_lr(self, start: int) -> bool:
        """Whether `lr` is logged each epoch. A constant learning rate is logged once, at step 0 (the UI shows
        it as a bar with its value; as a flat line its axis would read -1…1). Once it varies (a scheduler, or
        a resume that changed it) it is logged every epoch, the epochs before the change with the old value."""
        cfg, plan, tracker = self.cfg, self.plan, self.tracker
        steps = tracker.metric_steps("lr") if self.same_run else set()
        changed = self.same_run and bool({"lr", "scheduler"} & set(plan.changed))
        if cfg.scheduler == "none" and not changed and not any(steps):
            tracker.log_summary({"lr": cfg.lr})
            return False
        if changed and steps == {0}:  # constant until this resume
            old_lr = plan.changed["lr"][0] if "lr" in plan.changed else cfg.lr
            for epoch in range(1, start):
                tracker.log_metrics({"lr": old_lr}, epoch)
        return True

    def _tracked(self, metrics: dict[str, float]) -> dict[str, float]:
        """An epoch's metrics as the run logs them (see _chart_lr)."""
        return metrics if self.lr_each_epoch else {k: v for k, v in metrics.items() if k != "lr"}

    def complete_resumed(self, best_epoch: int | None) -> None:
        """Finish what a process killed while saving its last checkpoint left undone (`best_epoch`: the restored
        progress's best)."""
        if not self.same_run:
            return
        resume = self.plan.source
        checkpoint, done = resume.checkpoint, int(resume.checkpoint["epoch"])
        metrics = {k: v for k, v in (checkpoint.get("metrics") or {}).items() if isinstance(v, (int, float))}
        if metrics and done not in self.tracker.metric_steps("train_loss"):
            self.tracker.log_metrics(self._tracked(metrics), done)
        best_is_this = best_epoch == done and (resume.best is None or int(resume.best["epoch"]) != done)
        self.checkpointer.complete(checkpoint, best_is_this)

    def save_epoch(
        self, parts: dict[str, Any], epoch: int, metrics: dict[str, float], is_best: bool, preview: Preview
    ) -> None:
        """The epoch's checkpoints, metrics and (at a new best, or every --image-every epochs) its picture,
        handed to the background writer once the next epoch's first steps are queued."""
        cfg = self.cfg
        self.writer.hold()  # until the next epoch's first steps are on the GPU (see BackgroundWriter)
        self.checkpointer.save(parts, cfg.to_dict(), epoch, is_best)
        self.writer.submit(
            self.tracker.log_metrics, self._tracked(metrics), epoch
        )  # after the checkpoint: a resume never logs a step twice
        self.writer.submit(self.tracker.set_tags, {TAG_EPOCHS: epoch})  # the runs table's "epochs" column
        if (is_best and cfg.image_every == 0) or (cfg.image_every and epoch % cfg.image_every == 0):
            self.writer.submit(self.tracker.log_image, preview.grid(), f"val_images/epoch_{epoch:03d}.png")

    def log_best_model(
        self,
        model: torch.nn.Module,
        val_batches: Batches,
        loss_fn: GlintLoss,
        precision: Precision,
        preview: Preview,
        finishing: bool,
        reuse: Validation | None,
        groups: list[str] | None = None,
    ) -> dict[str, float]:
        """The logged weights' validation metrics, heat-maps and threshold curves, the model itself, and the
        run's description led by its glint result. Returns those metrics (with the epoch they come from); with the
        `groups` of the validation samples (whole participants held out), each group's too (`by_group`).
        `reuse`: the last epoch's validation when its weights, which the model holds, are the ones logged (the
        usual case): no second pass, and the pictures are drawn while that epoch's checkpoint is still saving."""
        cfg, data, tracker = self.cfg, self.data, self.tracker
        if reuse is None:
            self.writer.flush()
            chosen = load_checkpoint(self._logged_file())
            model.load_state_dict(chosen["model_state_dict"])
            metrics = GlintMetrics(data.num_glints, cfg.match_radius)
            reuse = Validation(int(chosen["epoch"]), {}, [])
            reuse.values = validate(
                model,
                val_batches,
                loss_fn,
                precision,
                metrics,
                preview.truth,
                cfg.threshold,
                desc="best val",
                predictions=reuse.predictions,
            )
        epoch, glints = reuse.epoch, reuse.values
        heatmaps = preview.heatmaps()
        curves = threshold_sweep(reuse.predictions, data.num_glints, cfg.match_radius, cfg.threshold)
        curve_figure = threshold_curves(*(curves[k] for k in ("threshold", "precision", "recall", "f1")), cfg.threshold)
        self.writer.flush()  # the last checkpoint is complete before the model made of it is logged
        tracker.log_summary({f"best_val_{k}": v for k, v in glints.items()}, epoch)  # the logged model's
        if groups:
            self.by_group = metrics_by_group(reuse.predictions, groups, data.num_glints, cfg.match_radius)
            tracker.log_summary(
                {f"val_group/{metric_safe(g)}/{k}": v for g, m in self.by_group.items() for k, v in m.items()}, epoch
            )
        tracker.summarise(glint_summary(glints, epoch, cfg.epochs, self.by_group))
        tracker.log_image(heatmaps, "figures/heatmaps_best.png")
        tracker.log_dict(curves, "figures/threshold_curves.json")
        tracker.log_image(curve_figure, "figures/threshold_curves.png")
        if not (finishing and tracker.has_model_of(epoch)):  # a stopped process may have logged it already
            tracker.log_model(self._logged_file(), epoch, data.image_size, cfg.register_model)
        return glints | {"epoch": epoch}

    def _logged_file(self) -> Path:
        """The checkpoint that becomes the run's model: the best by --monitor, else the latest."""
        best_file = self.output_dir / BEST
        return best_file if best_file.exists() else self.output_dir / LATEST

    def close(self, status: str) -> Path | None:
        """Send everything still queued, upload the log, end the run; returns the spool folder if the
        tracking server has not received everything. Any failure here makes the run FAILED."""
        if status == "KILLED" and (self.output_dir / LATEST).exists():
            log.warning(
                "stopped: run %s marked KILLED with the checkpoint of its last finished epoch; resume with --resume %s",
                self.tracker.run_id,
                self.tracker.run_id,
            )
        elif status == "KILLED":
            log.warning(
                "stopped before the first epoch ended: run %s is marked KILLED and has no checkpoint to resume from; "
                "start the training again with the same command",
                self.tracker.run_id,
            )
        try:
            self.writer.close()  # a run never ends with a checkpoint or metric still unsent
        except Exception as e:
            log.error(
                "saving the last checkpoint or metrics failed (%s)",
                e.format_message() if isinstance(e, GlintTrackError) else os_reason(e),
            )
            status = "FAILED"
        finally:
            if self.save_process is not None:
                self.save_process.close()
        logging.getLogger("glint_track").removeHandler(self.log_handler)
        self.log_handler.close()
        try:
            if self.log_file.exists():
                self.tracker.log_artifact(self.log_file)
        except Exception as e:
            log.error("uploading the training log failed (%s)", os_reason(e))
            status = "FAILED"
        # MLflow's Duration runs from the first start to the last end, idle time between resumes included
        self.tracker.set_tags({TAG_TRAIN_TIME: f"{self.tracker.train_time_s + time.monotonic() - self.started:.0f}"})
        pending = self.tracker.finish(status, float(os.environ.get("GLINT_TRACK_SYNC_WAIT_S", "60")))
        if not pending:
            return None
        spool = self.tracker.spool.directory
        log.warning(
            "the tracking server at %s did not come back: %d calls for run %s (metrics, checkpoints, its status) "
            "are kept in %s; send them with: glint-track sync %s",
            tracking_uri(),
            pending,
            self.tracker.run_id,
            spool,
            spool,
        )
        return spool


def glint_summary(
    glints: dict[str, float], epoch: int, epochs: int, by_group: dict[str, dict[str, float]] | None = None
) -> str:
    """What the run page leads with: how well the logged model finds glints (on people it never saw, where whole
    groups were held out)."""
    error = glint_error(glints["loc_err_mean"], glints["loc_err_median"], "mean error")
    unseen = f" on {counted(len(by_group), 'held-out group')} ({', '.join(by_group)})" if by_group else ""
    text = (
        f"**Glints{unseen}: val F1 {glints['f1']:.3f}, {error}** (precision {glints['precision']:.3f}, recall "
        f"{glints['recall']:.3f}; logged model = epoch {epoch} of {epochs})"
    )
    if by_group:
        text += "\n\n" + "\n".join(
            f"- {g}: F1 {m['f1']:.3f}, {glint_error(m['loc_err_mean'], m['loc_err_median'], 'mean error')}"
            for g, m in by_group.items()
        )
    if glints["f1"] < POOR_F1:
        text += f"\n\n⚠ {POOR_ADVICE}"
    return text


#: Below this validation F1 a run ends with a warning: the model finds few of the glints.
POOR_F1 = 0.5


POOR_ADVICE = (
    "The model finds few glints. Train longer (--epochs), check the labels with `glint-track inspect FILE "
    "--preview preview.png`, or go back to the default loss and learning rate if you changed them."
)


def metric_safe(name: str) -> str:
    """A group's name as part of an MLflow metric key (letters, digits, _ - . and spaces; at most 64 characters)."""
    return re.sub(r"[^\w\-. ]", "_", name)[:64] or "_"
