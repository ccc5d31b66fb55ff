"""What an annotator changed in frames a model pre-labelled (`predict --labelme-out`): how far each point was moved,
which glints were added (the model missed them) and which deleted (the model saw a glint that is not there).

That is the model's error on new, real frames, measured where it matters: in the annotator's time. `pack` collects it
from each JSON's PRELABEL_KEY (what the model predicted) against the circles the annotator left.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glint_track.files import atomic_path

#: A point moved further than this (pixels of the frame) was corrected; below it, the annotator left it.
MOVED_PX = 1.0
STATUSES = ("kept", "moved", "added", "deleted")


@dataclass
class Correction:
    json: str
    glint: str
    status: str  # kept (moved ≤ MOVED_PX), moved, added (not predicted), deleted (predicted, not kept)
    predicted_x: float | None
    predicted_y: float | None
    score: float | None
    final_x: float | None
    final_y: float | None
    moved_px: float | None  # between the predicted and the final point, in the frame's pixels


@dataclass
class Corrections:
    """Every pre-labelled glint of a packed folder, against what the annotator left."""

    rows: list[Correction] = field(default_factory=list)
    models: set[str] = field(default_factory=set)  # the model references the pre-labels came from
    frames: int = 0
    digest_parts: list[str] = field(default_factory=list)

    def add(self, json_name: str, prelabel: Any, final: dict[str, tuple[float, float]], content: bytes) -> str | None:
        """One frame: `prelabel` is the JSON's PRELABEL_KEY value (from anyone: checked), `final` the annotator's
        points by label. Returns why the frame's pre-labels were not read, or None."""
        predicted = _predicted(prelabel)
        if predicted is None:
            return "its glint_track pre-labels are not {model, predicted: {g1: [x, y, score], ...}}; not measured"
        self.frames += 1
        self.models.add(str(prelabel.get("model", "")))
        self.digest_parts.append(f"{json_name}:{hashlib.sha256(content).hexdigest()}")
        for glint in sorted(set(predicted) | set(final), key=_glint_number):
            guess, kept = predicted.get(glint), final.get(glint)
            moved = math.dist(guess[:2], kept) if guess and kept else None
            status = (
                "added" if guess is None else "deleted" if kept is None else "moved" if moved > MOVED_PX else "kept"
            )
            self.rows.append(
                Correction(json_name, glint, status, *(guess or (None,) * 3), *(kept or (None,) * 2), moved)
            )
        return None

    def summary(self) -> dict[str, float]:
        """The field metrics: points predicted, how many moved, the mean move, glints added (missed) and deleted."""
        moves = [r.moved_px for r in self.rows if r.moved_px is not None]
        count = {s: sum(r.status == s for r in self.rows) for s in STATUSES}
        return {
            "frames": self.frames,
            "points": count["kept"] + count["moved"] + count["deleted"],
            "moved": count["moved"],
            "moved_px_mean": sum(moves) / len(moves) if moves else float("nan"),
            "missed": count["added"],
            "spurious": count["deleted"],
        }

    def line(self) -> str:
        s = self.summary()
        return (
            f"corrections of {s['frames']} pre-labelled frames: {s['moved']} of {s['points']} points moved more than "
            f"{MOVED_PX:g} px (mean move {s['moved_px_mean']:.2f} px), {s['missed']} glints added (missed by the "
            f"model), {s['spurious']} deleted (spurious)"
        )

    def digest(self) -> str:
        """SHA-256 over the corrected JSON files (names and contents): which corrections these are."""
        return hashlib.sha256("\n".join(sorted(self.digest_parts)).encode()).hexdigest()

    def write_csv(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(Correction.__dataclass_fields__))
            writer.writeheader()
            writer.writerows(asdict(r) for r in self.rows)


def _predicted(prelabel: Any) -> dict[str, tuple[float, float, float]] | None:
    """{glint label: (x, y, score)} of a PRELABEL_KEY value, or None when it is not one (a file from anyone)."""
    if not isinstance(prelabel, dict) or not isinstance(prelabel.get("predicted"), dict):
        return None
    out = {}
    for label, value in prelabel["predicted"].items():
        if not (isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value)):
            return None
        out[str(label)] = (float(value[0]), float(value[1]), float(value[2]))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _glint_number(label: str) -> tuple[int, str]:
    digits = "".join(c for c in label if c.isdigit())
    return (int(digits[:6]) if digits else 0, label)
