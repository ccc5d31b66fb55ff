"""From heat-maps to glints, and how good the glints are: detection, localisation and identity.

`decode` turns per-channel maps into (x, y, score, present) in input-image pixels; `GlintMetrics`
accumulates predictions against ground truth on the device and reports precision, recall, F1,
localisation error and the identity-swap rate, overall and per glint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

STRIDE = 4  # heat-map pixel → input pixels
DEFAULT_THRESHOLD = 0.3
DEFAULT_MATCH_RADIUS = 3.0


@dataclass
class Glints:
    xy: torch.Tensor  # N×C×2, input-image pixels
    score: torch.Tensor  # N×C, peak probability
    present: torch.Tensor  # N×C bool

    def take(self, index: torch.Tensor) -> Glints:
        return Glints(self.xy[index], self.score[index], self.present[index])

    def to(self, device: torch.device) -> Glints:
        return Glints(self.xy.to(device), self.score.to(device), self.present.to(device))


def decode(maps: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, logits: bool = True) -> Glints:
    """The strongest peak of each channel, refined to sub-pixel precision by a soft-argmax over its
    3×3 neighbourhood, in input-image pixels (heat-map pixel centres map to (i + 0.5)·4 − 0.5)."""
    p = torch.sigmoid(maps.float()) if logits else maps.float()
    n, c, h, w = p.shape
    score, flat = p.flatten(2).max(-1)
    iy, ix = flat // w, flat % w
    patches = F.unfold(p.reshape(n * c, 1, h, w), kernel_size=3, padding=1)  # (N·C)×9×(h·w)
    window = patches.gather(2, flat.reshape(n * c, 1, 1).expand(-1, 9, 1)).reshape(n, c, 9)
    offsets = torch.tensor([-1.0, 0.0, 1.0], device=p.device)
    dy, dx = offsets.repeat_interleave(3), offsets.repeat(3)
    weight = window / window.sum(-1, keepdim=True).clamp_min(1e-8)
    x = ix.float() + (weight * dx).sum(-1)
    y = iy.float() + (weight * dy).sum(-1)
    xy = torch.stack([(x + 0.5) * STRIDE - 0.5, (y + 0.5) * STRIDE - 0.5], -1)
    return Glints(xy, score, score >= threshold)


def ground_truth(points: torch.Tensor | None, present: torch.Tensor | None, heatmaps: torch.Tensor) -> Glints:
    """Annotated glints: the stored `points` when the file has them, else the target maps' peaks."""
    if points is not None:
        valid = ~torch.isnan(points[..., 0])
        return Glints(torch.nan_to_num(points, nan=-1e6), valid.float(), valid)
    peaks = decode(heatmaps, threshold=0.1, logits=False)
    if present is not None:
        peaks.present = present.bool()
    return peaks


class GlintMetrics:
    """Accumulates predictions and truth batch by batch (on the device, read once in `compute`)."""

    def __init__(self, num_glints: int, match_radius: float = DEFAULT_MATCH_RADIUS) -> None:
        self.num_glints = num_glints
        self.match_radius = match_radius
        self.tp = self.fp = self.fn = self.swaps = self.predicted = None
        self.errors: list[torch.Tensor] = []

    def update(self, pred: Glints, truth: Glints) -> None:
        dist = torch.linalg.vector_norm(pred.xy - truth.xy, dim=-1)  # N×C, own channel
        hit = pred.present & truth.present & (dist <= self.match_radius)
        # a predicted glint lying nearer another channel's annotated glint than its own: an identity swap
        cross = torch.cdist(pred.xy, truth.xy)  # N×C(pred)×C(truth)
        cross = cross.masked_fill(~truth.present[:, None, :], float("inf"))
        cross.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        nearest_other = cross.min(-1).values
        own = dist.masked_fill(~truth.present, float("inf"))
        swap = pred.present & (nearest_other <= self.match_radius) & (nearest_other < own)
        counts = {
            "tp": hit.sum(0), "fp": (pred.present & ~hit).sum(0), "fn": (truth.present & ~hit).sum(0),
            "swaps": swap.sum(0), "predicted": pred.present.sum(0),
        }
        for name, value in counts.items():
            current = getattr(self, name)
            setattr(self, name, value if current is None else current + value)
        self.errors.append(torch.where(hit, dist, torch.full_like(dist, float("nan"))))

    def compute(self) -> dict[str, float]:
        """Overall precision, recall, f1, loc_err_mean, loc_err_median (px), swap_rate."""
        return self._summary(*(getattr(self, k).sum() for k in ("tp", "fp", "fn", "swaps", "predicted")), self._errors())

    def per_glint(self) -> list[dict[str, float]]:
        errors = self._errors(flat=False)
        return [self._summary(self.tp[c], self.fp[c], self.fn[c], self.swaps[c], self.predicted[c], errors[:, c]) for c in range(self.num_glints)]

    def _errors(self, flat: bool = True) -> torch.Tensor:
        errors = torch.cat(self.errors)
        return errors.flatten() if flat else errors

    @staticmethod
    def _summary(tp, fp, fn, swaps, predicted, errors) -> dict[str, float]:
        tp, fp, fn, swaps, predicted = (float(v) for v in (tp, fp, fn, swaps, predicted))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        found = errors[~torch.isnan(errors)]
        return {
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "loc_err_mean": float(found.mean()) if found.numel() else float("nan"),
            "loc_err_median": float(found.median()) if found.numel() else float("nan"),
            "swap_rate": swaps / predicted if predicted else 0.0,
        }


METRIC_NAMES = ("precision", "recall", "f1", "loc_err_mean", "loc_err_median", "swap_rate")
