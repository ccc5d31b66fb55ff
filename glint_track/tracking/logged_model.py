"""Packaging a checkpoint as the run's MLflow model: the pyfunc of inference/serving.py ("models from code"),
with glint-track's code, its signature and an input example, so it loads anywhere."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from glint_track.glints import DEFAULT_THRESHOLD


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
