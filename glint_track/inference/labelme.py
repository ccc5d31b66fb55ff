"""Pre-labels for labelme: a model's glints on each frame as the labelme JSON `pack` reads, and an order to
correct the frames in (to_review.csv, least confident first).

Each frame's JSON lies beside a copy of its image (a video's frames are written as PNG), so the folder opens in
labelme as it is and packs as it is. A glint below the threshold is left out, not guessed. What the model
predicted is kept in the JSON (its PRELABEL_KEY, which labelme keeps when it saves), so `pack` can tell how far
the annotator moved each point (data/corrections.py). Existing JSON is never overwritten unless asked.
"""

from __future__ import annotations

import csv
import filecmp
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from glint_track.constants import DEFAULT_MATCH_RADIUS, PRELABEL_KEY, SIGMA_MIN, SIGMA_SCALE
from glint_track.data.frames import frame_stem
from glint_track.errors import GlintTrackError
from glint_track.files import atomic_path

#: The circles' radius in model-input pixels: glints up to this size pack to the packer's narrowest heat-map
#: (sigma = max(SIGMA_MIN, radius · SIGMA_SCALE)), so for them the written radius changes nothing.
PRELABEL_RADIUS = SIGMA_MIN / SIGMA_SCALE
#: A present glint scored below this is listed for review.
LOW_SCORE = 0.6
#: The labelme file format version written (the fields are those of labelme 5).
LABELME_VERSION = "5.4.1"
REVIEW_FILE = "to_review.csv"
REVIEW_FIELDS = ("json", "least_score", "missing", "low_score", "too_close", "order_doubtful", "reasons")

#: One glint row of `predict`: image, glint (g1…), x, y (the frame's pixels), score, present.
Row = dict[str, object]


