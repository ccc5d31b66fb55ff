"""Target heat-maps, exactly as the research packer defined them (SEED.md).

A Gaussian per annotated glint at full image resolution with sigma = max(sigma_min, radius·sigma_scale),
cut at 3 sigma, glints of one channel combined by max, then area-resized to the heat-map size and
clipped to [0, 1]. Used by `pack` and `synth`, so both write the targets the old trainer learned from.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from glint_track.constants import SIGMA_MIN, SIGMA_SCALE

#: One annotated glint: (channel, x, y, radius), coordinates in image pixels.
Glint = tuple[int, float, float, float]


def glints_of(points: np.ndarray, radii: np.ndarray) -> list[Glint]:
    """(channel, x, y, r) for each present glint of a C×2 points array (NaN where absent)."""
    return [(c, float(x), float(y), float(r)) for c, ((x, y), r) in enumerate(zip(points, radii)) if not np.isnan(x)]


def render_heatmaps(
    glints: Iterable[Glint],
    num_channels: int,
    image_hw: tuple[int, int],
    heatmap_hw: tuple[int, int],
    sigma_scale: float = SIGMA_SCALE,
    sigma_min: float = SIGMA_MIN,
) -> np.ndarray:
    """C×h×w float32 heat-maps for the given glints."""
    H, W = image_hw
    maps = np.zeros((num_channels, H, W), np.float32)
    for c, x, y, r in glints:
        sigma = max(sigma_min, r * sigma_scale)
        reach = 3 * sigma  # the Gaussian is cut there, so only this window can change
        x0, x1 = max(0, int(np.floor(x - reach))), min(W, int(np.ceil(x + reach)) + 1)
        y0, y1 = max(0, int(np.floor(y - reach))), min(H, int(np.ceil(y + reach)) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        d2 = (xx - x) ** 2 + (yy - y) ** 2
        g = np.where(d2 <= reach**2, np.exp(-d2 / (2 * sigma**2)), 0.0)
        np.maximum(maps[c, y0:y1, x0:x1], g, out=maps[c, y0:y1, x0:x1])
    small = F.adaptive_avg_pool2d(torch.from_numpy(maps)[None], heatmap_hw)[0].numpy()
    return np.clip(small, 0.0, 1.0)
