"""COCO keypoints, the export of CVAT and Label Studio: read by `pack --coco`, written by `predict --coco-out`.

A COCO file lists `images` (id, file_name), `categories` whose `keypoints` name the points (g1…gN here), and
`annotations` whose `keypoints` hold x, y, v per named point: v = 2 labelled and visible (a glint), 1 labelled but
not visible and 0 not labelled (no glint). Coordinates are pixel indices (pixel i's centre at i), as COCO's are.
The file is someone else's: its size is bounded before it is read, every image it names must be a regular file
inside its folder, and every value is checked before it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glint_track.constants import COCO_DIGEST, COCO_FROM, SIGMA_MIN, SIGMA_SCALE
from glint_track.data.frames import frame_stem
from glint_track.data.pack import UNUSABLE, Unusable, group_of, in_image, open_gray, resize_gray, warn_capped
from glint_track.data.packing import Layout, PackedSample, PackSummary, trainable_sizes, write_samples
from glint_track.errors import GlintTrackError, shown
from glint_track.files import first_line, unreadable_reason

log = logging.getLogger(__name__)

#: A COCO file larger than this is refused before it is read (about a million annotated frames).
MAX_COCO_BYTES = 512 * 2**20
#: An image a COCO file names may be at most this large on disk (its pixels are bounded again when decoded).
MAX_IMAGE_BYTES = 2**30
VISIBLE = 2


@dataclass
class CocoFrame:
    image: Path  # inside the COCO file's folder
    name: str  # its file_name, as the file gives it
    keypoints: list[Any]  # x, y, v per keypoint of its category
    channels: list[int | None]  # each keypoint's glint (0-based), None for a keypoint that is not a glint


def read_coco(path: Path, num_glints: int, prefix: str) -> tuple[list[CocoFrame], dict[str, str]]:
    """The annotated frames of a COCO keypoints file, and the entries skipped with why."""
    record = _load(path)
    root = path.resolve().parent
    channels = _categories(record, num_glints, prefix)
    images, skipped = {}, {}
    for entry in record["images"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) or "id" not in entry:
            skipped[shown(entry)] = "an image entry without an id and a file_name"
            continue
        image = (root / entry["file_name"]).absolute()
        if reason := unreadable_reason(image, root, MAX_IMAGE_BYTES):
            skipped[entry["file_name"]] = f"its image {reason}"
        else:
            images[_key(entry["id"])] = (image.resolve(), entry["file_name"])
    frames: dict[str, CocoFrame] = {}
    for ann in record["annotations"]:
        ok = isinstance(ann, dict) and _key(ann.get("image_id")) in images and _key(ann.get("category_id")) in channels
        if not ok or not isinstance(ann.get("keypoints"), list):
            continue  # another kind of annotation (boxes, another category), or of an image not read
        image, name = images[_key(ann["image_id"])]
        if name in frames:
            log.warning("%s: %s has a second keypoint annotation; the first is packed", path, shown(name))
            continue
        frames[name] = CocoFrame(image, name, ann["keypoints"], channels[_key(ann["category_id"])])
    for _, name in images.values():
        if name not in frames:
            skipped[name] = "no keypoint annotation (not labelled yet)"
    return list(frames.values()), skipped


def _key(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else "?"


def _load(path: Path) -> dict[str, Any]:
    if reason := unreadable_reason(path, path.resolve().parent, MAX_COCO_BYTES):
        raise GlintTrackError(f"--coco {path}: it {reason.removeprefix('is ')}; pass a COCO keypoints .json file")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError as e:
        raise GlintTrackError(f"--coco {path}: its JSON is nested too deeply to be a COCO file") from e
    except ValueError as e:
        raise GlintTrackError(f"--coco {path}: not a JSON file ({first_line(e)})") from e
    if not isinstance(record, dict) or not all(isinstance(record.get(k), list) for k in ("images", "annotations")):
        raise GlintTrackError(
            f"--coco {path}: not a COCO file (an object with 'images', 'annotations' and 'categories' lists); "
            "export COCO keypoints from CVAT or Label Studio"
        )
    return record


def _categories(record: dict[str, Any], num_glints: int, prefix: str) -> dict[str, list[int | None]]:
    """Each keypoint category's points as glints: g3 → 2; names that are not glints → None."""
    label = re.compile(re.escape(prefix) + r"(\d{1,3})")
    found: dict[str, list[int | None]] = {}
    names_seen: list[str] = []
    for cat in record.get("categories") if isinstance(record.get("categories"), list) else []:
        if not isinstance(cat, dict) or not isinstance(cat.get("keypoints"), list):
            continue
        names = [str(n) for n in cat["keypoints"]]
        names_seen += names
        channels = [int(m.group(1)) - 1 if (m := label.fullmatch(n)) else None for n in names]
        found[_key(cat.get("id"))] = [c if c is not None and 0 <= c < num_glints else None for c in channels]
    if not any(c is not None for cs in found.values() for c in cs):
        raise GlintTrackError(
            f"no keypoint named {prefix}1…{prefix}{num_glints} in the COCO categories (found "
            f"{shown(names_seen[:8]) if names_seen else 'no keypoint category'}); name the glints {prefix}1… in the "
            "annotation tool, or pass --prefix and --num-glints"
        )
    return found


