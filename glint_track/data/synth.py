"""Built-in demo data: synthetic infrared eye images with labelled glints, in the packer's HDF5 layout.

Skin with uneven light, an eye opening between eyelids, sclera, a textured iris and an elliptical pupil
that move with gaze, eyelashes, the LED ring's glints reflected by the cornea (occluded by the lids or
lost off the cornea), spurious reflections from glasses, defocus, exposure changes and sensor noise.
Deterministic from the seed. Meant for pipeline tests and demos, not as a substitute for real data.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from glint_track.data.eye_render import render_sample
from glint_track.data.glint_file import write_glint_file
from glint_track.data.heatmaps import SIGMA_MIN, SIGMA_SCALE, glints_of, render_heatmaps
from glint_track.model import OUTPUT_STRIDE


def _blob(img: np.ndarray, x: float, y: float, sx: float, sy: float, value: float, angle: float = 0.0) -> None:
    """Blend a bright (or dark) elliptical Gaussian spot into `img` in place, over a local window only."""
    H, W = img.shape
    reach = 3 * max(sx, sy)
    x0, x1 = max(0, int(x - reach)), min(W, int(x + reach) + 2)
    y0, y1 = max(0, int(y - reach)), min(H, int(y + reach) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u, v = (xx - x) * c + (yy - y) * s, -(xx - x) * s + (yy - y) * c
    w = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - w) + value * w


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (defocus) of a float image: one shifted, weighted sum per kernel tap."""
    if sigma < 0.3:
        return img
    r = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    H, W = img.shape
    p = np.pad(img, r, mode="edge")
    rows = sum(w * p[:, j : j + W] for j, w in enumerate(k))
    return sum(w * rows[j : j + H] for j, w in enumerate(k))


