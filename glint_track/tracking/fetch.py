"""Finding a checkpoint to resume from or evaluate: a local file, `runs:/<id>/<path>`, `models:/…`, or a run ID
(its latest checkpoint, verified, with the newest intact one named when it is damaged)."""

from __future__ import annotations

import logging
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from glint_track.checkpoint.format import ARTIFACT_DIR, BEST, EPOCH_FILE, LATEST, load_checkpoint
from glint_track.checkpoint.schema import CorruptCheckpoint
from glint_track.constants import RUNS_DIR
from glint_track.errors import GlintTrackError
from glint_track.files import file_digest
from glint_track.tracking.lease import refuse_if_held
from glint_track.tracking.server import RUN_ID, get_run, list_artifact_names, require_local_store, tracking_uri
from glint_track.tracking.tags import TAG_CONTINUED_IN, TAG_DATASET_DIGEST, TAG_DATASET_PATH, TAG_LOCAL_COPY

log = logging.getLogger(__name__)


@dataclass
class ResumeSource:
    """A checkpoint to resume from and, for a run ID, the MLflow run it continues (None: a new run)."""

    checkpoint: dict[str, Any]
    run_id: str | None
    label: str
    best: dict[str, Any] | None = None  # the run's best_model.pth, so best_model.pth carries over
    run_status: str | None = None
    published: dict[str, str | None] = field(default_factory=dict)  # the run's checkpoint files → digest where read
    experiment_name: str | None = None  # the continued run's
    dataset_digest: str | None = None  # SHA-256 of the file the continued run trains on
    dataset_path: str | None = None  # where that file was (absolute) when the run last trained


def _download_checkpoint(run_id: str, artifact_path: str, names: set[str] | None = None) -> tuple[dict[str, Any], str]:
    """Download a checkpoint with its checksum file (when the run has one) and load it, verified.
    `names`: the files in the checkpoint's folder, when the caller has listed it already."""
    with tempfile.TemporaryDirectory(prefix="glint-track-checkpoint-") as tmp:
        path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp))
        sidecar = f"{artifact_path}.sha256"
        if names is None:
            parent = str(Path(sidecar).parent) if "/" in sidecar else None
            names = list_artifact_names(run_id, parent)
        if Path(sidecar).name in names:
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=sidecar, dst_path=tmp)
        return load_checkpoint(path, f"runs:/{run_id}/{artifact_path}"), file_digest(path)


def _newest_intact_alternative(run_id: str, names: set[str]) -> str | None:
    """The newest epoch checkpoint of a run (else its best) that loads and verifies, as a runs:/ URI."""
    epochs = sorted((n for n in names if EPOCH_FILE.match(n)), reverse=True)
    for name in [*epochs, *([BEST] if BEST in names else [])]:
        try:
            _download_checkpoint(run_id, f"{ARTIFACT_DIR}/{name}", names)
            return f"runs:/{run_id}/{ARTIFACT_DIR}/{name}"
        except GlintTrackError:
            continue
    return None


