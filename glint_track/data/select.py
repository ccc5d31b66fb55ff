"""`glint-track select`: which frames to label next — the first ones, before any model exists, and later ones.

As DeepLabCut's k-means frame extraction: every frame is reduced to a small thumbnail normalised for brightness
and contrast, and the K frames nearest the centres of K clusters of those thumbnails are chosen, so the labels
cover the appearances the recording holds (gaze directions, lids, reflections) rather than the commonest one. Two
chosen frames are never near-copies, and a frame that is (by content) already in a labelled folder is never
chosen. Memory is bounded by K: a uniform sample of POOL_PER_PICK·K frames' thumbnails is kept while the inputs
stream (reservoir sampling), and the chosen frames are read again to be written. A terminal shows a progress bar.

With a model (a Guide, inference/doubt.py), up to half the frames are those it doubts most, kept in a heap of K while
the inputs stream, and every chosen frame is written with its pre-labels; the rest are spread over appearance.
"""

from __future__ import annotations

import csv
import heapq
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from glint_track.data.frames import Frame, frame_stem, frames, sources
from glint_track.errors import GlintTrackError
from glint_track.files import IMAGE_SUFFIXES, atomic_path, refuse_writing_into

#: Frames are compared as THUMB×THUMB thumbnails (area means), each normalised to zero mean and unit variance.
THUMB = 16
#: Thumbnails kept per frame asked for: the sample the clusters are drawn from.
POOL_PER_PICK = 32
#: Mean squared difference of two normalised thumbnails (0 the same, 2 unrelated) under which they are near-copies:
#: a steady eye's consecutive video frames, or one frame saved twice, differ by sensor noise alone.
NEAR_COPY = 0.02
KMEANS_ITERATIONS = 25
LIST_FILE = "selected.csv"


@dataclass
class Pick:
    name: str  # Frame.name: the image file, or `<video or h5>#<frame index>`
    position: int  # where it came in the stream of all input frames
    reason: str  # why it was chosen: the appearance it stands for, or what the model doubts in it
    file: str = ""  # the file written for it in the output folder


class Guide(Protocol):
    """A model's view of the frames (inference/doubt.py): how much it doubts each and why, and pre-labels."""

    def __call__(self, frame: Frame) -> tuple[float, str]: ...

    def write(self, frame: Frame, out: Path) -> str: ...  # the frame's image and pre-label JSON; the image's name

    def close(self, out: Path) -> None: ...


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """The frame as THUMB² values of zero mean and unit variance (area means: no aliasing from fine texture)."""
    small = np.asarray(Image.fromarray(gray).resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.float32).ravel()
    return (small - small.mean()) / (small.std() + 1e-3)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared difference between every row of `a` and every row of `b`."""
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0) / a.shape[1]


def input_frames(inputs: list[str]) -> Iterator[Frame]:
    """Images, videos and folders of them (as predict reads them), and glint HDF5 files' frames."""
    h5 = [Path(i) for i in inputs if Path(i).suffix.lower() in (".h5", ".hdf5")]
    others = [i for i in inputs if Path(i).suffix.lower() not in (".h5", ".hdf5")]
    if others:
        yield from frames(sources(others))
    for path in h5:
        yield from _h5_frames(path)


def _h5_frames(path: Path) -> Iterator[Frame]:
    from glint_track.data.glint_file import load_glint_file

    data = load_glint_file(path, None)  # checked as train checks it: sizes bounded before anything is read
    for i in range(data.num_samples):
        yield Frame(f"{path}#{i}", np.asarray(data.images[i]), str(path), i)


def labelled_thumbnails(folders: list[str]) -> np.ndarray:
    """Thumbnails of the frames already labelled: images in these folders, or the frames of these HDF5 files."""
    found = [thumbnail(f.gray) for f in input_frames(folders)] if folders else []
    return np.stack(found) if found else np.zeros((0, THUMB * THUMB), np.float32)


