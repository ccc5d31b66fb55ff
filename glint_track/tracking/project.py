"""Runs made for this process by someone else: `mlflow run` (a run that only records the project) or a sweep
(a child run to train in), and a run left RUNNING by a process that died."""

from __future__ import annotations

import logging
import os
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from glint_track.tracking.tags import TAG_CONTINUED_IN, TAG_NOTE

log = logging.getLogger(__name__)


def run_made_for_us(client: MlflowClient) -> mlflow.entities.Run | None:
    """The run `mlflow run` or a sweep created for this process (MLFLOW_RUN_ID), taken out of the
    environment so that MLflow does not start it behind our back."""
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    return client.get_run(run_id) if run_id else None


def provenance(project: mlflow.entities.Run) -> dict[str, str]:
    """What `mlflow run` recorded about the project (source, commit, entry point), for the run that trains."""
    prefixes = ("mlflow.source.", "mlflow.project.", "mlflow.gitRepoURL")
    return {k: v for k, v in project.data.tags.items() if k.startswith(prefixes)}


def retire(client: MlflowClient, project: mlflow.entities.Run, run: mlflow.entities.Run) -> None:
    """End the run `mlflow run` made at once, pointing to the run that trains (tag and description)."""
    used, experiment = run.info.run_id, run.info.experiment_id
    client.set_tag(project.info.run_id, TAG_CONTINUED_IN, used)
    client.set_tag(
        project.info.run_id,
        TAG_NOTE,
        f"Made by `mlflow run`; glint-track trains in run [{used}](#/experiments/{experiment}/runs/{used}).",
    )
    client.set_terminated(project.info.run_id, "FINISHED")
    log.info(
        "`mlflow run` made run %s; training goes on in run %s (experiment %s), so %s is ended",
        project.info.run_id,
        used,
        client.get_experiment(experiment).name,
        project.info.run_id,
    )


def report_left_running(run: mlflow.entities.Run, stale: Any) -> None:
    """Say so when the run being continued was left RUNNING by a process that never ended it (kill -9, power loss)."""
    if run.info.status != "RUNNING":
        return
    who = f"{stale.describe()}, which is gone" if stale is not None else "a process that is gone"
    log.warning(
        "run %s was left RUNNING by %s (killed without ending it); continuing it from its latest checkpoint",
        run.info.run_id,
        who,
    )
