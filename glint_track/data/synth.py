"""Built-in demo data: near-eye infrared eye images (eye_render.py) with labelled glints, in the packer's HDF5
layout, and optionally as labelme folders (PNG at the sensor's bit depth + JSON, what `pack` reads).

Deterministic from the seed, whatever the number of workers. Meant for pipeline tests, demos and benchmarks:
physically placed glints on a plausible eye, not a substitute for a labelled set from your own tracker.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from glint_track.constants import OUTPUT_STRIDE, SENSOR_BITS, SIGMA_MIN, SIGMA_SCALE
from glint_track.data.eye_render import Participant, render_sample
from glint_track.data.glint_file import write_glint_file
from glint_track.data.heatmaps import glints_of, render_heatmaps

#: Participant k of a data set draws from the stream [seed, PARTICIPANT_STREAM + k] (frame i's is [seed, i]).
PARTICIPANT_STREAM = 2**40


def participant_of(i: int, num_samples: int, participants: int) -> int:
    """Which participant frame i shows: consecutive frames, one recording each (0 with no participants)."""
    return i * participants // num_samples if participants else 0


def _sample(
    seed: int, i: int, size: int, num_glints: int, difficulty: float, bits: int, who: int | None = None
) -> tuple[np.ndarray, ...]:
    """Sample i of a data set: its own random stream, so it does not depend on the count or on workers; of
    participant `who` (their own stream) or, with None, of a person drawn for this frame alone."""
    person = (
        None if who is None else Participant.draw(np.random.default_rng([seed, PARTICIPANT_STREAM + who]), num_glints)
    )
    raw, points, radii = render_sample(np.random.default_rng([seed, i]), size, num_glints, difficulty, bits, person)
    hm = size // OUTPUT_STRIDE
    heatmaps = render_heatmaps(glints_of(points, radii), num_glints, (size, size), (hm, hm))
    return raw, to_8_bits(raw, bits), points, radii, heatmaps


def example_frames(count: int, size: tuple[int, int], num_glints: int, seed: int = 0) -> np.ndarray:
    """`count` 8-bit eye images (count×H×W) to run a model on, e.g. to check an export: rendered square at the
    larger side, the middle cropped out."""
    h, w = size
    side = max(h, w)
    images = [render_sample(np.random.default_rng([seed, i]), side, num_glints)[0] for i in range(count)]
    top, left = (side - h) // 2, (side - w) // 2
    return np.stack(images)[:, top : top + h, left : left + w]


def to_8_bits(raw: np.ndarray, bits: int) -> np.ndarray:
    """A `bits`-deep sensor image as the uint8 image training reads (full scale to 255)."""
    if bits == 8:
        return raw
    return np.round(raw.astype(np.float32) * (255.0 / (2**bits - 1))).astype(np.uint8)


def write_synthetic(
    out: str | Path,
    num_samples: int = 512,
    size: int = 128,
    num_glints: int = 8,
    seed: int = 0,
    labelme_dir: str | Path | None = None,
    difficulty: float = 0.5,
    bits: int = 8,
    participants: int = 0,
) -> Path:
    """Write a demo file in the SEED layout (plus `points`, `radii`); appears atomically at `out`.
    With `labelme_dir`, also write each image as PNG (`bits` deep: 16-bit PNGs above 8) with its labelme JSON
    (what `pack` reads). With `participants`, the frames are that many people's recordings, one after another (each
    their own cornea, headset fit and LED ring), named p01, p02, … in the file's `groups` and as the labelme
    sub-folders; else every frame is someone new. Large sets are generated on every CPU core; the result is the
    same either way."""
    if size % 16:
        raise ValueError(f"image size {size} must be divisible by 16")
    if bits not in SENSOR_BITS:
        raise ValueError(f"bit depth {bits} is not one of {SENSOR_BITS}")
    out = Path(out)
    whose = [participant_of(i, num_samples, participants) if participants else None for i in range(num_samples)]
    jobs = [(seed, i, size, num_glints, difficulty, bits, whose[i]) for i in range(num_samples)]
    workers = min(os.cpu_count() or 1, num_samples // 256)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            samples = list(pool.map(_sample, *zip(*jobs), chunksize=64))
    else:
        samples = [_sample(*job) for job in jobs]
    raw, images, points, radii, heatmaps = (np.stack(parts) for parts in zip(*samples))
    stems = [f"synth_{i:06d}" for i in range(num_samples)]
    width = len(str(participants))
    groups = [f"p{k + 1:0{max(2, width)}d}" for k in whose] if participants else None
    if labelme_dir is not None:
        for i, stem in enumerate(stems):
            folder = Path(labelme_dir) / groups[i] if groups else Path(labelme_dir)
            write_labelme(folder, stem, raw[i], points[i], radii[i])
    attrs = synth_attrs(num_glints, size, seed, difficulty, bits) | {"participants": participants}
    write_glint_file(out, images, heatmaps.astype(np.float16), points, radii, stems, attrs, groups=groups)
    return out


def synth_attrs(num_glints: int, size: int, seed: int, difficulty: float, bits: int) -> dict[str, object]:
    """The attributes of a file synth writes: the layout train reads, and how it was made."""
    hm = size // OUTPUT_STRIDE
    return dict(
        num_classes=num_glints,
        sigma_scale=SIGMA_SCALE,
        sigma_min=SIGMA_MIN,
        img_h=size,
        img_w=size,
        hm_h=hm,
        hm_w=hm,
        prefix="g",
        source="glint-track synth",
        seed=seed,
        difficulty=difficulty,
        sensor_bits=bits,
    )


def write_labelme(folder: Path, stem: str, image: np.ndarray, points: np.ndarray, radii: np.ndarray) -> None:
    """One image as `stem.png` (8 or 16 bits, as its dtype) and its glints as labelme circles `g1`..`gN` in
    `stem.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{stem}.png")
    shapes = [
        {
            "label": f"g{c + 1}",
            "points": [[float(x), float(y)], [float(x + r), float(y)]],
            "shape_type": "circle",
            "group_id": None,
            "flags": {},
        }
        for c, ((x, y), r) in enumerate(zip(points, radii))
        if not np.isnan(x)
    ]
    record = {
        "version": "5.4.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": f"{stem}.png",
        "imageData": None,
        "imageHeight": int(image.shape[0]),
        "imageWidth": int(image.shape[1]),
    }
    (folder / f"{stem}.json").write_text(json.dumps(record, indent=1))
