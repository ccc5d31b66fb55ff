"""labelme annotations → a glint HDF5 file in the research packer's layout (plus `points` and `radii`).

Each JSON's circles labelled `g1`..`gN` (prefix and N configurable) become glint channels 0..N-1:
`points` = [[cx, cy], [px, py]] gives the centre and a rim point, so radius = their distance.
The image comes from `imagePath` (relative to the JSON), else the embedded base64 `imageData`, else an
image with the JSON's stem beside it. Anything unusable is skipped with a warning naming the file.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from glint_track.data import OUTPUT_STRIDE, write_glint_file
from glint_track.errors import GlintTrackError
from glint_track.heatmaps import SIGMA_MIN, SIGMA_SCALE, Glint, render_heatmaps

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class PackSummary:
    out: Path | None
    packed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # file → reason
    glints: int = 0


@dataclass
class _Sample:
    stem: str
    image: np.ndarray  # H×W uint8 at the output size
    glints: list[Glint]


def _load_image(json_path: Path, record: dict) -> Image.Image:
    if record.get("imagePath"):
        candidate = json_path.parent / record["imagePath"]
        if candidate.is_file():
            return Image.open(candidate)
    if record.get("imageData"):
        return Image.open(io.BytesIO(base64.b64decode(record["imageData"])))
    for suffix in IMAGE_SUFFIXES:
        candidate = json_path.with_suffix(suffix)
        if candidate.is_file():
            return Image.open(candidate)
    raise ValueError(f"no image found (imagePath {record.get('imagePath')!r} missing, no imageData, no {json_path.stem}.png/.jpg beside it)")


def _read_sample(
    json_path: Path, num_glints: int, label: re.Pattern, size: tuple[int, int] | None
) -> tuple[_Sample, list[str]]:
    """One annotated image, resized to `size` (H, W) with its glints scaled alike; plus warnings."""
    record = json.loads(json_path.read_text(encoding="utf-8"))
    with _load_image(json_path, record) as img:
        gray = img.convert("L")
    W0, H0 = gray.size
    H, W = size or (H0, W0)
    if (H, W) != (H0, W0):
        gray = gray.resize((W, H), Image.Resampling.BILINEAR)
    sx, sy = W / W0, H / H0
    warnings, glints, seen = [], [], set()
    for shape in record.get("shapes", []):
        name = str(shape.get("label", ""))
        m = label.fullmatch(name)
        if shape.get("shape_type") != "circle" or not m:
            warnings.append(f"shape {name!r} ({shape.get('shape_type')}) is not a glint circle")
            continue
        channel = int(m.group(1)) - 1
        if not 0 <= channel < num_glints:
            warnings.append(f"label {name!r} is outside 1..{num_glints}")
            continue
        (cx, cy), (px, py) = shape["points"][:2]
        radius = float(np.hypot(px - cx, py - cy)) * (sx + sy) / 2
        if channel in seen:
            warnings.append(f"label {name!r} appears twice; both are drawn, the first is its point")
        seen.add(channel)
        glints.append((channel, (float(cx) + 0.5) * sx - 0.5, (float(cy) + 0.5) * sy - 0.5, radius))
    return _Sample(json_path.stem, np.asarray(gray, dtype=np.uint8), glints), warnings


def _first_image_size(json_paths: list[Path]) -> tuple[int, int] | None:
    for path in json_paths:
        try:
            with _load_image(path, json.loads(path.read_text(encoding="utf-8"))) as img:
                return img.size[1], img.size[0]
        except (OSError, ValueError):
            continue
    return None


def pack_labelme(
    in_dir: str | Path,
    out: str | Path,
    num_glints: int = 8,
    prefix: str = "g",
    sigma_scale: float = SIGMA_SCALE,
    sigma_min: float = SIGMA_MIN,
    img_size: tuple[int, int] | None = None,
    hm_size: tuple[int, int] | None = None,
    recursive: bool = False,
    compression: str = "gzip",
) -> PackSummary:
    """Pack every labelme JSON under `in_dir` into `out` (written atomically; nothing with 0 samples)."""
    in_dir, out = Path(in_dir), Path(out)
    if not in_dir.is_dir():
        raise GlintTrackError(f"{in_dir}: no such folder; pass --in-dir the folder holding the labelme .json files")
    json_paths = sorted(in_dir.rglob("*.json") if recursive else in_dir.glob("*.json"))
    size = img_size or _first_image_size(json_paths)
    if size is None:
        raise GlintTrackError(f"{in_dir}: no labelme .json file with a readable image{' (add --recursive for subfolders)' if not recursive else ''}")
    hm = hm_size or (size[0] // OUTPUT_STRIDE, size[1] // OUTPUT_STRIDE)
    if (size[0] % 16 or size[1] % 16) or hm != (size[0] // OUTPUT_STRIDE, size[1] // OUTPUT_STRIDE):
        raise GlintTrackError(
            f"image size {size[0]}x{size[1]} with heat-maps {hm[0]}x{hm[1]}: the trainer needs sides divisible by 16 "
            f"and heat-maps of 1/4 the image; pass e.g. --img-size {max(16, size[0] // 16 * 16)}x{max(16, size[1] // 16 * 16)}"
        )
    label = re.compile(re.escape(prefix) + r"(\d+)")
    summary = PackSummary(out=None)
    samples: list[_Sample] = []
    for path in tqdm(json_paths, desc="packing", unit="file", disable=not sys.stderr.isatty()):
        try:
            sample, warnings = _read_sample(path, num_glints, label, size)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:  # unreadable JSON or image
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("skipping %s: %s", path, reason)
            summary.skipped[str(path)] = reason
            continue
        for w in warnings:
            log.warning("%s: %s", path, w)
        samples.append(sample)
    if not samples:
        raise GlintTrackError(f"{in_dir}: none of {len(json_paths)} labelme files could be packed (see warnings); nothing was written")

    n = len(samples)
    images = np.stack([s.image for s in samples])
    heatmaps = np.zeros((n, num_glints, *hm), np.float16)
    points = np.full((n, num_glints, 2), np.nan, np.float32)
    radii = np.full((n, num_glints), np.nan, np.float32)
    for i, s in enumerate(samples):
        heatmaps[i] = render_heatmaps(s.glints, num_glints, size, hm, sigma_scale, sigma_min)
        for c, x, y, r in reversed(s.glints):  # reversed: the first annotation of a channel wins
            points[i, c], radii[i, c] = (x, y), r
    summary.glints = int((~np.isnan(points[..., 0])).sum())
    attrs = dict(num_classes=num_glints, sigma_scale=sigma_scale, sigma_min=sigma_min, img_h=size[0], img_w=size[1],
                 hm_h=hm[0], hm_w=hm[1], prefix=prefix, source=f"glint-track pack {in_dir}")
    write_glint_file(out, images, heatmaps, points, radii, [s.stem for s in samples], attrs, compression)
    summary.out, summary.packed = out, n
    return summary
