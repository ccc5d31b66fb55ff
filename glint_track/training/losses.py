"""Per-channel heat-map losses on logits, and the hybrid loss that combines them.

`focal`, `bce`, `dice` and `hybrid` mean what they meant in the research script (SEED.md); `peak-bce`,
the default, is glint-track's (its measurements: docs/benchmarks.md, "Default recipe"). Every loss returns a
dict of scalar tensors: `loss` is what is optimised, the other entries are its terms, logged one metric each
(e.g. `train_focal`, `val_div`). Change a loss here and nowhere else.
"""

from __future__ import annotations

import functools
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from glint_track.training.config import AGG_MODES, DIV_MODES, LOSSES, LossWeights

_EPS = 1e-6


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, gamma: float = 2.0) -> torch.Tensor:
    """alpha·(1−p_t)^gamma·(−log p_t), with p_t generalised to soft (Gaussian) targets."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    return (alpha * (1 - p_t).pow(gamma) * ce).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


def peak_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE against each glint's heat-map scaled to a peak of 1.

    The packer's maps peak anywhere from ~0.2 to ~0.7 depending on where the glint falls between heat-map
    pixels, so a model that predicts them faithfully often stays under the detection threshold. Scaled to
    1, every glint is a clear target; the shape around the peak, which places it to a fraction of a
    pixel, is kept, and BCE's optimum is that shape itself (Dice's is a 0/1 mask that loses it)."""
    peak = target.amax((2, 3), keepdim=True)
    return F.binary_cross_entropy_with_logits(logits, target / peak.clamp_min(_EPS))


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − soft Dice, averaged over every (image, channel) pair."""
    p = torch.sigmoid(logits).flatten(2)
    t = target.flatten(2)
    dice = (2 * (p * t).sum(-1) + _EPS) / (p.sum(-1) + t.sum(-1) + _EPS)
    return 1 - dice.mean()


def divergence_penalty(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """How much different glint channels fire at the same place, averaged over channel pairs.

    `overlap`: mean product of the two sigmoid maps. `cosine`: cosine similarity of the flattened maps.
    `kl`: exp(−|KL|) between the maps normalised to distributions (|KL| grows as channels differ, so it
    is turned into a penalty that is 1 for identical maps and falls towards 0 for disjoint ones).
    """
    num_ch = logits.shape[1]
    if num_ch < 2:
        return logits.new_zeros(())
    p = torch.sigmoid(logits).flatten(2)  # B×C×P
    i, j = _channel_pairs(num_ch, logits.device)
    if mode == "overlap":
        pair = (p[:, i] * p[:, j]).mean(-1)
    elif mode == "cosine":
        pair = F.cosine_similarity(p[:, i], p[:, j], dim=-1, eps=_EPS)
    elif mode == "kl":
        q = p / (p.sum(-1, keepdim=True) + _EPS) + _EPS
        kl = (q[:, i] * (q[:, i].log() - q[:, j].log())).sum(-1)
        pair = torch.exp(-kl.abs())
    else:
        raise ValueError(f"unknown divergence mode {mode!r}; choose one of {DIV_MODES}")
    return pair.mean()


@functools.cache
def _channel_pairs(num_ch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair of channels (i < j) as two index tensors on `device`, made once: a CUDA graph can capture no copy
    from the host, and the hybrid loss runs inside the captured training step."""
    return tuple(torch.tensor(ix, device=device) for ix in zip(*combinations(range(num_ch), 2)))


def aggregate(logits: torch.Tensor, target: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse the glint channels into one map (any glint here?), returned as (logits, target) B×1×h×w."""
    if mode == "max":  # max of sigmoids == sigmoid of max logit: stay in logit space, exactly
        return logits.amax(1, keepdim=True), target.amax(1, keepdim=True)
    if mode == "sum":
        p = torch.sigmoid(logits).sum(1, keepdim=True).clamp(0, 1)
        return torch.logit(p, eps=_EPS), target.sum(1, keepdim=True).clamp(0, 1)
    raise ValueError(f"unknown aggregation mode {mode!r}; choose one of {AGG_MODES}")


class GlintLoss(nn.Module):
    """`loss(logits, target) -> {"loss": total, <term>: value, ...}` for the chosen loss name."""

    def __init__(self, name: str, weights: LossWeights | None = None) -> None:
        super().__init__()
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
        self.name = name
        self.w = weights or LossWeights()

    def term_names(self) -> tuple[str, ...]:
        return ("loss", "focal", "bce", "dice", "div", "agg") if self.name == "hybrid" else ("loss",)

    def _focal(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, self.w.alpha, self.w.gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits.float()  # losses in fp32 even under autocast: sigmoid tails matter here
        if self.name == "peak-bce":
            return {"loss": peak_bce_loss(logits, target)}
        if self.name == "focal":
            return {"loss": self._focal(logits, target)}
        if self.name == "bce":
            return {"loss": bce_loss(logits, target)}
        if self.name == "dice":
            return {"loss": dice_loss(logits, target)}
        w = self.w
        terms = {
            "focal": self._focal(logits, target),
            "bce": bce_loss(logits, target),
            "dice": dice_loss(logits, target),
            "div": divergence_penalty(logits, w.div_mode),
        }
        agg_logits, agg_target = aggregate(logits, target, w.agg_mode)
        terms["agg"] = (
            w.agg_wf * self._focal(agg_logits, agg_target)
            + w.agg_wb * bce_loss(agg_logits, agg_target)
            + w.agg_wd * dice_loss(agg_logits, agg_target)
        )
        total = (
            w.lam_focal * terms["focal"]
            + w.lam_bce * terms["bce"]
            + w.lam_dice * terms["dice"]
            + w.div_weight * terms["div"]
            + w.lam_agg * terms["agg"]
        )
        return {"loss": total, **terms}
