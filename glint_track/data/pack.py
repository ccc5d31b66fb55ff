"""labelme annotations → a glint HDF5 file in the research packer's layout (plus `points` and `radii`).

Each JSON's circles labelled `g1`..`gN` (prefix and N configurable) become glint channels 0..N-1:
`points` = [[cx, cy], [px, py]] gives the centre and a rim point, so radius = their distance.
The image comes from `imagePath` (relative to the JSON), else the embedded base64 `imageData`, else an
image with the JSON's stem beside it. Anything unusable is skipped with a warning naming the file.

Annotation folders come from other people, so nothing outside the input folder is read (an imagePath
that leaves it, by `..`, an absolute path or a symlink, is refused), an image's size is checked before
it is decoded, and every value of the JSON is type-checked: a bad file or shape is skipped, never a crash.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from glint_track.constants import (
    PACKED_DIGEST,
    PACKED_FROM,
    PRELABEL_KEY,
    SIGMA_MIN,
    SIGMA_SCALE,
)
from glint_track.data.corrections import Corrections
from glint_track.data.packing import Layout, PackedSample, PackSummary, trainable_sizes, write_samples
from glint_track.errors import GlintTrackError, shown
from glint_track.files import IMAGE_SUFFIXES, first_line, unreadable_reason

log = logging.getLogger(__name__)

#: Larger images are refused before decoding (a few bytes of PNG can declare gigapixels): 8192² at most.
MAX_IMAGE_PIXELS = 8192 * 8192


#: A file with thousands of bad shapes gets this many warnings, then their count (300,001 lines took 43 s).
MAX_WARNINGS_PER_FILE = 5


class Unusable(ValueError):
    """A labelme file that cannot be packed; the message says why (the file is skipped)."""


def _read_record(json_path: Path) -> dict[str, Any]:
    """The JSON object of a labelme file (anything else is Unusable)."""
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
    except RecursionError as e:
        raise Unusable("its JSON is nested too deeply to be a labelme file") from e
    except ValueError as e:  # not UTF-8, not JSON
        raise Unusable(f"not a JSON file ({first_line(e)})") from e
    if not isinstance(record, dict):
        raise Unusable(f"its JSON is {_json_type(record)}, not a labelme annotation (an object with shapes)")
    if not isinstance(record.get("shapes", []), list):
        raise Unusable(f"its 'shapes' is {_json_type(record['shapes'])}, not a list")
    return record


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _image_source(json_path: Path, record: dict[str, Any], root: Path) -> Path | bytes:
    """Where the image is: `imagePath` (relative to the JSON, inside `root`), else the embedded
    `imageData`, else a file with the JSON's stem beside it."""
    image_path, data = record.get("imagePath"), record.get("imageData")
    if isinstance(image_path, str) and image_path:
        candidate = (json_path.parent / image_path).resolve()
        if not candidate.is_relative_to(root):
            if not isinstance(data, str):
                raise Unusable(
                    f"its imagePath {shown(image_path)} is outside the input folder {root}, which is not read; "
                    f"move the image into the folder"
                )
            log.warning(
                "%s: imagePath %s is outside the input folder, not read; using the embedded imageData",
                json_path,
                shown(image_path),
            )
        elif candidate.is_file():
            return candidate
    if isinstance(data, str) and data:
        try:
            return base64.b64decode(data, validate=True)
        except ValueError as e:
            raise Unusable("its imageData is not base64") from e
    for suffix in IMAGE_SUFFIXES:
        candidate = json_path.with_suffix(suffix).resolve()
        if candidate.is_file() and candidate.is_relative_to(root):
            return candidate
    raise Unusable(
        f"no image found (imagePath {shown(image_path)} missing, no imageData, no {json_path.stem}.png/.jpg beside it)"
    )