def synth_sample(
    rng: np.random.Generator, size: int, num_glints: int, difficulty: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One IR eye image (uint8 H×W), glint centres (C×2, NaN if absent) and radii (C).

    Geometry follows pupil-centre/corneal-reflection tracking: the pupil moves with gaze, the glint
    pattern (the LED ring mirrored by the convex cornea) moves about half as far, and foreshortens and
    compresses along the gaze direction, keeping the LED order. Glints off the cornea or behind an
    eyelid are absent. `difficulty` (0…1) scales gaze range, eyelid closure, distractors, blur and noise.
    """
    d = float(np.clip(difficulty, 0.0, 1.0))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    s = size / 128.0
    ex, ey = size / 2 + rng.normal(0, 0.04) * size, size / 2 + rng.normal(0, 0.04) * size  # eye centre

    # skin: smooth uneven illumination
    img = np.full((size, size), rng.uniform(0.38, 0.5), np.float32)
    for _ in range(3):
        _blob(img, rng.uniform(0, size), rng.uniform(0, size), size * 0.4, size * 0.3, rng.uniform(0.3, 0.6))

    # eye opening between two eyelid curves; more closed at higher difficulty
    half_w = size * rng.uniform(0.36, 0.44)
    upper = ey - size * rng.uniform(0.16, 0.27) * (1 - 0.8 * d * rng.random())  # a drooping lid hides top glints
    lower = ey + size * rng.uniform(0.15, 0.22)
    t = np.clip(1 - ((xx - ex) / half_w) ** 2, 0, None)
    upper_lid, lower_lid = ey - (ey - upper) * t, ey + (lower - ey) * t
    opening = (yy > upper_lid) & (yy < lower_lid)

    # sclera, iris with radial texture and dark limbus, pupil; gaze moves them together
    gaze = rng.uniform(-1, 1, 2) * (0.35 + 0.5 * d)
    iris_r = size * rng.uniform(0.16, 0.19)
    ix, iy = ex + gaze[0] * size * 0.17, ey + gaze[1] * size * 0.08
    eye = np.where(opening, rng.uniform(0.62, 0.75), img).astype(np.float32)
    rr = np.hypot(xx - ix, yy - iy)
    theta = np.arctan2(yy - iy, xx - ix)
    texture = sum(rng.uniform(0.01, 0.04) * np.sin(k * theta + rng.uniform(0, 6.3)) for k in rng.integers(7, 40, 6))
    iris = (0.34 + texture + 0.05 * (rr / iris_r)).astype(np.float32)
    iris = np.where(rr > 0.88 * iris_r, iris - 0.08, iris)  # limbal ring
    in_iris = (rr < iris_r) & opening
    eye = np.where(in_iris, iris, eye)
    pupil_r = iris_r * rng.uniform(0.3, 0.55)
    g_norm = np.hypot(*gaze) + 1e-6
    along = ((xx - ix) * gaze[0] + (yy - iy) * gaze[1]) / g_norm
    across = (-(xx - ix) * gaze[1] + (yy - iy) * gaze[0]) / g_norm
    squash = 1 - 0.25 * min(g_norm, 1.0)  # a pupil seen obliquely is an ellipse
    in_pupil = ((along / (pupil_r * squash)) ** 2 + (across / pupil_r) ** 2 < 1) & opening
    img = np.where(in_pupil, rng.uniform(0.04, 0.1), eye).astype(np.float32)
    img = np.where(opening, img, img * 0.95)  # lid edges a little darker
    for lid in (upper_lid, lower_lid):
        img -= 0.08 * np.exp(-0.5 * ((yy - lid) / (1.5 * s)) ** 2) * (t > 0)

    _eyelashes(img, rng, ex, ey, upper, half_w, size)

    # glints: the LED ring reflected by the cornea, identities in ring order (g1 at the top, clockwise)
    cornea_r = iris_r * 1.05
    gx, gy = ex + gaze[0] * size * 0.09, ey + gaze[1] * size * 0.04
    rho = cornea_r * rng.uniform(0.42, 0.55)
    angles = -np.pi / 2 + 2 * np.pi * np.arange(num_glints) / num_glints + rng.normal(0, 0.03, num_glints)
    u = np.stack([np.cos(angles), np.sin(angles)], 1) * rho
    u *= (1 - 0.12 * (np.hypot(u[:, 0], u[:, 1]) / rho) ** 2)[:, None]  # convex mirror: outer points compressed
    unit = gaze / g_norm
    u_along = u @ unit
    u += np.outer(u_along * (squash - 1), unit)  # foreshortened along the gaze direction
    points = (u + [gx, gy]).astype(np.float32)
    radii = (rng.uniform(1.0, 1.8, num_glints) * s).astype(np.float32)
    xi = np.clip(points[:, 0].round().astype(int), 0, size - 1)
    yi = np.clip(points[:, 1].round().astype(int), 0, size - 1)
    on_cornea = np.hypot(points[:, 0] - ix, points[:, 1] - iy) < cornea_r
    absent = ~on_cornea | ~opening[yi, xi] | (rng.random(num_glints) < 0.03)
    points[absent] = np.nan
    for (x, y), r in zip(points, radii):
        if not np.isnan(x):
            _blob(img, x, y, 0.6 * r, 0.6 * r, rng.uniform(0.93, 1.0))

    _glasses_reflections(img, rng, size, d)
    return _sensor(img, rng, size, d), points, radii


def _eyelashes(
    img: np.ndarray, rng: np.random.Generator, ex: float, ey: float, upper: float, half_w: float, size: int
) -> None:
    """Thin dark strokes along the upper lid."""
    s = size / 128.0
    for _ in range(int(rng.integers(15, 40))):
        x0 = ex + rng.uniform(-0.9, 0.9) * half_w
        y0 = ey - (ey - upper) * max(0.0, 1 - ((x0 - ex) / half_w) ** 2)
        length, angle = size * rng.uniform(0.04, 0.1), -np.pi / 2 + rng.normal(0, 0.4) + (x0 - ex) / half_w * 0.5
        for f in np.linspace(0, 1, 5):
            _blob(
                img,
                x0 + f * length * np.cos(angle),
                y0 + f * length * np.sin(angle) + f * f * length * 0.3,
                0.5 * s + 0.3,
                0.5 * s + 0.3,
                rng.uniform(0.05, 0.15),
            )


def _glasses_reflections(img: np.ndarray, rng: np.random.Generator, size: int, d: float) -> None:
    """Specular reflections from glasses: bright, unlabelled distractors, more of them when harder."""
    s = size / 128.0
    for _ in range(rng.poisson(0.4 + 2.0 * d)):
        _blob(
            img,
            rng.uniform(0, size),
            rng.uniform(0, size),
            rng.uniform(0.8, 4) * s,
            rng.uniform(0.8, 2) * s,
            rng.uniform(0.8, 1.0),
            rng.uniform(0, np.pi),
        )


def _sensor(img: np.ndarray, rng: np.random.Generator, size: int, d: float) -> np.ndarray:
    """Defocus, exposure, shot and read noise; the uint8 image."""
    s = size / 128.0
    img = _blur(img, rng.uniform(0, 0.3 + 1.2 * d) * s)
    img = np.clip(img * rng.uniform(0.8, 1.2), 0, 1) ** rng.uniform(0.85, 1.15)
    noise = rng.normal(0, 1, img.shape) * np.sqrt(0.0004 + (0.001 + 0.004 * d) * img)
    return (np.clip(img + noise, 0, 1) * 255).astype(np.uint8)


def _sample(seed: int, i: int, size: int, num_glints: int, difficulty: float) -> tuple[np.ndarray, ...]:
    """Sample i of a data set: its own random stream, so it does not depend on the count or on workers."""
    image, points, radii = render_sample(np.random.default_rng([seed, i]), size, num_glints, difficulty)
    hm = size // OUTPUT_STRIDE
    return image, points, radii, render_heatmaps(glints_of(points, radii), num_glints, (size, size), (hm, hm))


def write_synthetic(
    out: str | Path,
    num_samples: int = 512,
    size: int = 128,
    num_glints: int = 8,
    seed: int = 0,
    labelme_dir: str | Path | None = None,
    difficulty: float = 0.5,
) -> Path:
    """Write a demo file in the SEED layout (plus `points`, `radii`); appears atomically at `out`.
    With `labelme_dir`, also write each image as PNG with its labelme JSON (what `pack` reads).
    Large sets are generated on every CPU core; the result is the same either way."""
    if size % 16:
        raise ValueError(f"image size {size} must be divisible by 16")
    out = Path(out)
    jobs = [(seed, i, size, num_glints, difficulty) for i in range(num_samples)]
    workers = min(os.cpu_count() or 1, num_samples // 256)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            samples = list(pool.map(_sample, *zip(*jobs), chunksize=64))
    else:
        samples = [_sample(*job) for job in jobs]
    images, points, radii, heatmaps = (np.stack(parts) for parts in zip(*samples))
    stems = [f"synth_{i:06d}" for i in range(num_samples)]
    if labelme_dir is not None:
        for i, stem in enumerate(stems):
            write_labelme(Path(labelme_dir), stem, images[i], points[i], radii[i])
    hm = size // OUTPUT_STRIDE
    attrs = dict(
        num_classes=num_glints,
        sigma_scale=SIGMA_SCALE,
        sigma_min=SIGMA_MIN,
        img_h=size,
        img_w=size,
        hm_h=hm,
        hm_w=hm,
        prefix="g",
        source="glint-track synth",
        seed=seed,
        difficulty=difficulty,
    )
    write_glint_file(out, images, heatmaps.astype(np.float16), points, radii, stems, attrs)
    return out


def write_labelme(folder: Path, stem: str, image: np.ndarray, points: np.ndarray, radii: np.ndarray) -> None:
    """One image as `stem.png` and its glints as labelme circles `g1`..`gN` in `stem.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{stem}.png")
    shapes = [
        {
            "label": f"g{c + 1}",
            "points": [[float(x), float(y)], [float(x + r), float(y)]],
            "shape_type": "circle",
            "group_id": None,
            "flags": {},
        }
        for c, ((x, y), r) in enumerate(zip(points, radii))
        if not np.isnan(x)
    ]
    record = {
        "version": "5.4.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": f"{stem}.png",
        "imageData": None,
        "imageHeight": int(image.shape[0]),
        "imageWidth": int(image.shape[1]),
    }
    (folder / f"{stem}.json").write_text(json.dumps(record, indent=1))