@dataclass
class Sample:
    positions: list[int]  # where each sampled frame came in the stream
    thumbs: np.ndarray  # their thumbnails, one row each
    seen: int  # frames the stream held that are not near-copies of a labelled one
    #: the frames a guide doubted most (with a reason): (doubt, position, reason, thumbnail), most doubted first
    doubted: list[tuple[float, int, str, np.ndarray]] = field(default_factory=list)


def sample(
    stream: Iterator[Frame], size: int, seed: int, labelled: np.ndarray, guide: Guide | None = None, doubts: int = 0
) -> Sample:
    """A uniform sample of `size` frames of `stream` that are not near-copies of a labelled frame (reservoir
    sampling, Algorithm R), and with a `guide` the `doubts` frames it doubts most: memory for `size` + `doubts`
    thumbnails, whatever the stream's length."""
    rng = np.random.default_rng(seed)
    positions: list[int] = []
    thumbs = np.zeros((size, THUMB * THUMB), np.float32)
    doubted: list[tuple[float, int, str, np.ndarray]] = []  # a heap: the least doubted of those kept first
    seen = 0
    for position, frame in enumerate(stream):
        thumb = thumbnail(frame.gray)
        if len(labelled) and distances(thumb[None], labelled).min() < NEAR_COPY:
            continue
        seen += 1
        if guide is not None and doubts:
            doubt, reason = guide(frame)
            if reason:
                heapq.heappush(doubted, (doubt, position, reason, thumb))
                if len(doubted) > doubts:
                    heapq.heappop(doubted)
        if len(positions) < size:
            slot = len(positions)
            positions.append(position)
        elif (slot := int(rng.integers(seen))) < size:  # the seen-th frame is kept with probability size/seen
            positions[slot] = position
        else:
            continue
        thumbs[slot] = thumb
    return Sample(positions, thumbs[: len(positions)], seen, sorted(doubted, key=lambda d: (-d[0], d[1])))


