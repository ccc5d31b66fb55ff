"""Built-in demo data: simple synthetic IR eye images with labelled glints, in the packer's HDF5 layout.

Each image has skin, a brighter sclera, an iris and a dark pupil at a random gaze position; the LED
ring's glints sit on an ellipse around the pupil in a fixed order (g1 at the top, clockwise), some are
missing, and sensor noise is added. Enough for the trainer to learn something real in a few CPU minutes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from glint_track.data import OUTPUT_STRIDE

SIGMA_SCALE = 1.2
SIGMA_MIN = 1.5


def render_heatmaps(
    points: np.ndarray, radii: np.ndarray, image_hw: tuple[int, int], heatmap_hw: tuple[int, int],
    sigma_scale: float = SIGMA_SCALE, sigma_min: float = SIGMA_MIN,
) -> np.ndarray:
    """Heat-maps as the research packer defined them: a Gaussian per glint at full resolution with
    sigma = max(sigma_min, radius·sigma_scale), cut at 3 sigma, then area-resized and clipped to [0, 1].

    points: C×2 (x, y) in image pixels, NaN where the glint is absent; radii: C. Returns C×h×w float32.
    """
    H, W = image_hw
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    maps = np.zeros((len(points), H, W), np.float32)
    for c, ((x, y), r) in enumerate(zip(points, radii)):
        if np.isnan(x):
            continue
        sigma = max(sigma_min, float(r) * sigma_scale)
        d2 = (xx - x) ** 2 + (yy - y) ** 2
        g = np.exp(-d2 / (2 * sigma**2))
        g[d2 > (3 * sigma) ** 2] = 0
        maps[c] = np.maximum(maps[c], g)
    small = F.adaptive_avg_pool2d(torch.from_numpy(maps)[None], heatmap_hw)[0].numpy()
    return np.clip(small, 0.0, 1.0)


def synth_sample(rng: np.random.Generator, size: int, num_glints: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (uint8 H×W), glint centres (C×2, NaN if absent) and radii (C)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    s = size / 64.0
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12) * size, size / 2 + rng.uniform(-0.08, 0.08) * size
    img = 0.45 + 0.1 * (xx / size) + rng.normal(0, 0.02)  # skin with a lighting gradient
    sclera = ((xx - size / 2) / (0.46 * size)) ** 2 + ((yy - size / 2) / (0.28 * size)) ** 2 < 1
    img[sclera] = 0.72
    iris_r = rng.uniform(0.2, 0.24) * size
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < iris_r**2] = 0.33
    pupil_r = rng.uniform(0.08, 0.12) * size
    img[((xx - cx) / pupil_r) ** 2 + ((yy - cy) / (pupil_r * rng.uniform(0.85, 1.0))) ** 2 < 1] = 0.07

    ring_rx, ring_ry = pupil_r * rng.uniform(1.5, 1.9), pupil_r * rng.uniform(1.2, 1.6)
    angles = -np.pi / 2 + 2 * np.pi * np.arange(num_glints) / num_glints + rng.normal(0, 0.05, num_glints)
    points = np.stack([cx + ring_rx * np.cos(angles), cy + ring_ry * np.sin(angles)], 1).astype(np.float32)
    radii = rng.uniform(0.8, 1.6, num_glints).astype(np.float32) * s
    absent = rng.random(num_glints) < 0.15
    inside = (points >= 1).all(1) & (points <= size - 2).all(1)
    points[absent | ~inside] = np.nan
    for (x, y), r in zip(points, radii):
        if not np.isnan(x):
            img = np.maximum(img, 0.98 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (0.6 * r) ** 2)))
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), points, radii


def write_synthetic(out: str | Path, num_samples: int = 512, size: int = 64, num_glints: int = 8, seed: int = 0) -> Path:
    """Write a demo file in the SEED layout (plus `points`, `radii`); appears atomically at `out`."""
    if size % 16:
        raise ValueError(f"image size {size} must be divisible by 16")
    out = Path(out)
    rng = np.random.default_rng(seed)
    hm = size // OUTPUT_STRIDE
    images = np.zeros((num_samples, size, size), np.uint8)
    heatmaps = np.zeros((num_samples, num_glints, hm, hm), np.float16)
    points = np.zeros((num_samples, num_glints, 2), np.float32)
    radii = np.zeros((num_samples, num_glints), np.float32)
    for i in range(num_samples):
        images[i], points[i], radii[i] = synth_sample(rng, size, num_glints)
        heatmaps[i] = render_heatmaps(points[i], radii[i], (size, size), (hm, hm))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            chunk = lambda a: (1,) + a.shape[1:]  # noqa: E731 - one sample per chunk
            for name, arr in (("images", images), ("heatmaps", heatmaps), ("points", points), ("radii", radii)):
                f.create_dataset(name, data=arr, chunks=chunk(arr), compression="gzip")
            f.create_dataset("present", data=(~np.isnan(points[..., 0])).astype(np.uint8), compression="gzip")
            f.create_dataset("stems", data=[f"synth_{i:06d}" for i in range(num_samples)], dtype=h5py.string_dtype())
            f.attrs.update(
                num_classes=num_glints, sigma_scale=SIGMA_SCALE, sigma_min=SIGMA_MIN, img_h=size, img_w=size,
                hm_h=hm, hm_w=hm, prefix="g", source="glint-track synth", seed=seed,
            )
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
