"""From heat-maps to glints, and how good the glints are: detection, localisation and identity.

`decode` turns per-channel maps into (x, y, score, present) in input-image pixels; `GlintMetrics`
accumulates predictions against ground truth on the device and reports precision, recall, F1,
localisation error and the identity-swap rate, overall and per glint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glint_track.constants import DEFAULT_MATCH_RADIUS, DEFAULT_THRESHOLD, OUTPUT_STRIDE


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
    """The strongest peak of each channel in input-image pixels (heat-map pixel centres map to
    (i + 0.5)·4 − 0.5), refined to a fraction of a heat-map pixel.

    A peak is refined by the parabola through the log-probabilities of it and its neighbours, along x and
    along y: exact for a Gaussian peak, the shape a BCE-trained model predicts, and still informative for
    a near-binary one. Where the top is flat (a neighbour within 10 % of the peak, as Dice-trained maps
    are) that parabola has no vertex to find, and the probability-weighted centroid of the 5×5 window
    is used instead (benchmarks/decoders.py compares them on trained models)."""
    p = torch.sigmoid(maps.float()) if logits else maps.float().clamp(0, 1)
    log_p = F.logsigmoid(maps.float()) if logits else p.clamp_min(1e-6).log()
    n, c, h, w = p.shape
    score, flat = p.flatten(2).max(-1)
    iy = flat // w
    ix = flat - iy * w  # not flat % w: the ONNX exporter cannot take the remainder by a symbolic size
    window = _window(p, iy, ix, radius=2)  # N×C×5×5 around each peak
    log_window = _window(log_p, iy, ix, radius=1)
    centre = log_window[..., 1, 1]
    dx = _vertex(log_window[..., 1, 0], centre, log_window[..., 1, 2])
    dy = _vertex(log_window[..., 0, 1], centre, log_window[..., 2, 1])
    neighbours = torch.stack(
        [log_window[..., 1, 0], log_window[..., 1, 2], log_window[..., 0, 1], log_window[..., 2, 1]], -1
    )
    flat_top = neighbours.amax(-1) > centre - FLAT_TOP
    offsets = torch.arange(-2.0, 3.0, device=p.device)
    mass = window.sum((-1, -2)).clamp_min(1e-8)
    dx = torch.where(flat_top, (window.sum(-2) * offsets).sum(-1) / mass, dx)
    dy = torch.where(flat_top, (window.sum(-1) * offsets).sum(-1) / mass, dy)
    x, y = ix.float() + dx, iy.float() + dy
    xy = torch.stack([(x + 0.5) * OUTPUT_STRIDE - 0.5, (y + 0.5) * OUTPUT_STRIDE - 0.5], -1)
    return Glints(xy, score, score >= threshold)


#: A peak whose strongest neighbour's log-probability is within this of its own is flat-topped (~10 %).
FLAT_TOP = 0.1


def _window(maps: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor, radius: int) -> torch.Tensor:
    """The (2r+1)² values of each channel around (iy, ix); beyond the border, the nearest pixel's value."""
    n, c, h, w = maps.shape
    k = 2 * radius + 1
    padded = F.pad(maps, (radius,) * 4, mode="replicate").flatten(2)
    steps = torch.arange(k, device=maps.device)
    rows = (iy[..., None, None] + steps[:, None]) * (w + 2 * radius)
    index = (rows + ix[..., None, None] + steps[None, :]).reshape(n, c, k * k)
    return padded.gather(2, index).reshape(n, c, k, k)


def _vertex(before: torch.Tensor, centre: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Offset (−½…½ pixel) of the maximum of the parabola through three equally spaced values."""
    curvature = before - 2 * centre + after
    offset = 0.5 * (before - after) / curvature.clamp_max(-1e-6)  # a maximum curves down
    return offset.clamp(-0.5, 0.5)


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
            "tp": hit.sum(0),
            "fp": (pred.present & ~hit).sum(0),
            "fn": (truth.present & ~hit).sum(0),
            "swaps": swap.sum(0),
            "predicted": pred.present.sum(0),
        }
        for name, value in counts.items():
            current = getattr(self, name)
            setattr(self, name, value if current is None else current + value)
        self.errors.append(torch.where(hit, dist, torch.full_like(dist, float("nan"))))

    def combine(
        self, total: Callable[[torch.Tensor], torch.Tensor], gather: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        """Merge what every DDP rank accumulated on its shard of the validation set: `total` sums a tensor over
        the ranks, `gather` concatenates their rows. compute() then gives exactly what one process validating
        every sample would (counts add up; the median needs every error, so they are gathered)."""
        counts = torch.stack([getattr(self, name) for name in _COUNTS])
        for name, value in zip(_COUNTS, total(counts)):
            setattr(self, name, value)
        self.errors = [gather(self._errors(flat=False))]

    def compute(self) -> dict[str, float]:
        """Overall precision, recall, f1, loc_err_mean, loc_err_median (px), swap_rate."""
        return self._summary(
            *(getattr(self, k).sum() for k in ("tp", "fp", "fn", "swaps", "predicted")), self._errors()
        )

    def per_glint(self) -> list[dict[str, float]]:
        errors = self._errors(flat=False)
        return [
            self._summary(self.tp[c], self.fp[c], self.fn[c], self.swaps[c], self.predicted[c], errors[:, c])
            for c in range(self.num_glints)
        ]

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


#: What GlintMetrics counts per glint channel.
_COUNTS = ("tp", "fp", "fn", "swaps", "predicted")
METRIC_NAMES = ("precision", "recall", "f1", "loc_err_mean", "loc_err_median", "swap_rate")


def metrics_by_group(
    predictions: list[tuple[Glints, Glints]], groups: list[str], num_glints: int, match_radius: float
) -> dict[str, dict[str, float]]:
    """The overall metrics of each group's samples (participant, session), from (decoded prediction, ground truth)
    pairs in sample order and the group of each sample, in that order."""
    pred = Glints(*(torch.cat([getattr(p, k) for p, _ in predictions]) for k in ("xy", "score", "present")))
    truth = Glints(*(torch.cat([getattr(t, k) for _, t in predictions]) for k in ("xy", "score", "present")))
    out = {}
    for name in sorted(set(groups)):
        rows = torch.tensor([g == name for g in groups], device=pred.xy.device)
        metrics = GlintMetrics(num_glints, match_radius)
        metrics.update(pred.take(rows), truth.take(rows))
        out[name] = metrics.compute()
    return out


def threshold_sweep(
    predictions: list[tuple[Glints, Glints]], num_glints: int, match_radius: float, in_use: float
) -> dict[str, list[float]]:
    """Precision, recall and F1 at detection thresholds 0.02 … 0.98 and `in_use`, of (decoded prediction, ground
    truth) pairs (what `validate` keeps); a glint is present at a threshold when its score reaches it."""
    preds, truths = [p for p, _ in predictions], [t for _, t in predictions]
    xy, score = torch.cat([p.xy for p in preds]), torch.cat([p.score for p in preds])
    gt = Glints(
        torch.cat([t.xy for t in truths]), torch.cat([t.score for t in truths]), torch.cat([t.present for t in truths])
    )
    curves: dict[str, list[float]] = {"threshold": [], "precision": [], "recall": [], "f1": []}
    for t in sorted({*(round(0.02 * i, 2) for i in range(1, 50)), in_use}):
        metrics = GlintMetrics(num_glints, match_radius)
        metrics.update(Glints(xy, score, score >= t), gt)
        result = metrics.compute()
        curves["threshold"].append(float(t))
        for k in ("precision", "recall", "f1"):
            curves[k].append(result[k])
    return curves
