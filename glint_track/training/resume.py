"""Resuming: which run a resumed training writes to, which settings it trains with, and what it refuses.

`--resume RUN_ID` continues that MLflow run; a checkpoint file or a `runs:/` URI starts a new run from
the checkpoint (tagged with where it came from), so no run ever holds two histories. Settings come from
the checkpoint, except what the user typed, which wins: it applies from the next epoch and is recorded
in the run. A typed setting that cannot apply is refused in one line before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glint_track.errors import GlintTrackError
from glint_track.model import model_shape
from glint_track.text import counted
from glint_track.training.config import TrainConfig, args_from_checkpoint, merge_resumed

if TYPE_CHECKING:  # MLflow is imported where a resume needs it, so that a new run's start does not wait for it
    from mlflow.tracking import MlflowClient

    from glint_track.tracking.fetch import ResumeSource

#: Settings that fix which images a run validates on: changing them mid-run would make its curves compare
#: different images, so a continued run refuses them (a new run from the checkpoint takes them).
_FIXED_IN_RUN = ("seed", "val_split", "split_by")


class AlreadyFinished(Exception):
    """Resuming a finished run to the epochs it has: nothing to do (a requeued job may run the same command)."""


@dataclass
class ResumePlan:
    source: ResumeSource
    cfg: TrainConfig
    changed: dict[str, tuple[Any, Any]]  # typed settings that differ from the checkpoint's: name → (old, new)
    start_epoch: int
    finishing: bool  # every epoch is done but the run was stopped before its model was logged
    h5_typed: bool = False  # --h5 was passed (else cfg.h5 is the file the run recorded)
    weights_only: bool = False  # --init-from: a new run from the model's weights alone (fine-tuning)
    parent_run: str | None = None  # with --init-from: the run the weights come from
    fresh_optimizer: bool = False  # trained weights with an optimizer that starts afresh: its first epoch warms up

    @property
    def same_run(self) -> bool:
        return self.source.run_id is not None

    def check_current(self, client: MlflowClient, run_id: str) -> None:
        """Called once this process holds the run's claim: refuse when another process trained the run past
        the checkpoint this plan was read from while this one was starting (its epochs would be trained twice).
        An epoch's metrics are logged only after its checkpoint, so a later step means a later checkpoint."""
        done = self.start_epoch - 1
        trained = max((m.step for m in client.get_metric_history(run_id, "train_loss")), default=0)
        if trained > done:
            raise GlintTrackError(
                f"run {run_id} was trained to epoch {trained} by another process while this one was starting from "
                f"epoch {done}; run the same command again to continue from its latest checkpoint"
            )

    def branch_hint(self) -> str:
        """How to train from this checkpoint in a new run (what a refused change needs)."""
        return (
            f"--resume runs:/{self.source.run_id}/checkpoints/latest_checkpoint.pth"
            if self.same_run
            else "--resume FILE"
        )


def plan_resume(cli: TrainConfig, explicit: frozenset[str]) -> ResumePlan:
    """Fetch the checkpoint `cli.resume` names and decide what the resumed training does."""
    from glint_track.tracking.fetch import fetch_checkpoint

    source = fetch_checkpoint(cli.resume)
    checkpoint = source.checkpoint
    inherited = args_from_checkpoint(checkpoint, source.label)
    inherited["base_channels"] = model_shape(checkpoint["model_state_dict"], source.label)[1]
    if source.experiment_name is not None:  # where the continued run is, whatever its checkpoint recorded
        inherited["experiment"] = source.experiment_name
    cfg = merge_resumed(cli, inherited, explicit, same_run=source.run_id is not None)
    if source.run_id is not None and "h5" not in explicit:
        cfg.h5 = run_data(source, cfg.h5)
    changed = {
        k: (inherited[k], getattr(cfg, k))
        for k in sorted(explicit)
        if k in inherited and inherited[k] != getattr(cfg, k)
    }
    done = int(checkpoint["epoch"])
    plan = ResumePlan(source, cfg, changed, done + 1, finishing=False, h5_typed="h5" in explicit)
    _refuse_what_cannot_apply(plan)
    finished = plan.same_run and source.run_status == "FINISHED"
    if cfg.epochs == done and finished:
        raise AlreadyFinished(
            f"run {source.run_id} has already finished its {counted(done, 'epoch')}: nothing to do "
            f"(pass --epochs larger than {done} to train it further)"
        )
    if cfg.epochs < done or (cfg.epochs == done and not plan.same_run):
        raise GlintTrackError(
            f"{source.label}: the checkpoint has already finished epoch {done} and --epochs is {cfg.epochs}; "
            f"pass --epochs larger than {done} to train further"
        )
    plan.finishing = cfg.epochs == done  # a continued run killed after its last epoch: log its model
    return plan