def open_gray(source: Path | bytes) -> np.ndarray:
    """The image as H×W uint8 grayscale: its size checked before decoding; 16-bit and float images
    scaled to 8 bits by their bit depth (the smallest of 8…16 bits that holds the brightest pixel), not clipped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # PIL's own, higher limit
        raise Unusable(f"its image has more than the {MAX_IMAGE_PIXELS:,} pixels accepted ({first_line(e)})") from e
    with img:
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise Unusable(
                f"its image has more than the {MAX_IMAGE_PIXELS:,} pixels accepted ({img.width}×{img.height})"
            )
        if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
            values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0).clip(0, None)
            top = float(values.max()) if values.size else 0.0
            scale = 1.0 if top <= 1.0 and img.mode == "F" else 2.0 ** max(8, min(16, math.ceil(math.log2(top + 1)))) - 1
            return np.round(values.clip(0, scale) * (255.0 / scale)).astype(np.uint8)
        return np.asarray(img.convert("L"), dtype=np.uint8)


def resize_gray(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 grayscale image at H×W (bilinear), as pack stores it and predict feeds it to the model."""
    H, W = size
    if gray.shape == (H, W):
        return gray
    return np.asarray(Image.fromarray(gray).resize((W, H), Image.Resampling.BILINEAR), dtype=np.uint8)


def _read_glint(
    shape: Any, label: re.Pattern, num_glints: int, size0: tuple[int, int]
) -> tuple[int, float, float, float] | str:
    """(channel, x, y, radius) of one labelme shape in the source image's pixels, or why it is not a usable glint."""
    if not isinstance(shape, dict):
        return f"shape {shown(shape)} is not an object"
    name = str(shape.get("label", ""))
    m = label.fullmatch(name)
    if shape.get("shape_type") != "circle" or not m:
        return f"shape {shown(name)} ({shown(shape.get('shape_type'))}) is not a glint circle"
    channel = int(m.group(1)) - 1 if len(m.group(1)) <= 3 else -1  # g1 … g999: longer numbers are out of range anyway
    if not 0 <= channel < num_glints:
        return f"label {shown(name)} is outside 1..{num_glints}"
    points = shape.get("points")
    try:
        (cx, cy), (px, py) = [(float(x), float(y)) for x, y in points[:2]]
    except (TypeError, ValueError, IndexError):
        return f"glint {shown(name)} has points {shown(points)}, not a centre and a rim point"
    radius = math.hypot(px - cx, py - cy)
    H0, W0 = size0
    if not all(map(math.isfinite, (cx, cy, radius))) or radius > max(H0, W0):
        return f"glint {name!r} has a centre or radius that is not a finite size within the image"
    if not in_image(cx, cy, size0):
        return f"glint {name!r} at ({cx:.1f}, {cy:.1f}) is outside the {W0}×{H0} image; dropped"
    return channel, cx, cy, radius


def in_image(x: float, y: float, size: tuple[int, int]) -> bool:
    """Whether a point (pixel indices: pixel i's centre at i) lies on an H×W image, its edge pixels included."""
    H, W = size
    return -0.5 <= x <= W - 0.5 and -0.5 <= y <= H - 0.5


def _read_sample(
    json_path: Path, root: Path, num_glints: int, label: re.Pattern, size: tuple[int, int] | None
) -> tuple[PackedSample, list[str]]:
    """One annotated image, resized to `size` (H, W) with its glints scaled alike; plus warnings."""
    record = _read_record(json_path)
    gray0 = open_gray(_image_source(json_path, record, root))
    H0, W0 = gray0.shape
    H, W = size or (H0, W0)
    gray = resize_gray(gray0, (H, W))
    sx, sy = W / W0, H / H0
    warnings_, glints, points = [], [], {}
    for shape in record.get("shapes", []):
        glint = _read_glint(shape, label, num_glints, (H0, W0))
        if isinstance(glint, str):
            warnings_.append(glint)
            continue
        channel, cx, cy, radius = glint
        if f"g{channel + 1}" in points:
            warnings_.append(f"label g{channel + 1} appears twice; both are drawn, the first is its point")
        points.setdefault(f"g{channel + 1}", (cx, cy))  # as `predict --labelme-out` labels it
        glints.append((channel, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5, radius * (sx + sy) / 2))
    stem = json_path.stem.encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # a file name of any bytes
    return PackedSample(stem, gray, glints, points, record.get(PRELABEL_KEY)), warnings_


