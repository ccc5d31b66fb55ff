"""Built-in demo data: simple synthetic IR eye images with labelled glints, in the packer's HDF5 layout.

Each image has skin, a brighter sclera, an iris and a dark pupil at a random gaze position; the LED
ring's glints sit on an ellipse around the pupil in a fixed order (g1 at the top, clockwise), some are
missing, and sensor noise is added. Enough for the trainer to learn something real in a few CPU minutes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from glint_track.data import OUTPUT_STRIDE, write_glint_file
from glint_track.heatmaps import SIGMA_MIN, SIGMA_SCALE, glints_of, render_heatmaps


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


def write_synthetic(
    out: str | Path, num_samples: int = 512, size: int = 64, num_glints: int = 8, seed: int = 0, labelme_dir: str | Path | None = None,
) -> Path:
    """Write a demo file in the SEED layout (plus `points`, `radii`); appears atomically at `out`.
    With `labelme_dir`, also write each image as PNG with its labelme JSON (what `pack` reads)."""
    if size % 16:
        raise ValueError(f"image size {size} must be divisible by 16")
    out = Path(out)
    rng = np.random.default_rng(seed)
    hm = size // OUTPUT_STRIDE
    images = np.zeros((num_samples, size, size), np.uint8)
    heatmaps = np.zeros((num_samples, num_glints, hm, hm), np.float16)
    points = np.zeros((num_samples, num_glints, 2), np.float32)
    radii = np.zeros((num_samples, num_glints), np.float32)
    stems = [f"synth_{i:06d}" for i in range(num_samples)]
    for i in range(num_samples):
        images[i], points[i], radii[i] = synth_sample(rng, size, num_glints)
        heatmaps[i] = render_heatmaps(glints_of(points[i], radii[i]), num_glints, (size, size), (hm, hm))
        if labelme_dir is not None:
            write_labelme(Path(labelme_dir), stems[i], images[i], points[i], radii[i])
    attrs = dict(num_classes=num_glints, sigma_scale=SIGMA_SCALE, sigma_min=SIGMA_MIN, img_h=size, img_w=size,
                 hm_h=hm, hm_w=hm, prefix="g", source="glint-track synth", seed=seed)
    write_glint_file(out, images, heatmaps, points, radii, stems, attrs)
    return out


def write_labelme(folder: Path, stem: str, image: np.ndarray, points: np.ndarray, radii: np.ndarray) -> None:
    """One image as `stem.png` and its glints as labelme circles `g1`..`gN` in `stem.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{stem}.png")
    shapes = [
        {"label": f"g{c + 1}", "points": [[float(x), float(y)], [float(x + r), float(y)]], "shape_type": "circle",
         "group_id": None, "flags": {}}
        for c, ((x, y), r) in enumerate(zip(points, radii)) if not np.isnan(x)
    ]
    record = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": f"{stem}.png", "imageData": None,
              "imageHeight": int(image.shape[0]), "imageWidth": int(image.shape[1])}
    (folder / f"{stem}.json").write_text(json.dumps(record, indent=1))
