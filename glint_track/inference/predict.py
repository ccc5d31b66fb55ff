"""`glint-track predict`: glint coordinates for images, image folders and videos of any size, written as frames
are decoded (CSV or JSON, in batches), with a progress bar on a terminal and optional overlays."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from tqdm import tqdm

from glint_track.constants import DEFAULT_THRESHOLD, SIZE_MULTIPLE
from glint_track.data.coco import CocoOut, written_by_predict
from glint_track.data.frames import VIDEO_SUFFIXES, Frame, frame_count, frames, sources
from glint_track.data.pack import resize_gray
from glint_track.errors import GlintTrackError
from glint_track.figures import draw_glints
from glint_track.files import atomic_path, refuse_replacing, refuse_writing_into, starts_with
from glint_track.inference.backends import Detector, open_detector
from glint_track.inference.labelme import PrelabelFolder

FIELDS = ("image", "glint", "x", "y", "score", "present")


@dataclass
class Predicted:
    frames: int
    glints: int
    review: Path | None = None  # to_review.csv of the labelme folder


def predict(
    model_ref: str,
    inputs: list[str],
    out: Path | None,
    overlay_dir: Path | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    input_size: tuple[int, int] | None = None,
    device_name: str = "auto",
    backend: str = "torch",
    batch_size: int = 16,
    window: int | None = None,
    labelme: PrelabelFolder | None = None,
    coco: Path | None = None,
) -> Predicted:
    """One row per frame and glint: image, glint (g1…), x, y (the frame's own pixels), score, present, into `out`
    and, with `labelme`, as each frame's pre-labels. Frames are resized to `input_size` (default: the training
    images' size) and run `batch_size` at a time; with `window`, one at a time, each on the window×window square
    (model-input pixels) around the previous frame's glints. With `coco`, also as one COCO keypoints file."""
    files = sources(inputs)
    _check_outputs(files, out, overlay_dir, labelme, coco, window)
    coco_out = CocoOut(coco) if coco is not None else None
    detector = open_detector(model_ref, backend, device_name)
    size = input_size or detector.trained_size
    done = Predicted(0, 0)
    with _Rows.at(out) as rows:
        bar = tqdm(total=frame_count(files), unit="frame", disable=not sys.stderr.isatty())
        stream = (
            _windowed(detector, frames(files), size, window, threshold)
            if window
            else _batched(detector, frames(files), size, batch_size)
        )
        for frame, (xy, score), (h, w) in stream:
            found = glint_rows(frame, xy, score, (h, w), threshold)
            rows.write(found)
            done.frames += 1
            done.glints += sum(r["present"] for r in found)
            if overlay_dir is not None:
                _overlay(overlay_dir, frame, found)
            if labelme is not None:
                labelme.write(frame.name, frame.gray, frame.index is not None, (h, w), found)
            if coco_out is not None:
                coco_out.add(frame.name, frame.index, frame.gray.shape, found)
            bar.update(1)
        bar.close()
    if coco_out is not None:
        coco_out.close()
    if labelme is not None:
        done.review = labelme.close()
    return done


def _check_outputs(
    files: list[Path],
    out: Path | None,
    overlay_dir: Path | None,
    labelme: PrelabelFolder | None,
    coco: Path | None,
    window: int | None,
) -> None:
    """Every output checked before a model is loaded: a name it can be written as, never over an input or a file
    someone else wrote."""
    if out is None and labelme is None and coco is None:
        raise GlintTrackError("nothing to write: pass --out preds.csv, --labelme-out FOLDER or --coco-out FILE.json")
    if coco is not None and coco.suffix.lower() != ".json":
        raise GlintTrackError(f"--coco-out {coco}: use a .json file name")
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise GlintTrackError(f"--out {out}: use a .csv or .json file name")
    if window is not None and window % SIZE_MULTIPLE:
        raise GlintTrackError(f"--window {window} is not a multiple of {SIZE_MULTIPLE}; use e.g. 128")
    if out is not None:
        refuse_replacing(out, "--out", rows_written_by_predict, "predictions glint-track wrote")
    if overlay_dir is not None:
        refuse_writing_into(overlay_dir, "--overlay-dir", files)
    if labelme is not None:
        labelme.check(files, VIDEO_SUFFIXES)
    if coco is not None:
        refuse_replacing(coco, "--coco-out", written_by_predict, "a COCO file glint-track predict wrote")


Detected = tuple[Frame, tuple[np.ndarray, np.ndarray], tuple[int, int]]  # frame, (xy C×2, score C), model input


def _batched(
    detector: Detector, stream: Iterator[Frame], size: tuple[int, int] | None, batch_size: int
) -> Iterator[Detected]:
    """Consecutive frames that resize to the same model input, `batch_size` per call."""
    batch: list[Frame] = []
    for frame in stream:
        if batch and (len(batch) == batch_size or input_size_of(batch[0], size) != input_size_of(frame, size)):
            yield from detect(detector, batch, size)
            batch = []
        batch.append(frame)
    if batch:
        yield from detect(detector, batch, size)


def detect(detector: Detector, batch: list[Frame], size: tuple[int, int] | None) -> Iterator[Detected]:
    """Frames that resize to one model input, in one call: each with its glints and that input size."""
    h, w = input_size_of(batch[0], size)
    xy, score = detector(np.stack([resize_gray(frame.gray, (h, w)) for frame in batch]))
    for i, frame in enumerate(batch):
        yield frame, (xy[i], score[i]), (h, w)


def _windowed(
    detector: Detector, stream: Iterator[Frame], size: tuple[int, int] | None, window: int, threshold: float
) -> Iterator[Detected]:
    """Each frame on the window around the glints of the frame before it in its video or folder: the whole frame
    first, and again after a frame where fewer than half the glints were found."""
    centre, sequence = None, None
    for frame in stream:
        h, w = input_size_of(frame, size)
        image = resize_gray(frame.gray, (h, w))
        if frame.sequence != sequence or window >= min(h, w):
            centre, sequence = None, frame.sequence
        top = left = 0
        if centre is not None:
            top, left = window_corner(centre, window, (h, w))
            image = image[top : top + window, left : left + window]
        xy, score = detector(np.ascontiguousarray(image[None]))
        xy, score = xy[0] + np.array([left, top], np.float32), score[0]
        centre = glints_centre(xy, score, threshold)
        yield frame, (xy, score), (h, w)


def glints_centre(xy: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float] | None:
    """Where the next frame's window is centred: the mean (x, y) of one frame's glints (C×2, C), or None when
    fewer than half were found (the track is lost: the next frame runs whole)."""
    found = score >= threshold
    return tuple(xy[found].mean(0)) if found.sum() * 2 >= len(found) else None


def window_corner(centre: tuple[float, float], window: int, size: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the window×window square nearest to centring (x, y) in a frame of `size`, on the grid of
    SIZE_MULTIPLE pixels: the network pools by that factor, so on that grid the window's features are the whole
    frame's (away from its edges) and it finds the same positions (measured: 0.008 px mean apart, against 0.23 px
    with the corner anywhere)."""
    h, w = size
    top = round((centre[1] - window / 2) / SIZE_MULTIPLE) * SIZE_MULTIPLE
    left = round((centre[0] - window / 2) / SIZE_MULTIPLE) * SIZE_MULTIPLE
    return int(np.clip(top, 0, h - window)), int(np.clip(left, 0, w - window))


def input_size_of(frame: Frame, input_size: tuple[int, int] | None) -> tuple[int, int]:
    """The model input a frame is resized to: `input_size`, else its own size on the 16-pixel grid."""
    h0, w0 = frame.gray.shape
    return input_size or (
        max(SIZE_MULTIPLE, round(h0 / SIZE_MULTIPLE) * SIZE_MULTIPLE),
        max(SIZE_MULTIPLE, round(w0 / SIZE_MULTIPLE) * SIZE_MULTIPLE),
    )


def glint_rows(
    frame: Frame, xy: np.ndarray, score: np.ndarray, size: tuple[int, int], threshold: float
) -> list[dict[str, object]]:
    """One row per glint of a frame, its position back in the frame's own pixels."""
    h0, w0 = frame.gray.shape
    sx, sy = w0 / size[1], h0 / size[0]
    return [
        {
            "image": frame.name,
            "glint": f"g{c + 1}",
            "x": round(float((gx + 0.5) * sx - 0.5), 3),  # back to the frame's own pixels
            "y": round(float((gy + 0.5) * sy - 0.5), 3),
            "score": round(float(s), 4),
            "present": bool(s >= threshold),
        }
        for c, ((gx, gy), s) in enumerate(zip(xy, score))
    ]


def _overlay(folder: Path, frame: Frame, rows: list[dict[str, object]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    found = [(c, r["x"], r["y"]) for c, r in enumerate(rows) if r["present"]]
    h0, w0 = frame.gray.shape
    name = Path(frame.name.replace("#", "_")).stem
    draw_glints(frame.gray, found, scale=max(1.0, 256 / max(h0, w0))).save(folder / f"{name}.png")


def rows_written_by_predict(path: Path) -> bool:
    """A file of predictions (so a new run of predict may replace it): what _Rows writes first, the CSV header or
    a JSON array of rows (possibly empty)."""
    return starts_with(path, ",".join(FIELDS).encode(), b'[\n {"image": ', b"[\n]")


class _Rows:
    """Rows written as they come: CSV with a header, or one JSON array (nowhere without a file: labelme alone)."""

    def __init__(self, f: IO[str], suffix: str) -> None:
        self.f, self.json, self.count = f, suffix == ".json", 0
        self.csv = None if self.json else csv.DictWriter(f, fieldnames=list(FIELDS))

    @staticmethod
    @contextmanager
    def at(out: Path | None) -> Iterator[_Rows]:
        """Rows into `out`, complete or not at all (a temporary file renamed at the end)."""
        if out is None:
            with _Rows(io.StringIO(), ".json") as rows:
                yield rows
            return
        with atomic_path(out) as tmp, open(tmp, "w", newline="") as f, _Rows(f, out.suffix.lower()) as rows:
            yield rows

    def __enter__(self) -> _Rows:
        if self.csv is not None:
            self.csv.writeheader()
        else:
            self.f.write("[")
        return self

    def write(self, rows: list[dict[str, object]]) -> None:
        if self.csv is not None:
            self.csv.writerows(rows)
        else:
            for row in rows:
                self.f.write(("," if self.count else "") + "\n " + json.dumps(row))
                self.count += 1
        self.f.flush()

    def __exit__(self, *exc: object) -> None:
        if self.json:
            self.f.write("\n]\n")
