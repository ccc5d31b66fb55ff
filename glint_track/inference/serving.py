"""The MLflow model a training run logs: a pyfunc that takes raw eye images and returns glints.

`mlflow.pyfunc.load_model("runs:/<id>/model").predict(images)` with a uint8 batch N×H×W (the training
image size) returns one row per image and glint: image (index), glint (g1…), x, y (input pixels),
score and present. The checkpoint travels as an artifact and is read with weights_only=True.
"""

from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

from glint_track.checkpoint.format import load_checkpoint
from glint_track.constants import DEFAULT_THRESHOLD
from glint_track.glints import decode
from glint_track.model import GlintUNet


class GlintPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        checkpoint = load_checkpoint(context.artifacts["checkpoint"])
        self.model = GlintUNet.from_checkpoint(checkpoint, "model checkpoint")
        self.threshold = float((context.model_config or {}).get("threshold", DEFAULT_THRESHOLD))

    # MLflow reads these hints at class creation (so no `from __future__ import annotations` here): an ndarray
    # is a type it infers no schema from, so the model's signature (tracking/logged_model.py) stays the schema,
    # and without hints it would warn on every training that logs the model.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = np.asarray(model_input)
        if images.ndim == 2:
            images = images[None]
        x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
        threshold = float((params or {}).get("threshold", self.threshold))
        with torch.no_grad():
            glints = decode(self.model(x), threshold)
        n, c = glints.score.shape
        xy = glints.xy.numpy()
        return pd.DataFrame(
            {
                "image": np.repeat(np.arange(n), c),
                "glint": [f"g{k + 1}" for k in range(c)] * n,
                "x": xy[..., 0].reshape(-1).astype(np.float64),
                "y": xy[..., 1].reshape(-1).astype(np.float64),
                "score": glints.score.numpy().reshape(-1).astype(np.float64),
                "present": glints.present.numpy().reshape(-1),
            }
        )