def folder_digest(json_paths: list[Path]) -> str:
    """SHA-256 over a folder's labelme files (names and contents): which annotations a file was packed from."""
    total = hashlib.sha256()
    for path in json_paths:
        total.update(f"{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return total.hexdigest()


def _first_image_size(json_paths: list[Path], root: Path) -> tuple[int, int] | None:
    for path in json_paths:
        try:
            return open_gray(_image_source(path, _read_record(path), root)).shape
        except UNUSABLE:
            continue
    return None


#: What reading a file from someone else may raise: ours, and what PIL's many decoders raise on bad bytes
#: (OSError, ValueError, SyntaxError, struct.error, EOFError, DecompressionBomb*, ZeroDivisionError, …).
UNUSABLE = (Exception,)


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
    groups: bool = True,
) -> PackSummary:
    """Pack every labelme JSON under `in_dir` into `out` (written atomically; nothing with 0 samples). With
    `recursive` and `groups`, each frame's first-level sub-folder (a participant or session: in_dir/p07/…) is its
    group, stored when there are two or more, so training can hold whole people out for validation."""
    in_dir, out = Path(in_dir), Path(out)
    if not in_dir.is_dir():
        raise GlintTrackError(f"{in_dir}: no such folder; pass --in-dir the folder holding the labelme .json files")
    root = in_dir.resolve()
    summary = PackSummary(out=None)
    json_paths = _annotation_files(in_dir, root, recursive, summary)
    size = img_size or _first_image_size(json_paths, root)
    if size is None:
        raise GlintTrackError(
            f"{in_dir}: no labelme .json file with a readable "
            f"image{' (add --recursive for subfolders)' if not recursive else ''}"
        )
    hm = trainable_sizes(size, hm_size)
    label = re.compile(re.escape(prefix) + r"(\d+)")
    samples: list[PackedSample] = []
    sample_groups: list[str] = []
    for path in tqdm(json_paths, desc="packing", unit="file", disable=not sys.stderr.isatty()):
        try:
            sample, warnings_ = _read_sample(path, root, num_glints, label, size)
        except UNUSABLE as e:
            reason = first_line(e) if isinstance(e, Unusable) else f"unreadable ({type(e).__name__}: {first_line(e)})"
            log.warning("skipping %s: %s", path, reason)
            summary.skipped[str(path)] = reason
            continue
        warn_capped(path, warnings_)
        samples.append(sample)
        sample_groups.append(group_of(path, in_dir))
        if sample.prelabel is not None:
            summary.corrections = summary.corrections or Corrections()
            if problem := summary.corrections.add(path.name, sample.prelabel, sample.points, path.read_bytes()):
                log.warning("%s: %s", path, problem)
    if not samples:
        raise GlintTrackError(
            f"{in_dir}: none of {len(json_paths)} labelme files could be packed (see warnings); nothing was written"
        )

    provenance = {
        "source": f"glint-track pack {in_dir}",
        PACKED_FROM: str(root),
        PACKED_DIGEST: folder_digest(json_paths),
    }
    layout = Layout(num_glints, size, hm, sigma_scale, sigma_min, prefix)
    write_samples(out, samples, sample_groups if groups else None, layout, provenance, compression, summary)
    return summary


def warn_capped(path: Path, warnings_: list[str]) -> None:
    """A file's first MAX_WARNINGS_PER_FILE warnings, then how many more there were."""
    for w in warnings_[:MAX_WARNINGS_PER_FILE]:
        log.warning("%s: %s", path, w)
    if len(warnings_) > MAX_WARNINGS_PER_FILE:
        log.warning("%s: %d more such warnings", path, len(warnings_) - MAX_WARNINGS_PER_FILE)


def _annotation_files(in_dir: Path, root: Path, recursive: bool, summary: PackSummary) -> list[Path]:
    """The labelme files to read: regular files inside the folder; the others are skipped with the reason."""
    found = []
    for path in sorted(in_dir.rglob("*.json") if recursive else in_dir.glob("*.json")):
        if reason := unreadable_reason(path, root):
            log.warning("skipping %s: %s", path, reason)
            summary.skipped[str(path)] = reason
        else:
            found.append(path)
    return found


def group_of(json_path: Path, in_dir: Path) -> str:
    """A frame's group: the first sub-folder of `in_dir` it lies in (in_dir/p07/s2/f.json → p07), or '.' for a frame
    in `in_dir` itself; one line, as file names may hold anything."""
    parts = json_path.relative_to(in_dir).parts
    name = parts[0] if len(parts) > 1 else "."
    return " ".join(name.encode("utf-8", "surrogateescape").decode("utf-8", "replace").split())
