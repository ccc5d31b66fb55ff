"""`synth --recording`: a short near-eye video of one participant with its truth, so that videos, glint jumps and
`select` are tested on data whose every glint is known.

The eye does what eyes do in a headset (rates from the eye-movement literature): fixations of 150–500 ms (log-normal
about 250 ms) with a little drift and tremor, saccades of 30–60 ms to a new target within the gaze range, and blinks
about every 4 s (15 a minute) of 150–300 ms, the lid closing faster than it opens. The participant, their skin,
iris, lashes and glasses stay the same; the headset slips a little; the sensor's noise is new in every frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from glint_track.constants import OUTPUT_STRIDE
from glint_track.data.eye_model import Eye, gaze_vector
from glint_track.data.eye_render import Participant, Scene, render_scene
from glint_track.data.glint_file import write_glint_file
from glint_track.data.heatmaps import glints_of, render_heatmaps
from glint_track.data.synth import synth_attrs, to_8_bits
from glint_track.errors import GlintTrackError
from glint_track.files import atomic_path

#: The streams of a recording: who it is, how they look (fixed for every frame), the eye's movements, the sensor.
WHO, LOOK, MOVES, SENSOR = 2**41, 2**41 + 1, 2**41 + 2, 2**41 + 3
FIXATION_MS = (np.log(250.0), 0.4, 150.0, 500.0)  # log-normal mean and sigma, clipped to [150, 500] ms
SACCADE_MS = (30.0, 60.0)
BLINK_EVERY_S = 4.0  # on average
BLINK_GAP_S = 0.5  # at least this between two blinks (then exponential)
BLINK_MS = (150.0, 300.0)
TREMOR_DEG = 0.05  # per frame, random walk of the gaze during a fixation
CLOSED = -1.3  # Scene.opening at which the upper lid meets the lower one


@dataclass
class Moment:
    yaw: float  # radians
    pitch: float
    shut: float  # how far the upper lid has come down: 0 open (the participant's opening), 1 closed
    event: str  # fixation, saccade or blink


def movements(frames: int, fps: float, max_angle: float, rng: np.random.Generator) -> list[Moment]:
    """The eye's state in each frame: fixations joined by saccades, with blinks laid over them."""
    moments: list[Moment] = []
    yaw, pitch = 0.0, 0.0
    while len(moments) < frames:
        mu, sigma, low, high = FIXATION_MS
        for _ in range(max(1, round(np.clip(rng.lognormal(mu, sigma), low, high) * fps / 1000))):
            yaw += np.radians(rng.normal(0, TREMOR_DEG))
            pitch += np.radians(rng.normal(0, TREMOR_DEG))
            moments.append(Moment(yaw, pitch, 0.0, "fixation"))
        target = rng.uniform(-max_angle, max_angle), rng.uniform(-0.7 * max_angle, 0.7 * max_angle)
        steps = max(1, round(rng.uniform(*SACCADE_MS) * fps / 1000))
        for s in range(1, steps + 1):
            t = s / steps
            moments.append(Moment(yaw + (target[0] - yaw) * t, pitch + (target[1] - pitch) * t, 0.0, "saccade"))
        yaw, pitch = target
    moments = moments[:frames]
    start = rng.exponential(BLINK_EVERY_S) * fps  # the first blink may come at once
    while start < frames:
        length = max(3, round(rng.uniform(*BLINK_MS) * fps / 1000))
        closing = max(1, length // 3)  # a third to close, two thirds to open
        for j in range(length):
            i = int(start) + j
            if i >= frames:
                break
            shut = j / closing if j < closing else 1 - (j - closing) / (length - closing)
            moments[i] = replace(moments[i], shut=float(np.clip(shut, 0.0, 1.0)), event="blink")
        start += length + (BLINK_GAP_S + rng.exponential(BLINK_EVERY_S - BLINK_GAP_S)) * fps
    return moments


def render_recording(
    seconds: float, fps: float, size: int, num_glints: int, seed: int, difficulty: float, bits: int
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], str]:
    """Each frame's (raw image, glint centres, radii), and the events as JSON ([event, first frame, last frame])."""
    who = Participant.draw(np.random.default_rng([seed, WHO]), num_glints)
    base = Scene.draw(np.random.default_rng([seed, LOOK]), size, num_glints, difficulty, who)
    max_angle = np.radians(12 + 20 * float(np.clip(difficulty, 0, 1)))
    moves = np.random.default_rng([seed, MOVES])
    frames = []
    moments = movements(max(1, round(seconds * fps)), fps, max_angle, moves)
    slip = np.zeros(3)
    for i, m in enumerate(moments):
        slip[:2] += moves.normal(0, 0.01, 2)  # mm a frame: the headset settles, it does not jump
        eye = Eye(base.eye.centre + slip, gaze_vector(m.yaw, m.pitch), base.eye.cornea_radius, base.eye.pupil_radius)
        scene = replace(base, eye=eye, opening=base.opening + (CLOSED - base.opening) * m.shut)
        look, sensor = np.random.default_rng([seed, LOOK, 1]), np.random.default_rng([seed, SENSOR, i])
        frames.append(render_scene(scene, look, size, difficulty, bits, sensor))
    events: list[list] = []
    for i, m in enumerate(moments):
        if events and events[-1][0] == m.event:
            events[-1][2] = i
        else:
            events.append([m.event, i, i])
    return frames, json.dumps(events)


def write_recording(
    out: Path,
    seconds: float,
    fps: float,
    size: int,
    num_glints: int,
    seed: int,
    difficulty: float,
    bits: int,
    video: Path | None = None,
) -> int:
    """The recording as a glint HDF5 file (frames in time order, their truth, `recording_fps` and `events` in its
    attributes) and, with `video`, as an MP4 of the same frames; returns the number of frames."""
    frames, events = render_recording(seconds, fps, size, num_glints, seed, difficulty, bits)
    raw, points, radii = (np.stack(part) for part in zip(*frames))
    images = to_8_bits(raw, bits)
    hm = size // OUTPUT_STRIDE
    heatmaps = np.stack(
        [render_heatmaps(glints_of(p, r), num_glints, (size, size), (hm, hm)) for p, r in zip(points, radii)]
    )
    attrs = synth_attrs(num_glints, size, seed, difficulty, bits) | {"recording_fps": fps, "events": events}
    stems = [f"frame_{i:06d}" for i in range(len(images))]
    write_glint_file(out, images, heatmaps.astype(np.float16), points, radii, stems, attrs)
    if video is not None:
        write_video(video, images, fps)
    return len(images)


def write_video(path: Path, images: np.ndarray, fps: float) -> None:
    """8-bit frames as an H.264 MP4 (appears only when complete)."""
    try:
        import av
    except ImportError as e:
        raise GlintTrackError(f"--video {path}: writing videos needs PyAV; `pip install 'glint-track[video]'`") from e
    with atomic_path(path) as staged:
        with av.open(str(staged), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.height, stream.width = images.shape[1:]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "10"}  # near-lossless: the glints stay where the truth says
            for image in images:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="gray")))
            container.mux(stream.encode())