def fetch_checkpoint(source: str, prefer_best: bool = False, option: str = "--resume") -> ResumeSource:
    """Resolve a checkpoint reference: a local file, a `runs:/<id>/<path>` URI, or an MLflow run ID
    (its latest checkpoint, or with `prefer_best` its best_model.pth when it has one)."""
    if Path(source).is_file():
        return ResumeSource(load_checkpoint(source), None, source)
    require_local_store()
    if source.startswith("models:/"):  # a logged or registered glint-track model: its checkpoint artifact
        return _fetch_model(source)
    if source.startswith("runs:/"):  # one checkpoint of a run: a new run starts from it (see resume.py)
        run_id, _, artifact_path = source[len("runs:/") :].partition("/")
        get_run(run_id)
        try:
            checkpoint, _ = _download_checkpoint(run_id, artifact_path or f"{ARTIFACT_DIR}/{LATEST}")
        except (MlflowException, OSError) as e:
            raise GlintTrackError(
                f"{source}: no such artifact in run {run_id}; list the run's checkpoints in the MLflow UI"
            ) from e
        return ResumeSource(checkpoint, None, source)
    if not RUN_ID.match(source):
        raise GlintTrackError(
            f"{option} {source!r} is neither an existing checkpoint file, a runs:/ URI nor an MLflow run ID (32 hex "
            "digits); "
            f"copy the run ID from the MLflow UI or the end of a training log"
        )
    run = get_run(source)
    if (continued := run.data.tags.get(TAG_CONTINUED_IN)) and continued != source:  # followed once: tags can loop
        log.info("run %s was made by `mlflow run`, which trained in run %s: using run %s", source, continued, continued)
        source, run = continued, get_run(continued)
    experiment = MlflowClient().get_experiment(run.info.experiment_id)
    _refuse_deleted(run, experiment)
    if option == "--resume":  # a run another process trains: its checkpoints are replaced while they are read
        refuse_if_held(run)
    names = list_artifact_names(source, ARTIFACT_DIR)
    if LATEST not in names:
        raise GlintTrackError(_no_checkpoint(run, option))
    published: dict[str, str | None] = {n: None for n in names if n.endswith(".pth")}
    try:
        best = None
        if BEST in names:
            best, published[BEST] = _download_checkpoint(source, f"{ARTIFACT_DIR}/{BEST}", names)
        if prefer_best and best is not None:
            return ResumeSource(best, source, source)
        latest, published[LATEST] = _download_checkpoint(source, f"{ARTIFACT_DIR}/{LATEST}", names)
        return ResumeSource(
            latest,
            source,
            source,
            best,
            run.info.status,
            published,
            experiment.name,
            run.data.tags.get(TAG_DATASET_DIGEST),
            run.data.tags.get(TAG_DATASET_PATH),
        )
    except CorruptCheckpoint as e:
        alternative = _newest_intact_alternative(source, names)
        fix = (
            f"use the newest intact one: {option} {alternative}"
            if alternative
            else "no intact checkpoint is left in it"
        )
        raise GlintTrackError(f"{e.format_message().split('; ')[0]}; {fix}") from e


def _fetch_model(source: str) -> ResumeSource:
    """The checkpoint inside a logged or registered model (`models:/<id or name/version>`)."""
    with tempfile.TemporaryDirectory(prefix="glint-track-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp))
        except MlflowException as e:
            raise GlintTrackError(
                f"{source}: no such model at {tracking_uri()}; check the name and version in the MLflow UI"
            ) from e
        found = sorted(local.rglob("*.pth"))
        if not found:
            raise GlintTrackError(
                f"{source}: not a glint-track model (no checkpoint inside); pass a run ID or a checkpoint file"
            )
        return ResumeSource(load_checkpoint(found[0], f"{source} ({found[0].name})"), None, source)


def _no_checkpoint(run: Any, option: str) -> str:
    """Why a run has nothing to continue from, and the copy this machine kept of it when there is one (a run whose
    artifacts were deleted from the store by hand)."""
    run_id = run.info.run_id
    for folder in (run.data.tags.get(TAG_LOCAL_COPY), RUNS_DIR / run_id):
        if folder and (local := Path(folder) / LATEST).is_file():
            return (
                f"run {run_id} has no {ARTIFACT_DIR}/{LATEST} in the tracking store (its artifacts were deleted); "
                f"this machine kept a copy, which a new run can start from: {option} {local}"
            )
    data = run.data.tags.get(TAG_DATASET_PATH) or run.data.params.get("h5")
    again = f": glint-track train --h5 {shlex.quote(data)} (its settings are in its train_args.json)" if data else ""
    return (
        f"run {run_id} has no {ARTIFACT_DIR}/{LATEST} (it stopped before finishing an epoch, or was not a "
        f"glint-track run), so there is nothing to continue; start a new training instead{again}"
    )


def _refuse_deleted(run: Any, experiment: Any) -> None:
    """A deleted run (or one in a deleted experiment) is in MLflow's trash: continuing it would write there."""
    run_id = run.info.run_id
    if experiment.lifecycle_stage == "deleted":  # deleting an experiment deletes its runs; restoring it restores them
        what, undo = (
            f"its experiment {experiment.name!r} is deleted",
            f"mlflow experiments restore --experiment-id {experiment.experiment_id}",
        )
    elif run.info.lifecycle_stage == "deleted":
        what, undo = f"run {run_id} is deleted", f"mlflow runs restore --run-id {run_id}"
    else:
        return
    raise GlintTrackError(
        f"run {run_id} cannot be continued: {what}; restore it (`{undo}`) or start a new run from its "
        f"checkpoint: --resume runs:/{run_id}/{ARTIFACT_DIR}/{LATEST}"
    )
