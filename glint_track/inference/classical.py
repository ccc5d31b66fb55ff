"""The research project's classical glint detector, as the baseline the UNet has to beat.

Median denoise → white top-hat (removes everything broader than a glint) → adaptive mean threshold →
connected blobs kept by area and circularity. It finds bright spots, not which LED made them, so it
is scored identity-free (`match_identity_free`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class ClassicalParams:
    """The old project's defaults."""

    denoise: int = 3  # median filter size
    tophat: int = 25  # top-hat structuring element side
    block: int = 11  # adaptive threshold neighbourhood
    c: float = -13.0  # threshold = local mean − c (OpenCV's ADAPTIVE_THRESH_MEAN_C convention)
    area_min: int = 5
    area_max: int = 3000
    circularity_min: float = 0.3


def detect_glints(image: np.ndarray, p: ClassicalParams = ClassicalParams()) -> np.ndarray:
    """Glint centres (K×2, x y in image pixels, intensity-weighted) found in one uint8 image."""
    img = ndimage.median_filter(image.astype(np.float32), size=p.denoise)
    tophat = ndimage.white_tophat(img, size=p.tophat)
    mask = tophat > ndimage.uniform_filter(tophat, size=p.block) - p.c
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros((0, 2), np.float32)
    index = np.arange(1, count + 1)
    area = ndimage.sum_labels(np.ones_like(tophat), labels, index)
    boundary = mask & ~ndimage.binary_erosion(mask)
    perimeter = ndimage.sum_labels(boundary, labels, index)
    circularity = 4 * np.pi * area / np.maximum(perimeter, 1) ** 2
    keep = index[(area >= p.area_min) & (area <= p.area_max) & (circularity >= p.circularity_min)]
    if keep.size == 0:
        return np.zeros((0, 2), np.float32)
    centres = ndimage.center_of_mass(tophat, labels, keep)  # (y, x) each
    return np.array([(x, y) for y, x in centres], np.float32)


def match_identity_free(pred: np.ndarray, truth: np.ndarray, radius: float) -> tuple[int, int, int, list[float]]:
    """Optimal one-to-one matching of detected to annotated glints (any identity) within `radius`:
    (true positives, false positives, false negatives, errors of the matched pairs)."""
    if len(pred) == 0 or len(truth) == 0:
        return 0, len(pred), len(truth), []
    dist = np.linalg.norm(pred[:, None] - truth[None], axis=-1)
    rows, cols = linear_sum_assignment(dist)
    errors = [float(dist[r, c]) for r, c in zip(rows, cols) if dist[r, c] <= radius]
    tp = len(errors)
    return tp, len(pred) - tp, len(truth) - tp, errors


def summarise(tp: int, fp: int, fn: int, errors: list[float]) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "loc_err_mean": float(np.mean(errors)) if errors else float("nan"),
        "loc_err_median": float(np.median(errors)) if errors else float("nan"),
    }