@dataclass
class PrelabelFolder:
    """Writes each frame's labelme JSON (and its image) into `folder`, and the review order at `close`."""

    folder: Path
    model: str  # the model reference the glints came from (a run ID, models:/ URI, or file)
    threshold: float
    overwrite: bool = False
    radius: float | None = None  # in the frame's pixels; default PRELABEL_RADIUS at the model's input size
    reviews: list[dict[str, object]] = field(default_factory=list)

    def check(self, files: list[Path], videos: tuple[str, ...]) -> None:
        """Before any frame runs: refuse JSON that exists (without --overwrite) and two inputs of one name."""
        seen: dict[str, Path] = {}
        for path in files:
            video = path.suffix.lower() in videos
            stem = path.stem
            if stem in seen:
                raise GlintTrackError(
                    f"{seen[stem]} and {path} would both be pre-labelled as {stem}{'_*' if video else ''}.json in "
                    f"{self.folder}; pre-label them into separate folders"
                )
            seen[stem] = path
            pattern = f"{stem}_{'[0-9]' * 6}.json" if video else f"{stem}.json"  # a video's frames: <stem>_000012
            existing = sorted(self.folder.glob(pattern))
            if existing and not self.overwrite:
                raise GlintTrackError(
                    f"{existing[0]} exists (annotations may be in it); pass --overwrite to replace it, or another "
                    "--labelme-out folder"
                )

    def write(
        self, name: str, gray: np.ndarray, video_frame: bool, model_input: tuple[int, int], rows: list[Row]
    ) -> str:
        """The frame's JSON, its image beside it (a copy of the file; a video's frame as PNG) and its review line;
        returns the image's name."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = frame_stem(name)
        image_name = self._write_png(stem, gray) if video_frame else self._copy_image(Path(name))
        h0, w0 = gray.shape
        radius = self.radius or PRELABEL_RADIUS * (w0 / model_input[1] + h0 / model_input[0]) / 2
        record = labelme_record(image_name, (h0, w0), rows, radius, self.model, self.threshold)
        with atomic_path(self.folder / f"{stem}.json") as tmp:
            tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
        scale = (w0 / model_input[1] + h0 / model_input[0]) / 2
        self.reviews.append(review(f"{stem}.json", rows, self.threshold, DEFAULT_MATCH_RADIUS * scale))
        return image_name

    def close(self) -> Path:
        """to_review.csv: the frames by their least confident glint, lowest first, with the reasons."""
        path = self.folder / REVIEW_FILE
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(REVIEW_FIELDS))
            writer.writeheader()
            writer.writerows(sorted(self.reviews, key=lambda r: (r["least_score"], r["json"])))
        return path

    def _copy_image(self, source: Path) -> str:
        """The frame's image file in the folder (its sensor's bit depth kept); its name, for imagePath."""
        target = self.folder / source.name
        if target.exists() and (target.samefile(source) or filecmp.cmp(target, source, shallow=False)):
            return target.name
        if target.exists() and not self.overwrite:
            raise GlintTrackError(f"{target} exists and is another image; pass --overwrite or another --labelme-out")
        shutil.copyfile(source, target)
        return target.name

    def _write_png(self, stem: str, gray: np.ndarray) -> str:
        """A decoded video frame as the PNG its JSON points to; its name."""
        with atomic_path(self.folder / f"{stem}.png") as tmp:
            Image.fromarray(gray).save(tmp, format="PNG")
        return f"{stem}.png"


def labelme_record(
    image_name: str, size: tuple[int, int], rows: list[Row], radius: float, model: str, threshold: float
) -> dict[str, object]:
    """A labelme 5 annotation: one circle per glint found (centre, and a rim point `radius` to its right), labelled
    g1…, its score in the description; and what the model predicted, under PRELABEL_KEY."""
    shapes = [
        {
            "label": r["glint"],
            "points": [[r["x"], r["y"]], [round(float(r["x"]) + radius, 3), r["y"]]],
            "group_id": None,
            "description": f"glint-track score {float(r['score']):.3f}",
            "shape_type": "circle",
            "flags": {},
            "mask": None,
        }
        for r in rows
        if r["present"]
    ]
    predicted = {str(r["glint"]): [r["x"], r["y"], r["score"]] for r in rows if r["present"]}
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": image_name,
        "imageData": None,
        "imageHeight": size[0],
        "imageWidth": size[1],
        PRELABEL_KEY: {"model": model, "threshold": threshold, "predicted": predicted},
    }


def review(json_name: str, rows: list[Row], threshold: float, close_px: float) -> dict[str, object]:
    """Why a frame's pre-labels may need a correction: glints missing (below the threshold), present with a low
    score, two closer than `close_px` (the frame's pixels), or an order round the ring that is not the LEDs'."""
    missing = [r for r in rows if not r["present"]]
    present = [r for r in rows if r["present"]]
    low = [r for r in present if float(r["score"]) < LOW_SCORE]
    close = [
        (a["glint"], b["glint"])
        for i, a in enumerate(present)
        for b in present[i + 1 :]
        if math.dist((a["x"], a["y"]), (b["x"], b["y"])) < close_px
    ]
    doubtful = not ring_order_holds(present)
    reasons = [f"missing {r['glint']} (score {float(r['score']):.2f})" for r in missing]
    reasons += [f"low score {r['glint']} ({float(r['score']):.2f})" for r in low]
    reasons += [f"{a} and {b} closer than {close_px:.1f} px" for a, b in close]
    reasons += ["glint order round the ring doubtful"] if doubtful else []
    return {
        "json": json_name,
        "least_score": round(min((float(r["score"]) for r in rows), default=1.0), 4),
        "missing": len(missing),
        "low_score": len(low),
        "too_close": len(close),
        "order_doubtful": int(doubtful),
        "reasons": "; ".join(reasons),
    }


def ring_order_holds(present: list[Row]) -> bool:
    """Whether the glints found, taken round their centre by angle, come in the order of their numbers (either way
    round, from any start): the LEDs sit in a ring, and the cornea mirrors a ring as a ring in the same order."""
    if len(present) < 3:
        return True
    cx = sum(float(r["x"]) for r in present) / len(present)
    cy = sum(float(r["y"]) for r in present) / len(present)
    by_angle = sorted(present, key=lambda r: math.atan2(float(r["y"]) - cy, float(r["x"]) - cx))
    numbers = [int(str(r["glint"])[1:]) for r in by_angle]
    for sequence in (numbers, numbers[::-1]):
        start = sequence.index(min(sequence))
        rotated = sequence[start:] + sequence[:start]
        if rotated == sorted(rotated):
            return True
    return False
