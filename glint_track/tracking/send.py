"""Performing one tracking call of a run, as it happens or replayed from its spool (see spool.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Metric, RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from glint_track.checkpoint.format import copy_atomic
from glint_track.errors import GlintTrackError
from glint_track.tracking.logged_model import log_pyfunc_model, retire_older_models
from glint_track.tracking.server import local_artifact_root
from glint_track.tracking.tags import TAG_MODEL_EPOCH

if TYPE_CHECKING:
    from glint_track.tracking.tracker import RunTracker

#: Tracking calls that write to the artifact store (the others write to the tracking store).
ARTIFACT_OPS = ("artifact", "delete", "model")


def send(tracker: RunTracker, op: str, args: dict[str, Any], file: Path | None) -> None:
    """Perform one tracking call, live or replayed from a spool."""
    client, run_id = tracker.client, tracker.run_id
    if op == "metrics":
        client.log_batch(
            run_id, metrics=[Metric(k, v, args["timestamp"], args["step"]) for k, v in args["metrics"].items()]
        )
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in args["tags"].items()])
    elif op == "artifact":
        local_root = local_artifact_root(tracker.artifact_uri)
        if local_root is not None:  # a file store: copied atomically, so a crash never leaves half a file
            copy_atomic(file, local_root / (args["dir"] or "") / args["name"])
        else:
            client.log_artifact(run_id, str(file), args["dir"])
    elif op == "delete":
        get_artifact_repository(tracker.artifact_uri).delete_artifacts(args["path"])
    elif op == "model":
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            model_id = log_pyfunc_model(file, tuple(args["image_size"]), args["registered_name"])
        else:  # replayed by `glint-track sync`: the run's final status is the spooled `end` that follows
            with mlflow.start_run(run_id=run_id):
                model_id = log_pyfunc_model(file, tuple(args["image_size"]), args["registered_name"])
        if args.get("epoch") is not None:
            client.set_logged_model_tags(model_id, {TAG_MODEL_EPOCH: str(args["epoch"])})
        retire_older_models(client, tracker.experiment_id, run_id, model_id)
    elif op == "end":
        client.set_terminated(run_id, args["status"])
    else:
        raise GlintTrackError(f"unknown spooled call {op!r}; this spool was written by a newer glint-track")