def frame_glints(frame: CocoFrame, size0: tuple[int, int]) -> tuple[dict[int, tuple[float, float]], list[str]]:
    """Each visible glint's point in the source image's pixels, and warnings for the values not usable."""
    kp, warnings_, glints = frame.keypoints, [], {}
    if len(kp) != 3 * len(frame.channels):
        raise Unusable(f"its keypoints hold {len(kp)} values, not 3 for each of the {len(frame.channels)} named")
    H0, W0 = size0
    for i, channel in enumerate(frame.channels):
        x, y, v = kp[3 * i : 3 * i + 3]
        if channel is None or v != VISIBLE:
            continue
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (x, y)):
            warnings_.append(f"g{channel + 1} has the point {shown([x, y])}, not two numbers; dropped")
        elif not (math.isfinite(x) and math.isfinite(y) and in_image(x, y, size0)):
            warnings_.append(f"g{channel + 1} at ({x}, {y}) is outside the {W0}×{H0} image; dropped")
        elif channel in glints:
            warnings_.append(f"g{channel + 1} appears twice; the first is packed")
        else:
            glints[channel] = (float(x), float(y))
    return glints, warnings_


def pack_coco(
    coco: str | Path,
    out: str | Path,
    num_glints: int = 8,
    prefix: str = "g",
    sigma_scale: float = SIGMA_SCALE,
    sigma_min: float = SIGMA_MIN,
    img_size: tuple[int, int] | None = None,
    compression: str = "gzip",
) -> PackSummary:
    """Pack a COCO keypoints file's annotated frames into `out`, as pack_labelme packs a folder (a glint has no
    drawn size in COCO: its heat-map peak has the narrowest width, sigma_min)."""
    coco, out = Path(coco), Path(out)
    frames, skipped = read_coco(coco, num_glints, prefix)
    summary = PackSummary(out=None, skipped=skipped)
    for name, reason in skipped.items():
        log.warning("skipping %s: %s", name, reason)
    samples, groups, size = [], [], img_size
    for frame in frames:
        try:
            gray0 = open_gray(frame.image)
            size = size or gray0.shape
            glints, warnings_ = frame_glints(frame, gray0.shape)
        except UNUSABLE as e:  # ours (Unusable) and what PIL's decoders raise on bad bytes
            summary.skipped[frame.name] = first_line(e)
            log.warning("skipping %s: %s", frame.name, first_line(e))
            continue
        warn_capped(Path(frame.name), warnings_)
        (H0, W0), (H, W) = gray0.shape, size
        sx, sy = W / W0, H / H0
        moved = [(c, (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5, 0.0) for c, (x, y) in sorted(glints.items())]
        points = {f"g{c + 1}": xy for c, xy in glints.items()}
        samples.append(PackedSample(Path(frame.name).stem, resize_gray(gray0, (H, W)), moved, points, None))
        groups.append(group_of(frame.image, coco.resolve().parent))
    if not samples or size is None:
        raise GlintTrackError(
            f"--coco {coco}: none of its {len(frames)} annotated images could be packed (see warnings)"
        )
    layout = Layout(num_glints, size, trainable_sizes(size, None), sigma_scale, sigma_min, prefix)
    provenance = {"source": f"glint-track pack --coco {coco}", COCO_FROM: str(coco.resolve())}
    provenance[COCO_DIGEST] = hashlib.sha256(coco.read_bytes()).hexdigest()
    write_samples(out, samples, groups, layout, provenance, compression, summary)
    return summary


#: What `predict --coco-out` writes as the file's `info.description` (first in the file): how a file it may
#: replace is recognised.
WRITTEN_BY = "glint-track predict"


def written_by_predict(path: Path) -> bool:
    with open(path, "rb") as f:
        return f'"description": "{WRITTEN_BY}"'.encode() in f.read(256)


class CocoOut:
    """`predict`'s glints as one COCO keypoints file, to import as pre-labels into CVAT or Label Studio (or to
    `pack --coco` back). An image is named relative to the file's folder when it lies inside it (else by its own
    name); a video's frame as `<video>_<frame:06d>.png`. Written atomically once every frame is in."""

    def __init__(self, path: Path) -> None:
        self.path, self.root = path, path.absolute().parent
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.glints = 0

    def add(self, name: str, index: int | None, size: tuple[int, int], rows: list[dict]) -> None:
        """One frame (Frame.name; `index` its number in its video, None for an image) and its rows from predict."""
        image_id = len(self.images) + 1
        if index is not None:
            file_name = f"{frame_stem(name)}.png"
        else:
            image = Path(name).absolute()
            file_name = image.relative_to(self.root).as_posix() if image.is_relative_to(self.root) else image.name
        self.images.append({"id": image_id, "file_name": file_name, "height": size[0], "width": size[1]})
        keypoints: list[float] = []
        for row in rows:
            keypoints += [row["x"], row["y"], VISIBLE] if row["present"] else [0, 0, 0]
        visible = sum(bool(r["present"]) for r in rows)
        self.glints = max(self.glints, len(rows))
        self.annotations.append(
            {"id": image_id, "image_id": image_id, "category_id": 1, "keypoints": keypoints, "num_keypoints": visible}
        )

    def close(self) -> None:
        from glint_track.files import atomic_path

        names = [f"g{c + 1}" for c in range(self.glints)]
        record = {
            "info": {"description": WRITTEN_BY},
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": 1, "name": "eye", "supercategory": "eye", "keypoints": names, "skeleton": []}],
        }
        with atomic_path(self.path) as staged:
            staged.write_text(json.dumps(record, indent=1))
