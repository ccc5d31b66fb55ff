"""Pictures of the model at work for the MLflow UI: the first validation images with their predicted and true
glints at each new best epoch, and heat-maps at the end."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from glint_track.data.glint_file import GlintData
from glint_track.engine import Precision, predict_samples
from glint_track.figures import heatmap_panel, validation_grid
from glint_track.glints import Glints, decode


@dataclass
class Preview:
    """The first validation images, pictured with their predicted and true glints at each new best epoch,
    and as heat-maps at the end."""

    model: torch.nn.Module
    data: GlintData
    truth: Glints
    val_idx: list[int]
    precision: Precision
    device: torch.device
    threshold: float
    match_radius: float
    count: int = 8

    def grid(self) -> Image.Image:
        index = self._index(self.count)
        images, logits = predict_samples(self.model, self.data, index, self.precision, self.device)
        return validation_grid(images, decode(logits, self.threshold), self.truth.take(index), self.match_radius)

    def heatmaps(self) -> Image.Image:
        images, logits = predict_samples(
            self.model, self.data, self._index(self.count // 2), self.precision, self.device
        )
        return heatmap_panel(images, logits)

    def _index(self, count: int) -> torch.Tensor:
        return torch.as_tensor(self.val_idx[:count], dtype=torch.long, device=self.data.images.device)
