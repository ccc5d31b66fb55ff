"""The corrections of pre-labelled frames (data/corrections.py) in the MLflow run whose model pre-labelled them:
`field_*` metrics (one step per corrected folder) with the folder's digest and the per-glint report, so the run
that made a model also says how it fared on new, real frames."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from glint_track.data.corrections import Corrections
from glint_track.errors import GlintTrackError
from glint_track.tracking.logged_model import model_id_of
from glint_track.tracking.server import RUN_ID, check_tracking_server, sqlite_path, tracking_uri

TAG_FIELD_DIGEST = "glint_track.field.digest"  # SHA-256 of the last corrected folder logged
TAG_FIELD_FOLDER = "glint_track.field.folder"


def log_field_report(corrections: Corrections, folder: Path) -> list[str]:
    """Log the corrections to each run whose model pre-labelled frames of `folder`; returns one line per model."""
    database = sqlite_path(tracking_uri())
    if database is not None and not database.exists():  # no store here: do not make an empty one
        return [f"no MLflow store at {tracking_uri()}: the corrections are logged to no run (set MLFLOW_TRACKING_URI)"]
    check_tracking_server()
    client = MlflowClient()
    return [_log_to(client, model, corrections, folder) for model in sorted(corrections.models)]


def _log_to(client: MlflowClient, model: str, corrections: Corrections, folder: Path) -> str:
    run_id = _run_of(client, model)
    if run_id is None:
        return f"pre-labelled by {model}, not an MLflow run or model: the corrections are not logged to a run"
    try:
        step = len(client.get_metric_history(run_id, "field_points")) + 1
        now, digest = int(time.time() * 1000), corrections.digest()
        metrics = [Metric(f"field_{k}", float(v), now, step) for k, v in corrections.summary().items()]
        tags = [RunTag(TAG_FIELD_DIGEST, digest), RunTag(TAG_FIELD_FOLDER, str(folder.resolve()))]
        client.log_batch(run_id, metrics=metrics, tags=tags)
        with tempfile.TemporaryDirectory(prefix="glint-track-field-") as tmp:
            report = Path(tmp) / f"{digest[:12]}.csv"
            corrections.write_csv(report)
            client.log_artifact(run_id, str(report), "field")
    except MlflowException as e:
        return f"run {run_id} (which pre-labelled the frames) could not take the corrections ({e.message[:120]})"
    return f"logged to run {run_id} as field_* metrics (step {step}), report field/{digest[:12]}.csv"


def _run_of(client: MlflowClient, model: str) -> str | None:
    """The run a model reference came from: a run ID, runs:/<id>/…, or a logged or registered model's run."""
    if RUN_ID.match(model):
        return model
    if model.startswith("runs:/"):
        run_id = model[len("runs:/") :].partition("/")[0]
        return run_id if RUN_ID.match(run_id) else None
    if model.startswith("models:/"):
        try:
            model_id = model_id_of(client, model)
            return client.get_logged_model(model_id).source_run_id if model_id else None
        except (GlintTrackError, MlflowException):
            return None
    return None
