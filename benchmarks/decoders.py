"""Sub-pixel decoders compared on trained models: how far each puts the glints from their annotations, and
how much its positions cluster on the 4-pixel heat-map grid.

    python benchmarks/decoders.py --h5 FILE CHECKPOINT [CHECKPOINT …] [--val-split 0.1 --seed 42]

Each checkpoint's model predicts the validation split of FILE (the split its training used); every decoder
turns the same heat-maps into positions. `busiest bin` is the share of positions in the most crowded eighth
of a heat-map pixel (evenly spread: 0.125; snapped to the pixel centre: 1). The table is printed last.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from glint_track.checkpoint.format import load_checkpoint
from glint_track.constants import OUTPUT_STRIDE
from glint_track.data.batches import split_indices
from glint_track.data.glint_file import load_glint_file
from glint_track.glints import GlintMetrics, Glints, decode, ground_truth
from glint_track.model import GlintUNet


def _window(p: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(peak value, row, column, k×k window around the peak) of each channel."""
    n, c, h, w = p.shape
    score, flat = p.flatten(2).max(-1)
    patches = F.unfold(p.reshape(n * c, 1, h, w), kernel_size=k, padding=k // 2)
    window = patches.gather(2, flat.reshape(n * c, 1, 1).expand(-1, k * k, 1)).reshape(n, c, k, k)
    return score, (flat // w).float(), (flat % w).float(), window


def _centroid(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Probability-weighted mean position over the k×k window (glint-track's decode until 2026-11)."""
    _, iy, ix, window = _window(torch.sigmoid(logits.float()), k)
    offsets = torch.arange(k, dtype=torch.float32) - k // 2
    total = window.sum((-1, -2)).clamp_min(1e-8)
    return _to_pixels(ix + (window.sum(-2) * offsets).sum(-1) / total, iy + (window.sum(-1) * offsets).sum(-1) / total)


def _grid(logits: torch.Tensor) -> torch.Tensor:
    _, iy, ix, _ = _window(logits.float(), 3)
    return _to_pixels(ix, iy)


def _to_pixels(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([(x + 0.5) * OUTPUT_STRIDE - 0.5, (y + 0.5) * OUTPUT_STRIDE - 0.5], -1)


def _parabola_logits(logits: torch.Tensor) -> torch.Tensor:
    """The parabola through the logits themselves instead of the log-probabilities."""
    _, iy, ix, w = _window(logits.float(), 3)

    def vertex(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (0.5 * (a - c) / (a - 2 * b + c).clamp_max(-1e-6)).clamp(-0.5, 0.5)

    return _to_pixels(
        ix + vertex(w[..., 1, 0], w[..., 1, 1], w[..., 1, 2]), iy + vertex(w[..., 0, 1], w[..., 1, 1], w[..., 2, 1])
    )


def _gauss_fit(logits: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Least-squares parabola through log p over the k×k window, each point weighted by p² (Guo's
    weighted Gaussian fit): the vertex of 1, x, y, x², y²."""
    _, iy, ix, w = _window(torch.sigmoid(logits.float()), k)
    o = torch.arange(k, dtype=torch.float32) - k // 2
    yy, xx = torch.meshgrid(o, o, indexing="ij")
    basis = torch.stack([torch.ones_like(xx), xx, yy, xx * xx, yy * yy], -1).reshape(k * k, 5)  # P×5
    p = w.reshape(*w.shape[:2], k * k)
    weight = p * p
    a = basis[None, None] * weight[..., None].sqrt()
    b = (p.clamp_min(1e-6).log() * weight.sqrt())[..., None]
    coef = torch.linalg.lstsq(a, b).solution[..., 0]
    dx = (-coef[..., 1] / (2 * coef[..., 3].clamp_max(-1e-6))).clamp(-1, 1)
    dy = (-coef[..., 2] / (2 * coef[..., 4].clamp_max(-1e-6))).clamp(-1, 1)
    return _to_pixels(ix + dx, iy + dy)


DECODERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "heat-map pixel centre (no refinement)": _grid,
    "centroid 3×3 (until 2026-11)": lambda z: _centroid(z, 3),
    "centroid 5×5": lambda z: _centroid(z, 5),
    "parabola through logits": _parabola_logits,
    "weighted Gaussian fit 3×3": lambda z: _gauss_fit(z, 3),
    "weighted Gaussian fit 5×5": lambda z: _gauss_fit(z, 5),
    "parabola through log p (glint-track's decode)": lambda z: decode(z).xy,
}


def evaluate(checkpoint: Path, h5: Path, val_split: float, seed: int) -> list[tuple[str, float, float, float]]:
    model = GlintUNet.from_checkpoint(load_checkpoint(checkpoint), str(checkpoint))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    data = load_glint_file(h5)
    _, val = split_indices(data.num_samples, val_split, seed)
    index = torch.as_tensor(val)
    truth = ground_truth(data.points, data.present, data.heatmaps).take(index)
    with torch.no_grad():
        logits = torch.cat(
            [
                model(data.images[index[i : i + 64]].unsqueeze(1).float().div(255).to(device)).float().cpu()
                for i in range(0, len(index), 64)
            ]
        )
    score = torch.sigmoid(logits.float()).flatten(2).amax(-1)
    rows = []
    for name, decoder in DECODERS.items():
        xy = decoder(logits)
        metrics = GlintMetrics(data.num_glints)
        metrics.update(Glints(xy, score, score >= 0.3), truth)
        result = metrics.compute()
        fraction = (((xy + 0.5) / OUTPUT_STRIDE) % 1.0)[score >= 0.3].flatten().numpy()
        busiest = np.histogram(fraction, bins=8, range=(0, 1))[0].max() / max(1, fraction.size)
        rows.append((name, result["loc_err_mean"], result["loc_err_median"], busiest))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--h5", type=Path, required=True)
    parser.add_argument("checkpoints", type=Path, nargs="+", help="name=path or path")
    parser.add_argument("--val-split", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    lines = ["| model | decoder | mean error px | median px | busiest bin |", "|---|---|---|---|---|"]
    for checkpoint in args.checkpoints:
        label, _, path = str(checkpoint).rpartition("=")
        for name, mean, median, busiest in evaluate(Path(path), args.h5, args.val_split, args.seed):
            lines.append(f"| {label or path} | {name} | {mean:.3f} | {median:.3f} | {busiest:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
