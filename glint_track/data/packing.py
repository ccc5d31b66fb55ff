"""What `pack` writes, from whichever annotations it read (labelme folders, COCO keypoints): each frame as a sample
at the output size, their heat-maps drawn alike, in the glint HDF5 layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glint_track.constants import OUTPUT_STRIDE
from glint_track.data.corrections import Corrections
from glint_track.data.glint_file import write_glint_file
from glint_track.data.heatmaps import Glint, render_heatmaps
from glint_track.errors import GlintTrackError


@dataclass
class PackSummary:
    out: Path | None
    packed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # file → reason
    glints: int = 0
    groups: int = 0  # participants or sessions (first-level sub-folders) recorded, 0 if not two or more
    corrections: Corrections | None = None  # what the annotator changed in frames a model pre-labelled


@dataclass
class PackedSample:
    stem: str
    image: np.ndarray  # H×W uint8 at the output size
    glints: list[Glint]
    points: dict[str, tuple[float, float]]  # g1… → the glint's centre in the source image's pixels (the first)
    prelabel: Any  # what `predict --labelme-out` recorded the model predicted (PRELABEL_KEY), if anything


def trainable_sizes(size: tuple[int, int], hm_size: tuple[int, int] | None) -> tuple[int, int]:
    """The heat-map size for images of `size`, both as the trainer takes them (else one line with a size that works)."""
    hm = hm_size or (size[0] // OUTPUT_STRIDE, size[1] // OUTPUT_STRIDE)
    if (size[0] % 16 or size[1] % 16) or hm != (size[0] // OUTPUT_STRIDE, size[1] // OUTPUT_STRIDE):
        raise GlintTrackError(
            f"image size {size[0]}x{size[1]} with heat-maps {hm[0]}x{hm[1]}: the trainer needs sides divisible by 16 "
            "and heat-maps of 1/4 the image; pass e.g. --img-size "
            f"{max(16, size[0] // 16 * 16)}x{max(16, size[1] // 16 * 16)}"
        )
    return hm


@dataclass
class Layout:
    """What every packed sample shares: glints, image and heat-map sizes, and how heat-maps are drawn."""

    num_glints: int
    size: tuple[int, int]
    hm: tuple[int, int]
    sigma_scale: float
    sigma_min: float
    prefix: str


def write_samples(
    out: Path,
    samples: list[PackedSample],
    groups: list[str] | None,
    layout: Layout,
    provenance: dict[str, str],
    compression: str,
    summary: PackSummary,
) -> None:
    """Write the packed samples (atomically), with each one's group when there are two or more."""
    lay = layout
    images, heatmaps, points, radii = _arrays(samples, lay.num_glints, lay.size, lay.hm, lay.sigma_scale, lay.sigma_min)
    summary.glints = int((~np.isnan(points[..., 0])).sum())
    attrs = dict(
        num_classes=lay.num_glints,
        sigma_scale=lay.sigma_scale,
        sigma_min=lay.sigma_min,
        img_h=lay.size[0],
        img_w=lay.size[1],
        hm_h=lay.hm[0],
        hm_w=lay.hm[1],
        prefix=lay.prefix,
        **provenance,
    )
    stored_groups = groups if groups and len(set(groups)) > 1 else None
    write_glint_file(out, images, heatmaps, points, radii, [s.stem for s in samples], attrs, compression, stored_groups)
    summary.out, summary.packed = out, len(samples)
    summary.groups = len(set(stored_groups or ()))


def _arrays(
    samples: list[PackedSample],
    num_glints: int,
    size: tuple[int, int],
    hm: tuple[int, int],
    sigma_scale: float,
    sigma_min: float,
) -> tuple[np.ndarray, ...]:
    """images, heat-maps, points and radii of the samples, as the file stores them."""
    n = len(samples)
    images = np.stack([s.image for s in samples])
    heatmaps = np.zeros((n, num_glints, *hm), np.float16)
    points = np.full((n, num_glints, 2), np.nan, np.float32)
    radii = np.full((n, num_glints), np.nan, np.float32)
    for i, s in enumerate(samples):
        heatmaps[i] = render_heatmaps(s.glints, num_glints, size, hm, sigma_scale, sigma_min)
        for c, x, y, r in reversed(s.glints):  # reversed: the first annotation of a channel wins
            points[i, c], radii[i, c] = (x, y), r
    return images, heatmaps, points, radii
