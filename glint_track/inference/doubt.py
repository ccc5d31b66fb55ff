"""What a model is unsure of, frame by frame, for `select --model`: the frames worth an annotator's time next.

A frame is doubted for what `predict --labelme-out` flags for review (glints missing or scored low, two glints
closer than the match radius, an order round the ring that is not the LEDs') and, in a video, for a glint that
jumps between consecutive frames while the other glints stay: an eye moves all its glints together, so one that
leaves the others is a wrong detection on one of the two frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glint_track.constants import DEFAULT_MATCH_RADIUS
from glint_track.data.frames import VIDEO_SUFFIXES, Frame
from glint_track.inference.backends import open_detector
from glint_track.inference.labelme import PrelabelFolder, Row, review
from glint_track.inference.predict import detect, glint_rows

#: A glint moving more than JUMP_PX (the frame's pixels) and JUMP_RATIO times the median move of the other glints,
#: from one video frame to the next, has jumped.
JUMP_PX = 3.0
JUMP_RATIO = 4.0


@dataclass
class FrameDoubts:
    """Called on each frame in order: how much the model doubts it (the number of reasons, plus 1 − the least
    glint score) and why, in words; the rows it predicted are kept for the frames chosen."""

    model_ref: str
    threshold: float
    device: str = "auto"
    backend: str = "torch"
    _previous: dict[str, tuple[int, list[Row]]] = field(default_factory=dict)  # sequence → (frame index, rows)

    def __post_init__(self) -> None:
        self.detector = open_detector(self.model_ref, self.backend, self.device)

    def rows(self, frame: Frame) -> tuple[list[Row], tuple[int, int]]:
        """The model's glints on `frame` (predict's rows) and the model input size it ran at."""
        ((_, (xy, score), size),) = detect(self.detector, [frame], self.detector.trained_size)
        return glint_rows(frame, xy, score, size, self.threshold), size

    def __call__(self, frame: Frame) -> tuple[float, str]:
        rows, size = self.rows(frame)
        h0, w0 = frame.gray.shape
        close_px = DEFAULT_MATCH_RADIUS * (w0 / size[1] + h0 / size[0]) / 2
        flagged = review(frame.name, rows, self.threshold, close_px)
        reasons = [r for r in str(flagged["reasons"]).split("; ") if r]
        if Path(frame.sequence).suffix.lower() in VIDEO_SUFFIXES:  # frames in time order (an HDF5 file's are not)
            before = self._previous.get(frame.sequence)
            if before is not None and before[0] == frame.index - 1:
                reasons += jumps(before[1], rows)
            self._previous[frame.sequence] = (frame.index, rows)
        return len(reasons) + 1.0 - float(flagged["least_score"]), "; ".join(reasons)


def jumps(before: list[Row], after: list[Row]) -> list[str]:
    """The glints present in both frames that moved far more than the others did."""
    moves = {
        a["glint"]: math.dist((a["x"], a["y"]), (b["x"], b["y"]))
        for a, b in zip(before, after, strict=True)
        if a["present"] and b["present"]
    }
    found = []
    for glint, move in moves.items():
        others = [m for g, m in moves.items() if g != glint]
        usual = float(np.median(others)) if others else 0.0
        if move > JUMP_PX and move > JUMP_RATIO * usual:
            found.append(f"{glint} jumped {move:.1f} px while the others moved {usual:.1f}")
    return found


@dataclass
class ModelGuide(FrameDoubts):
    """FrameDoubts for `select`, which also writes each chosen frame with its pre-labels (labelme JSON beside the
    image, as `predict --labelme-out` does) and the folder's to_review.csv."""

    _folder: PrelabelFolder | None = None

    def write(self, frame: Frame, out: Path) -> str:
        rows, size = self.rows(frame)
        return self._prelabels(out).write(frame.name, frame.gray, frame.index is not None, size, rows)

    def close(self, out: Path) -> None:
        self._prelabels(out).close()

    def _prelabels(self, out: Path) -> PrelabelFolder:
        if self._folder is None:
            self._folder = PrelabelFolder(out, self.model_ref, self.threshold)
        return self._folder