def plan_init(cli: TrainConfig, explicit: frozenset[str]) -> ResumePlan:
    """--init-from: a new run on the typed settings that starts from a model's weights (its best checkpoint for a run
    ID), its width the model's; nothing else of the checkpoint (optimizer, epoch, settings) is taken."""
    from glint_track.tracking.fetch import fetch_checkpoint

    source = fetch_checkpoint(cli.init_from, prefer_best=True, option="--init-from")
    width = model_shape(source.checkpoint["model_state_dict"], source.label)[1]
    if "base_channels" in explicit and cli.base_channels != width:
        raise GlintTrackError(
            f"--init-from {cli.init_from}: its model has base width {width}, so --base-channels {cli.base_channels} "
            "cannot start from it; drop --base-channels"
        )
    cfg = replace(cli, base_channels=width)
    parent = replace(source, run_id=None)  # a new run: nothing of the parent's run is continued
    return ResumePlan(parent, cfg, {}, 1, False, h5_typed=True, weights_only=True, parent_run=source.run_id)


def _refuse_what_cannot_apply(plan: ResumePlan) -> None:
    changed, source = plan.changed, plan.source
    if "base_channels" in changed:
        old, new = changed["base_channels"]
        raise GlintTrackError(
            f"{source.label}: its model has base width {old}, so --base-channels {new} cannot continue it (the "
            "weights would "
            f"not fit); drop --base-channels, or train a new model without --resume"
        )
    if not plan.same_run:
        return
    for name in _FIXED_IN_RUN:
        if name in changed:
            old, new = changed[name]
            raise GlintTrackError(
                f"--{name.replace('_', '-')} {new} would change the validation images of run {source.run_id} (it has "
                f"{old}), so its curves would compare different data; drop it, or start a new run from the checkpoint: "
                f"{plan.branch_hint()} --{name.replace('_', '-')} {new}"
            )
    if "experiment" in changed:
        raise GlintTrackError(
            f"run {source.run_id} belongs to experiment {changed['experiment'][0]!r} and a run cannot move; drop "
            f"--experiment, or start a new run from the checkpoint: {plan.branch_hint()} --experiment "
            f"{changed['experiment'][1]}"
        )


def run_data(source: ResumeSource, as_typed: str | None) -> str | None:
    """The file a continued run learnt from: where the run recorded it (an absolute path), else the path its
    checkpoint holds as it was typed then (relative to the folder it was typed in). A resume from another folder
    (`mlflow run` runs in the project's) finds it either way."""
    for path in (source.dataset_path, as_typed):
        if path and Path(path).is_file():
            return path
    if source.dataset_path or as_typed:
        raise GlintTrackError(
            f"run {source.run_id} learnt from {source.dataset_path or as_typed}"
            f"{f' (content digest {source.dataset_digest[:12]})' if source.dataset_digest else ''}, which is not "
            f"there any more; pass where that file is now: --h5 FILE (with mlflow run: -P h5=FILE)"
        )
    return None


def check_same_data(plan: ResumePlan, digest: str) -> None:
    """A continued run trains on the file it was started on (same content, wherever it lies now)."""
    expected = plan.source.dataset_digest
    if not (plan.same_run and expected and digest != expected):
        return
    run_id, h5 = plan.source.run_id, plan.cfg.h5
    if plan.h5_typed:
        raise GlintTrackError(
            f"--h5 {h5} is not the data run {run_id} was trained on (content digest {digest[:12]} ≠ {expected[:12]}); "
            f"pass that file, or start a new run from the checkpoint: {plan.branch_hint()} --h5 {h5}"
        )
    raise GlintTrackError(
        f"{h5} has changed since run {run_id} learnt from it (content digest {digest[:12]} ≠ {expected[:12]}); pass "
        f"the file it learnt from: --h5 FILE (with mlflow run: -P h5=FILE), or train a new run from the checkpoint "
        f"on this one: {plan.branch_hint()} --h5 {h5}"
    )


def describe_changes(changed: dict[str, tuple[Any, Any]]) -> str:
    """`lr 0.003 → 0.0001, epochs 10 → 13` for a log line or the run's description."""
    return ", ".join(f"{name} {old} → {new}" for name, (old, new) in changed.items())
