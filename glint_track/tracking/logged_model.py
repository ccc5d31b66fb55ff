"""Packaging a checkpoint as the run's MLflow model: the pyfunc of inference/serving.py ("models from code"),
with glint-track's code, its signature and an input example, so it loads anywhere."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from glint_track.constants import DEFAULT_THRESHOLD
from glint_track.errors import GlintTrackError
from glint_track.tracking.server import RUN_ID, get_run
from glint_track.tracking.tags import TAG_MODEL_EPOCH

log = logging.getLogger(__name__)


def warm_up() -> None:
    """Import and build now, beside training, what logging a model would the first time: MLflow's pyfunc flavour
    and the map from installed packages to their modules that its requirements check reads (~1 s on a CPU)."""
    import mlflow.pyfunc  # noqa: F401
    from mlflow.utils import requirements_utils

    build_map = getattr(requirements_utils, "_init_packages_to_modules_map", None)  # MLflow's own; skipped if gone
    if build_map is not None:
        build_map()


def log_pyfunc_model(checkpoint: Path, image_size: tuple[int, int], registered_name: str | None) -> str:
    """A pyfunc MLflow model under `model/` that takes uint8 images N×H×W and returns glints (see
    serving.py), carrying glint-track's code so it loads anywhere. Returns its model ID."""
    h, w = image_size
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, h, w))]),
        outputs=Schema(
            [
                ColSpec("long", "image"),
                ColSpec("string", "glint"),
                ColSpec("double", "x"),
                ColSpec("double", "y"),
                ColSpec("double", "score"),
                ColSpec("boolean", "present"),
            ]
        ),
        params=ParamSchema([ParamSpec("threshold", "double", DEFAULT_THRESHOLD)]),
    )
    package = Path(__file__).parents[1]
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(package / "inference" / "pyfunc_entry.py"),
        artifacts={"checkpoint": str(checkpoint)},
        code_paths=[str(package)],
        signature=signature,
        input_example=np.zeros((2, h, w), np.uint8),
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            "numpy",
            "pandas",
            "h5py",
            "click",
            "tqdm",
            "pillow",
        ],
        registered_model_name=registered_name,
    )
    return info.model_id


def retire_older_models(client: MlflowClient, experiment_id: str, run_id: str, current: str) -> None:
    """Delete the models an earlier part of run `run_id` logged, now that model `current` replaces them; a
    model with versions in the Model Registry stays (they point at it)."""
    older = [
        m
        for m in client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
        if m.model_id != current
    ]
    if not older:
        return
    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
        registered = {v.model_id or v.source.removeprefix("models:/") for v in versions}  # stores that leave model_id
    except MlflowException as e:  # the registry cannot say which are in use: delete none
        log.warning("the run keeps its earlier models: listing Model Registry versions failed (%s)", e)
        return
    for model in older:
        if model.model_id in registered:
            log.info("model %s of this run stays: the Model Registry has versions of it", model.model_id)
        else:
            client.delete_logged_model(model.model_id)


def model_of(client: MlflowClient, experiment_id: str, run_id: str, epoch: int) -> bool:
    """Whether run `run_id` already holds a fully logged model of the checkpoint of `epoch`. Models a killed
    process left half-logged (PENDING, or FAILED) are deleted first, so that finishing the run leaves exactly
    one."""
    models = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    for model in models:
        if model.status != LoggedModelStatus.READY:
            log.info("deleting model %s, which a stopped process left %s", model.model_id, model.status)
            client.delete_logged_model(model.model_id)
    return any(
        model.status == LoggedModelStatus.READY and model.tags.get(TAG_MODEL_EPOCH) == str(epoch) for model in models
    )


def model_id_of(client: MlflowClient, ref: str) -> str | None:
    """The logged model a reference names: a run ID → the run's model; `models:/m-…` → that model;
    `models:/<name>/<version>` or `models:/<name>@<alias>` → the registered version's model. None for a
    checkpoint file, a runs:/ URI, or a run that has no model (it stopped before logging one)."""
    if ref.startswith("models:/"):
        name = ref.removeprefix("models:/").strip("/")
        try:
            if name.startswith("m-") and "/" not in name:
                return client.get_logged_model(name).model_id
            if "@" in name:
                version = client.get_model_version_by_alias(*name.split("@", 1))
            else:
                version = client.get_model_version(*name.split("/", 1))
        except (MlflowException, TypeError) as e:
            raise GlintTrackError(f"{ref}: no such model; check the name and version in the MLflow UI") from e
        return version.model_id or version.source.removeprefix("models:/")  # stores that leave model_id empty
    if not RUN_ID.match(ref):
        return None
    run = get_run(ref)
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{ref}'", order_by=[{"field_name": "creation_time"}]
    )
    ready = [m for m in models if m.status == LoggedModelStatus.READY]
    return ready[-1].model_id if ready else None
