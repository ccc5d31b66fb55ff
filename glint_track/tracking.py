"""Everything that talks to MLflow: the run, its params/metrics/artifacts, and fetching a run's checkpoint.

With no MLFLOW_TRACKING_URI, MLflow's embedded default is used (SQLite `mlflow.db` in the working
directory, artifacts beside it); teams point MLFLOW_TRACKING_URI at an `mlflow server`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import requests
import torch
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

import glint_track
from glint_track.checkpoint import EPOCH_FILE, ARTIFACT_DIR, BEST, LATEST, CorruptCheckpoint, load_checkpoint
from glint_track.data import GlintData
from glint_track.errors import GlintTrackError

log = logging.getLogger(__name__)
# MLflow's per-download progress bars would clutter our log; our own progress is shown per epoch.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TAG_RESUMED_FROM = "glint_track.resumed_from"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def check_tracking_server() -> None:
    """Fail fast, in one line, when a remote tracking server is unreachable or refuses our credentials.

    MLflow's own client retries for minutes before giving up; a user who mistyped a URI should know now.
    """
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    auth = None
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    try:
        r = requests.get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=auth, timeout=10)
    except requests.RequestException as e:
        raise GlintTrackError(
            f"cannot reach the MLflow tracking server at {uri} ({type(e).__name__}); start it "
            f"(`mlflow server ...`) or fix/unset MLFLOW_TRACKING_URI to use the local mlflow.db"
        ) from e
    if r.status_code in (401, 403):
        raise GlintTrackError(
            f"the MLflow tracking server at {uri} refused the credentials (HTTP {r.status_code}); "
            f"set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a valid account"
        )
    if r.status_code >= 400:
        raise GlintTrackError(f"the MLflow tracking server at {uri} answered HTTP {r.status_code}; check that MLFLOW_TRACKING_URI points at an MLflow server")


@dataclass
class ResumeSource:
    """A checkpoint to resume from, and the MLflow run it came from (None for a plain file)."""

    checkpoint: dict[str, Any]
    run_id: str | None
    label: str
    best: dict[str, Any] | None = None  # the run's best_model.pth, so best_model.pth carries over


def _download_checkpoint(run_id: str, artifact_path: str) -> dict[str, Any]:
    """Download a checkpoint with its checksum file (when the run has one) and load it, verified."""
    with tempfile.TemporaryDirectory(prefix="glint-track-resume-") as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
        sidecar = f"{artifact_path}.sha256"
        parent = str(Path(sidecar).parent) if "/" in sidecar else None
        if Path(sidecar).name in {Path(f.path).name for f in MlflowClient().list_artifacts(run_id, parent)}:
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=sidecar, dst_path=tmp)
        return load_checkpoint(path)


def _newest_intact_alternative(run_id: str, names: set[str]) -> str | None:
    """The newest epoch checkpoint of a run (else its best) that loads and verifies, as a runs:/ URI."""
    epochs = sorted((n for n in names if EPOCH_FILE.match(n)), reverse=True)
    for name in [*epochs, *([BEST] if BEST in names else [])]:
        try:
            _download_checkpoint(run_id, f"{ARTIFACT_DIR}/{name}")
            return f"runs:/{run_id}/{ARTIFACT_DIR}/{name}"
        except GlintTrackError:
            continue
    return None


def fetch_checkpoint(source: str, prefer_best: bool = False, option: str = "--resume") -> ResumeSource:
    """Resolve a checkpoint reference: a local file, a `runs:/<id>/<path>` URI, or an MLflow run ID
    (its latest checkpoint, or with `prefer_best` its best_model.pth when it has one)."""
    if Path(source).is_file():
        return ResumeSource(load_checkpoint(source), None, source)
    if source.startswith("models:/"):  # a logged or registered glint-track model: its checkpoint artifact
        with tempfile.TemporaryDirectory(prefix="glint-track-model-") as tmp:
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp))
            except MlflowException as e:
                raise GlintTrackError(f"{source}: no such model at {tracking_uri()}; check the name and version in the MLflow UI") from e
            found = sorted(local.rglob("*.pth"))
            if not found:
                raise GlintTrackError(f"{source}: not a glint-track model (no checkpoint inside); pass a run ID or a checkpoint file")
            return ResumeSource(load_checkpoint(found[0]), None, source)
    if source.startswith("runs:/"):
        run_id, _, artifact_path = source[len("runs:/"):].partition("/")
        _get_run(run_id)
        try:
            checkpoint = _download_checkpoint(run_id, artifact_path or f"{ARTIFACT_DIR}/{LATEST}")
        except (MlflowException, OSError) as e:
            raise GlintTrackError(f"{source}: no such artifact in run {run_id}; list the run's checkpoints in the MLflow UI") from e
        return ResumeSource(checkpoint, run_id, source)
    if not _RUN_ID.match(source):
        raise GlintTrackError(
            f"{option} {source!r} is neither an existing checkpoint file, a runs:/ URI nor an MLflow run ID (32 hex digits); "
            f"copy the run ID from the MLflow UI or the end of a training log"
        )
    _get_run(source)
    names = {Path(f.path).name for f in MlflowClient().list_artifacts(source, ARTIFACT_DIR)}
    if LATEST not in names:
        raise GlintTrackError(
            f"run {source} has no {ARTIFACT_DIR}/{LATEST} (it stopped before finishing an epoch, or was not a "
            f"glint-track run); start a new training instead"
        )
    try:
        best = _download_checkpoint(source, f"{ARTIFACT_DIR}/{BEST}") if BEST in names else None
        if prefer_best and best is not None:
            return ResumeSource(best, source, source)
        return ResumeSource(_download_checkpoint(source, f"{ARTIFACT_DIR}/{LATEST}"), source, source, best)
    except CorruptCheckpoint as e:
        alternative = _newest_intact_alternative(source, names)
        fix = f"resume from the newest intact one: {option} {alternative}" if alternative else "no intact checkpoint is left in it"
        raise GlintTrackError(f"run {source}: {e.format_message().split('; ')[0]}; {fix}") from e


def _get_run(run_id: str) -> Any:
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as e:
        raise GlintTrackError(
            f"no MLflow run with ID {run_id} at {tracking_uri()}; check the ID in the MLflow UI, or set "
            f"MLFLOW_TRACKING_URI to the server (or run in the folder with the mlflow.db) that holds it"
        ) from e


def git_commit() -> str | None:
    """The commit of the glint-track source in use, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(glint_track.__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class RunTracker:
    """The MLflow run of one training: new, resumed by ID, or the one `mlflow run` already started."""

    def __init__(self, run: mlflow.ActiveRun) -> None:
        self.run_id: str = run.info.run_id
        self.experiment_id: str = run.info.experiment_id
        self.artifact_uri: str = run.info.artifact_uri
        self.client = MlflowClient()

    @classmethod
    def start(cls, experiment: str, run_name: str | None, resume_run_id: str | None) -> RunTracker:
        project_run = os.environ.get("MLFLOW_RUN_ID")  # set by `mlflow run`; start_run consumes it
        if project_run:
            run = mlflow.start_run(run_id=project_run)
            if resume_run_id and resume_run_id != project_run:
                mlflow.set_tag(TAG_RESUMED_FROM, resume_run_id)
        elif resume_run_id:
            run = mlflow.start_run(run_id=resume_run_id)
        else:
            mlflow.set_experiment(experiment)
            run = mlflow.start_run(run_name=run_name)
        return cls(run)

    def log_config(self, config: dict[str, Any]) -> None:
        """Log settings as params; on a resumed run, params are immutable, so changed values become tags."""
        existing = self.client.get_run(self.run_id).data.params
        new = {k: v for k, v in config.items() if k not in existing}
        if new:
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in new.items()])
        changed = {f"glint_track.resume_override.{k}": v for k, v in config.items() if k in existing and existing[k] != str(v)}
        if changed:
            self.set_tags(changed)
        self.client.log_dict(self.run_id, config, "train_args.json")

    # The methods below address the run by ID, not through MLflow's active run (which is thread-local),
    # so the background checkpoint writer can call them.
    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dataset(self, data: GlintData) -> None:
        """The training file as the run's MLflow input: name, source path, digest (the first 16 hex
        digits of its SHA-256, so runs on the same file show the same one) and array shapes."""
        with warnings.catch_warnings():  # MLflow registers two equivalent local-file sources and says so
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(data.path.resolve()))
        h, w = data.image_size
        c = data.num_glints
        schema = Schema([
            TensorSpec(np.dtype(np.uint8), (-1, h, w), name="images"),
            TensorSpec(np.dtype(str(data.heatmaps.dtype).removeprefix("torch.")), (-1, c, h // 4, w // 4), name="heatmaps"),
        ])
        dataset = MetaDataset(source, name=data.path.stem, digest=data.digest[:16], schema=schema)
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])])

    def log_image(self, image: Any, artifact_file: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """All of an epoch's metrics in one request."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, local_path: Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_dir)

    def list_artifacts(self, artifact_dir: str) -> list[str]:
        return [Path(f.path).name for f in self.client.list_artifacts(self.run_id, artifact_dir)]

    def delete_artifact(self, artifact_path: str) -> None:
        get_artifact_repository(self.artifact_uri).delete_artifacts(artifact_path)

    def log_model(self, checkpoint: Path, image_size: tuple[int, int], registered_name: str | None = None) -> None:
        """The best checkpoint as a pyfunc MLflow model under `model/` that takes uint8 images N×H×W and
        returns glints (see serving.py), carrying glint-track's code so it loads anywhere."""
        h, w = image_size
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, h, w))]),
            outputs=Schema([ColSpec("long", "image"), ColSpec("string", "glint"), ColSpec("double", "x"),
                            ColSpec("double", "y"), ColSpec("double", "score"), ColSpec("boolean", "present")]),
            params=ParamSchema([ParamSpec("threshold", "double", 0.3)]),
        )
        package = Path(glint_track.__file__).parent
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(package / "pyfunc_entry.py"),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(package)],
            signature=signature,
            input_example=np.zeros((2, h, w), np.uint8),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas", "h5py", "click", "tqdm", "pillow"],
            registered_model_name=registered_name,
        )

    def end(self, status: str) -> None:
        mlflow.end_run(status=RunStatus.to_string(getattr(RunStatus, status)))
