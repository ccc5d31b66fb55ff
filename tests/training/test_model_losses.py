"""The UNet's shape and size, and every loss (hybrid's terms included) on real tensors."""

from __future__ import annotations

import pytest
import torch

from glint_track.model import GlintUNet, count_parameters
from glint_track.training.config import DIV_MODES, LossWeights
from glint_track.training.losses import GlintLoss, divergence_penalty


def test_default_unet_matches_the_research_model() -> None:
    model = GlintUNet(num_glints=8, base_channels=16)
    assert count_parameters(model) == 1_897_752
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 8, 16, 16)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(4, 3, 8, 8)
    target[:, 0, 2, 2] = target[:, 1, 5, 5] = 1.0
    return torch.randn(4, 3, 8, 8, generator=g), target


@pytest.mark.parametrize("name", ["focal", "bce", "dice", "peak-bce"])
def test_single_losses_are_scalars_that_rank_a_right_map_below_a_wrong_one(name: str) -> None:
    logits, target = _batch()
    out = GlintLoss(name)(logits, target)
    assert set(out) == {"loss"} and out["loss"].ndim == 0
    right, wrong = (target * 2 - 1) * 8, (1 - target * 2) * 8  # confident and right / confident and wrong
    assert GlintLoss(name)(right, target)["loss"] < out["loss"] < GlintLoss(name)(wrong, target)["loss"]


def test_losses_equal_their_textbook_definitions() -> None:
    logits, target = _batch()
    p = logits.sigmoid()
    bce = -(target * p.log() + (1 - target) * (1 - p).log())
    assert torch.allclose(GlintLoss("bce")(logits, target)["loss"], bce.mean(), atol=1e-5)
    p_t = p * target + (1 - p) * (1 - target)
    assert torch.allclose(GlintLoss("focal")(logits, target)["loss"], ((1 - p_t) ** 2 * bce).mean(), atol=1e-5)


@pytest.mark.parametrize("div_mode", DIV_MODES)
@pytest.mark.parametrize("agg_mode", ["max", "sum"])
def test_hybrid_returns_each_term_and_trains(div_mode: str, agg_mode: str) -> None:
    torch.manual_seed(0)
    logits, target = _batch()
    logits.requires_grad_(True)
    loss_fn = GlintLoss(
        "hybrid", LossWeights(lam_bce=0.5, lam_dice=0.5, div_mode=div_mode, agg_mode=agg_mode, agg_wb=0.5, agg_wd=0.5)
    )
    out = loss_fn(logits, target)
    assert set(out) == {"loss", "focal", "bce", "dice", "div", "agg"}
    assert all(torch.isfinite(v) for v in out.values())
    opt = torch.optim.Adam([logits], lr=0.1)
    first = out["loss"].item()
    for _ in range(20):
        opt.zero_grad()
        loss_fn(logits, target)["loss"].backward()
        opt.step()
    assert loss_fn(logits, target)["loss"].item() < first


def test_divergence_is_high_for_identical_channels_and_low_for_disjoint_ones() -> None:
    same = torch.full((1, 2, 4, 4), -6.0)
    same[:, :, 1, 1] = 6.0
    disjoint = torch.full((1, 2, 4, 4), -6.0)
    disjoint[:, 0, 0, 0] = disjoint[:, 1, 3, 3] = 6.0
    for mode in DIV_MODES:
        assert divergence_penalty(same, mode) > divergence_penalty(disjoint, mode), mode