def kmeans(points: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres (k-means++ start, Lloyd iterations) and each point's cluster."""
    rng = np.random.default_rng(seed)
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d = distances(points, np.stack(centres)).min(1)
        if d.sum() <= 0:
            break
        centres.append(points[rng.choice(len(points), p=d / d.sum())])
    centres_arr = np.stack(centres)
    for _ in range(KMEANS_ITERATIONS):
        assign = distances(points, centres_arr).argmin(1)
        moved = np.stack(
            [points[assign == c].mean(0) if (assign == c).any() else centres_arr[c] for c in range(len(centres_arr))]
        )
        if np.allclose(moved, centres_arr):
            break
        centres_arr = moved
    return centres_arr, distances(points, centres_arr).argmin(1)


def choose(thumbs: np.ndarray, k: int, seed: int, taken: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Up to `k` sampled frames, no two near-copies (nor near-copies of `taken`): each cluster's frame nearest its
    centre, the largest clusters first. Returns (index into `thumbs`, its cluster's size)."""
    if not len(thumbs) or k <= 0:
        return []
    centres, assign = kmeans(thumbs, min(k, len(thumbs)), seed)
    sizes = np.bincount(assign, minlength=len(centres))
    kept = list(taken) if taken is not None else []
    chosen: list[tuple[int, int]] = []
    for c in np.argsort(-sizes, kind="stable"):
        members = np.flatnonzero(assign == c)
        if not len(members):
            continue
        order = members[np.argsort(distances(thumbs[members], centres[c : c + 1])[:, 0])]
        for i in order:
            if not kept or distances(thumbs[i : i + 1], np.stack(kept)).min() >= NEAR_COPY:
                chosen.append((int(i), int(sizes[c])))
                kept.append(thumbs[i])
                break
    while len(chosen) < k and kept:  # clusters whose every frame was taken already: the frames least like any kept
        farthest = distances(thumbs, np.stack(kept)).min(1)
        i = int(farthest.argmax())
        if farthest[i] < NEAR_COPY:
            break
        chosen.append((i, int(sizes[assign[i]])))
        kept.append(thumbs[i])
    return chosen


def plan_picks(drawn: Sample, k: int, seed: int) -> dict[int, str]:
    """Which frames (stream positions) to write and why: up to half of `k` the guide doubts most, no two
    near-copies; the rest spread over appearance."""
    chosen: dict[int, str] = {}
    kept: list[np.ndarray] = []
    for _, position, reason, thumb in drawn.doubted:
        if len(chosen) == k // 2:
            break
        if not kept or distances(thumb[None], np.stack(kept)).min() >= NEAR_COPY:
            chosen[position] = f"model: {reason}"
            kept.append(thumb)
    free = [i for i, p in enumerate(drawn.positions) if p not in chosen]
    taken = np.stack(kept) if kept else None
    for i, size in choose(drawn.thumbs[free], k - len(chosen), seed, taken):
        chosen[drawn.positions[free[i]]] = f"diverse: stands for {size} of the frames sampled"
    return chosen


@dataclass
class Selected:
    picks: list[Pick]
    frames: int  # frames read (near-copies of labelled ones left out)
    listing: Path  # selected.csv


def select_frames(
    inputs: list[str], out: Path, k: int, labelled: list[str], seed: int = 0, guide: Guide | None = None
) -> Selected:
    """Write `k` frames of `inputs` to label into `out` (images copied as they are, bit depth kept; video and HDF5
    frames as 8-bit PNG; with a `guide`, each with its pre-labels), and `out`/selected.csv saying where each came
    from and why it was chosen."""
    check_output_folder(out, inputs + labelled)
    known = labelled_thumbnails(labelled)
    reading = tqdm(input_frames(inputs), desc="reading", unit="frame", disable=not sys.stderr.isatty())
    drawn = sample(reading, POOL_PER_PICK * k, seed, known, guide, k)
    reading.close()
    if not drawn.seen:
        raise GlintTrackError("every frame given is already in the labelled folders (--labelled); nothing to select")
    chosen = plan_picks(drawn, k, seed)
    out.mkdir(parents=True, exist_ok=True)
    picks: list[Pick] = []
    for position, frame in enumerate(input_frames(inputs)):
        if position in chosen:
            pick = Pick(frame.name, position, chosen[position])
            pick.file = guide.write(frame, out) if guide is not None else _write(frame, out, {p.file for p in picks})
            picks.append(pick)
            if len(picks) == len(chosen):
                break
    if guide is not None:
        guide.close(out)
    listing = out / LIST_FILE
    with atomic_path(listing) as staged, open(staged, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "source", "reason"])
        writer.writerows([p.file, p.name, p.reason] for p in sorted(picks, key=lambda p: p.reason))
    return Selected(picks, drawn.seen, listing)


def check_output_folder(out: Path, inputs: list[str]) -> None:
    """`out` gets new files only: it may not hold an input, nor images or JSON already (they may be labelled)."""
    if out.exists() and not out.is_dir():
        raise GlintTrackError(f"--out {out}: not a folder; name a new folder")
    refuse_writing_into(out, "--out", [p / "x" if p.is_dir() else p for p in map(Path, inputs)])
    if out.is_dir() and any(p.suffix.lower() in (*IMAGE_SUFFIXES, ".json") for p in out.iterdir()):
        raise GlintTrackError(
            f"--out {out} already holds images or labelme files; name a new folder (pass this one to --labelled if it "
            "holds frames already chosen)"
        )


def _write(frame: Frame, out: Path, taken: set[str]) -> str:
    """The frame's file in `out`: an image file copied (its bit depth kept), a video's or HDF5 file's frame as PNG."""
    source = Path(frame.name)
    name = source.name if frame.index is None else f"{frame_stem(frame.name)}.png"
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 1
    while name in taken or (out / name).exists():
        n += 1
        name = f"{stem}_{n}{suffix}"
    with atomic_path(out / name) as staged:
        if frame.index is None:
            shutil.copyfile(source, staged)
        else:
            Image.fromarray(frame.gray).save(staged, format="PNG")
    return name
