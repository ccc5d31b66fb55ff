"""A run's data as MLflow dataset inputs: the training file (name, source path, digest, array shapes and a profile),
and for a fine-tuning the data of the model it started from, so the runs table's Dataset column tells versions apart."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from glint_track.constants import COCO_DIGEST, COCO_FROM, OUTPUT_STRIDE, PACKED_DIGEST, PACKED_FROM
from glint_track.data.glint_file import GlintData

log = logging.getLogger(__name__)
#: What an MLflow dataset entity holds besides its profile.
_DATASET_FIELDS = ("name", "digest", "source_type", "source", "schema")


def log_training_data(client: MlflowClient, run_id: str, data: GlintData) -> None:
    """The training file as the run's MLflow input: name, source path, digest (the first 16 hex digits of its
    SHA-256, so runs on the same file show the same one, and files that differ differ), array shapes, and a
    profile: samples, glints, image size and, for a file `pack` made, the labelme folder (and its digest)."""
    with warnings.catch_warnings():  # MLflow registers two equivalent local-file sources and says so
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(data.path.resolve()))
    h, w = data.image_size
    c = data.num_glints
    schema = Schema(
        [
            TensorSpec(np.dtype(np.uint8), (-1, h, w), name="images"),
            TensorSpec(
                np.dtype(str(data.heatmaps.dtype).removeprefix("torch.")),
                (-1, c, h // OUTPUT_STRIDE, w // OUTPUT_STRIDE),
                name="heatmaps",
            ),
        ]
    )
    described = MetaDataset(source, name=data.path.stem, digest=data.digest[:16], schema=schema).to_dict()
    profile = {"samples": data.num_samples, "glints": c, "image_size": [h, w]}
    profile |= {
        k: data.attrs[k]
        for k in (PACKED_FROM, PACKED_DIGEST, COCO_FROM, COCO_DIGEST)
        if isinstance(data.attrs.get(k), str)
    }
    dataset = Dataset(**{k: described.get(k) for k in _DATASET_FIELDS}, profile=json.dumps(profile))
    _log_inputs(client, run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])


def log_parent_data(client: MlflowClient, run_id: str, parent_run_id: str) -> None:
    """A fine-tuning's inputs also show what the model it started from learnt from (context: fine-tuned from)."""
    try:
        parents = client.get_run(parent_run_id).inputs.dataset_inputs
    except MlflowException as e:
        log.warning("the data of run %s, which this run starts from, is not shown: %s", parent_run_id, e.message)
        return
    context = [InputTag("mlflow.data.context", f"fine-tuned from run {parent_run_id}")]
    _log_inputs(client, run_id, [DatasetInput(d.dataset, context) for d in parents])


def _log_inputs(client: MlflowClient, run_id: str, inputs: list[DatasetInput]) -> None:
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as e:  # runs started together (a sweep) raced to record the same dataset:
        if "UNIQUE constraint" not in str(e):  # it exists now, and the second try links it
            raise
        client.log_inputs(run_id, datasets=inputs)
