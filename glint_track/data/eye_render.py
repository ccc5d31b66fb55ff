"""A near-eye infrared image of an eye, rendered from the geometry in eye_model.py, with its glint labels.

What a dark-pupil tracker's camera records: the eye fills most of the frame; skin reflects IR brightly, the
sclera is grey, the iris a lighter grey with little texture, the pupil the darkest region; each LED's
corneal reflection is a small saturated spot with a bloom around it. Lids (their opening following the
gaze down), lashes, reflections of the LEDs in glasses, motion and defocus blur, vignetting, gain and
sensor noise. Every number and its source: docs/synthetic-data.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from glint_track.data.eye_model import (
    CORNEA_RADIUS_MM,
    LIMBUS_RADIUS_MM,
    PUPIL_DEPTH_MM,
    Eye,
    corneal_reflections,
    gaze_vector,
    led_ring,
    project,
)

#: Supersampling of the drawn regions (lids, iris, pupil), for anti-aliased edges.
SUPERSAMPLE = 4
#: Corneal refraction magnifies the pupil seen through it by about 1.13 (Gullstrand's schematic eye).
PUPIL_MAGNIFICATION = 1.13
LIMBUS_DEPTH_MM = 2.6  # the iris plane at the limbus, behind the corneal apex
FISSURE_WIDTH_MM = 30.0  # corner to corner of the eye opening (palpebral fissure, adult 27-32 mm)


@dataclass(frozen=True)
class Participant:
    """What stays the same across one person's frames: their cornea, how the headset sits on them (distance,
    framing, the eye's place), their headset's LED ring, and their skin and iris under its light. Frames of one
    participant differ in gaze, pupil, lids, a little headset slip, and the sensor's noise."""

    distance: float  # camera to corneal apex, mm
    eye_share: float  # of the frame width the eye opening spans
    offset: tuple[float, float]  # the eye's centre off the camera axis, mm
    cornea_radius: float  # mm
    leds: np.ndarray  # the ring, mounting tolerance included
    intensities: dict[str, float]  # skin, sclera, iris (× the sensor's white)

    @classmethod
    def draw(cls, rng: np.random.Generator, num_glints: int) -> Participant:
        leds = led_ring(num_glints, rng.uniform(14.0, 22.0))
        leds[:, :2] += rng.normal(0, 0.3, (num_glints, 2))
        return cls(
            distance=rng.uniform(28.0, 40.0),
            eye_share=rng.uniform(0.7, 0.9),
            offset=(rng.normal(0, 1.5), rng.normal(0, 1.5)),
            cornea_radius=rng.uniform(7.0, 8.6),  # adult range (Gullstrand's 7.8 is its middle)
            leds=leds,
            intensities={
                "skin": rng.uniform(0.5, 0.7),
                "sclera": rng.uniform(0.38, 0.52),
                "iris": rng.uniform(0.24, 0.36),
            },
        )


@dataclass(frozen=True)
class Scene:
    """What one image shows, drawn from human and tracker ranges scaled by `difficulty`."""

    eye: Eye
    leds: np.ndarray
    focal_px: float
    centre_px: tuple[float, float]
    opening: float  # the upper lid sits 1.5 + 4.5 × this mm above the eye's centre (the lower one 4.5 mm below)
    intensities: dict[str, float]

    @classmethod
    def draw(
        cls, rng: np.random.Generator, size: int, num_glints: int, difficulty: float, who: Participant | None = None
    ) -> Scene:
        """A frame of participant `who`, or (None) of someone drawn for this frame alone."""
        d = float(np.clip(difficulty, 0.0, 1.0))
        if who is None:
            distance = rng.uniform(28.0, 40.0)  # camera to corneal apex, head-mounted trackers
            eye_share = rng.uniform(0.7, 0.9)  # of the frame width the eye opening spans
            centre = np.array([rng.normal(0, 1.5), rng.normal(0, 1.5), distance + 13.5])
            cornea = CORNEA_RADIUS_MM
        else:  # the headset slips a little between frames
            distance, eye_share, cornea = who.distance + rng.normal(0, 0.4), who.eye_share, who.cornea_radius
            centre = np.array([*(np.array(who.offset) + rng.normal(0, 0.2, 2)), distance + 13.5])
        focal = eye_share * size * distance / FISSURE_WIDTH_MM
        max_angle = np.radians(12 + 20 * d)  # gaze range, human comfortable range ±30°
        yaw, pitch = rng.uniform(-max_angle, max_angle), rng.uniform(-0.7 * max_angle, 0.7 * max_angle)
        eye = Eye(centre, gaze_vector(yaw, pitch), cornea_radius=cornea, pupil_radius=rng.uniform(1.25, 3.5))
        if who is None:
            leds = led_ring(num_glints, rng.uniform(14.0, 22.0))
            leds[:, :2] += rng.normal(0, 0.3, (num_glints, 2))  # mounting tolerance
        else:
            leds = who.leds
        opening = float(np.clip(rng.uniform(0.8, 1.1) - d * rng.uniform(0, 0.6) - 0.8 * max(pitch, 0), 0.15, 1.1))
        intensities = {
            "skin": rng.uniform(0.5, 0.7),  # bright, yet below the glints once auto-exposure has set the gain
            "sclera": rng.uniform(0.38, 0.52),
            "iris": rng.uniform(0.24, 0.36),
            "pupil": rng.uniform(0.02, 0.07),
            "glint": rng.uniform(2.0, 4.0),  # saturates: a specular LED image outshines everything
        }
        if who is not None:
            intensities |= who.intensities
        return cls(eye, leds, focal, (size / 2, size / 2), opening, intensities)

    def to_px(self, points: np.ndarray) -> np.ndarray:
        return project(points, self.focal_px, self.centre_px)

    def px_per_mm(self) -> float:
        return self.focal_px / float(self.eye.apex[2])


def _coverage(size: int, polygons: list[np.ndarray]) -> np.ndarray:
    """How much of each pixel the union of `polygons` (each N×2, pixels) covers, 0…1, anti-aliased."""
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    for polygon in polygons:
        draw.polygon([tuple(p) for p in (polygon * SUPERSAMPLE).tolist()], fill=255)
    return np.asarray(big.reduce(SUPERSAMPLE), np.float32) / 255


def _lids(scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The eye opening between the lids: its outline (N×2 px) and the upper and lower lid curves (x, y)."""
    eye = scene.eye
    head = scene.to_px(np.array([[eye.centre[0], eye.centre[1], eye.apex[2]]]))[0]
    ppm = scene.px_per_mm()
    half = FISSURE_WIDTH_MM / 2 * ppm
    u = np.linspace(-1, 1, 48)
    x = head[0] + half * u
    upper = head[1] - (1.5 + 4.5 * scene.opening) * ppm * (1 - u**2) ** 0.8 + 1.0 * ppm * u
    lower = head[1] + 4.5 * ppm * (1 - u**2) ** 0.9 + 0.5 * ppm * u
    outline = np.concatenate([np.stack([x, upper], 1), np.stack([x, lower], 1)[::-1]])
    return outline, np.stack([x, upper], 1), np.stack([x, lower], 1)


def _blob(img: np.ndarray, x: float, y: float, sigma: float, value: float, add: bool = False) -> None:
    """A round Gaussian spot at (x, y): blended towards `value` (a glint), or added (a bloom)."""
    H, W = img.shape
    reach = 3 * sigma + 1
    x0, x1 = max(0, int(x - reach)), min(W, int(x + reach) + 2)
    y0, y1 = max(0, int(y - reach)), min(H, int(y + reach) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    w = np.exp(-0.5 * ((xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2) / sigma**2)
    patch = img[y0:y1, x0:x1]
    img[y0:y1, x0:x1] = patch + value * w if add else patch * (1 - w) + value * w


def _eye_image(scene: Scene, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Skin, sclera, iris and pupil, lids and lashes (float, 1 = the sensor's white); and the opening's
    coverage (where the eye is not hidden by a lid)."""
    k = scene.intensities
    eye, ppm = scene.eye, scene.px_per_mm()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    shading = 1 + sum(
        rng.uniform(-0.12, 0.12) * np.cos(2 * np.pi * (f1 * xx + f2 * yy) + rng.uniform(0, 6.3))
        for f1, f2 in rng.uniform(0.2, 1.2, (3, 2))
    )
    img = (k["skin"] * shading).astype(np.float32)
    outline, upper, lower = _lids(scene, size)
    opening = _coverage(size, [outline])
    limbus = scene.to_px(eye.circle(LIMBUS_RADIUS_MM, LIMBUS_DEPTH_MM))
    pupil = scene.to_px(eye.circle(eye.pupil_radius * PUPIL_MAGNIFICATION, PUPIL_DEPTH_MM))
    iris, hole = _coverage(size, [limbus]), _coverage(size, [pupil])
    centre = scene.to_px(eye.pupil_centre[None])[0]
    r = np.hypot(xx * size - centre[0], yy * size - centre[1])
    theta = np.arctan2(yy * size - centre[1], xx * size - centre[0])
    texture = 1 + sum(rng.uniform(0.01, 0.03) * np.sin(n * theta + rng.uniform(0, 6.3)) for n in rng.integers(9, 40, 4))
    sclera = k["sclera"] * (1 - 0.25 * np.clip((np.abs(xx * size - centre[0]) / (15 * ppm)) ** 2, 0, 1))
    inside = sclera * (1 - iris) + k["iris"] * texture * (1 + 0.15 * np.clip(r / (6 * ppm), 0, 1)) * iris
    inside = inside * (1 - hole) + k["pupil"] * hole
    img = img * (1 - opening) + inside * opening
    return img * (1 - 0.8 * _strokes(upper, lower, rng, size, ppm)), opening


def _strokes(upper: np.ndarray, lower: np.ndarray, rng: np.random.Generator, size: int, ppm: float) -> np.ndarray:
    """Coverage (0…1) of what darkens the lids: their margins and the lashes along the upper one, curving up
    and out from it."""
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    scale = SUPERSAMPLE
    for curve, width in ((upper, 0.5), (lower, 0.3)):
        draw.line(
            [tuple(p) for p in (curve[3:-3] * scale).tolist()], fill=110, width=max(1, round(width * ppm * scale))
        )
    for _ in range(int(rng.integers(40, 90))):
        i = int(rng.integers(4, len(upper) - 4))
        x0, y0 = upper[i]
        outward = (i / (len(upper) - 1) - 0.5) * 1.6
        angle = -np.pi / 2 + outward + rng.normal(0, 0.15)
        length = rng.uniform(1.5, 3.5) * ppm
        bend = np.linspace(0, 1, 6)
        xs = x0 + bend * length * np.cos(angle) + 0.3 * length * bend**2 * np.sign(outward)
        ys = y0 + bend * length * np.sin(angle) + 0.2 * length * bend**2
        width = max(1, round(rng.uniform(0.06, 0.12) * ppm * scale))
        draw.line(
            list(zip((xs * scale).tolist(), (ys * scale).tolist())), fill=int(rng.integers(150, 230)), width=width
        )
    return np.asarray(big.reduce(SUPERSAMPLE), np.float32) / 255


def _glints(
    scene: Scene, rng: np.random.Generator, img: np.ndarray, opening: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each LED's corneal reflection drawn as a saturated spot with a bloom; returns centres (C×2 px, NaN
    where there is none: off the cornea, behind a lid or outside the frame) and radii (C px)."""
    size = img.shape[0]
    points, valid = corneal_reflections(scene.eye, scene.leds)
    xy = scene.to_px(points)
    ppm = scene.px_per_mm()
    radii = np.maximum(0.8, 0.3 * ppm * rng.uniform(0.8, 1.3, len(xy))).astype(np.float32)
    inside = np.all((xy >= 0) & (xy < size), axis=1)
    xi, yi = np.clip(xy.astype(int), 0, size - 1).T
    visible = valid & inside & (opening[yi, xi] > 0.5)
    for (x, y), r, shown in zip(xy, radii, visible):
        if shown:
            _blob(img, x, y, 0.7 * r, scene.intensities["glint"])
            _blob(img, x, y, 1.5 * r, rng.uniform(0.05, 0.15), add=True)  # bloom: scattered light around it
    xy = xy.astype(np.float32)
    xy[~visible] = np.nan
    return xy, radii


def _glasses(scene: Scene, rng: np.random.Generator, img: np.ndarray, difficulty: float) -> None:
    """Reflections of the LED ring in a spectacle lens: a larger, dimmer copy of the glint pattern elsewhere
    in the frame (unlabelled distractors; more likely when harder)."""
    if rng.random() > 0.1 + 0.5 * difficulty:
        return
    size, ppm = img.shape[0], scene.px_per_mm()
    centre = rng.uniform(0.2, 0.8, 2) * size
    scale = rng.uniform(1.5, 4.0) * ppm
    for x, y in scene.leds[:, :2] / np.abs(scene.leds[:, :2]).max() * scale + centre:
        _blob(img, x, y, rng.uniform(0.4, 0.9) * ppm, rng.uniform(0.5, 1.4))


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (defocus) of a float image: one shifted, weighted sum per kernel tap."""
    if sigma < 0.3:
        return img
    r = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    H, W = img.shape
    p = np.pad(img, r, mode="edge")
    rows = sum(w * p[:, j : j + W] for j, w in enumerate(k))
    return sum(w * rows[j : j + H] for j, w in enumerate(k))


def _motion_blur(img: np.ndarray, length: float, angle: float) -> np.ndarray:
    """The image smeared over `length` pixels along `angle` (the eye moved during the exposure)."""
    steps = int(np.ceil(length))
    if steps < 1:
        return img
    out = np.zeros_like(img)
    for f in np.linspace(-0.5, 0.5, steps + 1):
        out += np.roll(img, (round(f * length * np.sin(angle)), round(f * length * np.cos(angle))), (0, 1))
    return out / (steps + 1)


def _sensor(img: np.ndarray, rng: np.random.Generator, difficulty: float, bits: int) -> np.ndarray:
    """Defocus and motion blur, lens vignetting, gain, shot and read noise, quantisation to `bits`."""
    size, d = img.shape[0], difficulty
    s = size / 128
    img = _blur(img, rng.uniform(0.2, 0.4 + 0.8 * d) * s)
    img = _motion_blur(img, rng.uniform(0, 3.0 * d) * s, rng.uniform(0, np.pi))
    yy, xx = (np.mgrid[0:size, 0:size] / size - 0.5).astype(np.float32)
    img = img * (1 - rng.uniform(0.05, 0.2) * 4 * (xx**2 + yy**2)) * rng.uniform(0.85, 1.2)  # corners 10-40 % darker
    electrons = 2000.0  # full well at the sensor's white: shot noise is sqrt(signal)
    noise = rng.normal(0, 1, img.shape) * np.sqrt(np.clip(img, 0, None) / electrons + rng.uniform(0.003, 0.01) ** 2)
    top = 2**bits - 1
    return np.round(np.clip(img + noise, 0, 1) * top).astype(np.uint8 if bits == 8 else np.uint16)


def render_sample(
    rng: np.random.Generator,
    size: int,
    num_glints: int,
    difficulty: float = 0.5,
    bits: int = 8,
    who: Participant | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One near-eye IR image (H×W, uint8, or uint16 holding `bits` bits), glint centres (C×2 px, NaN if
    absent) and radii (C px), glint c being LED c of the ring (g1 at the top, then clockwise); of participant `who`
    if given."""
    d = float(np.clip(difficulty, 0.0, 1.0))
    return render_scene(Scene.draw(rng, size, num_glints, d, who), rng, size, d, bits)


def render_scene(
    scene: Scene,
    rng: np.random.Generator,
    size: int,
    difficulty: float,
    bits: int = 8,
    sensor_rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`render_sample` of a given scene (the rest of the randomness: texture, lashes, glasses, sensor). A recording
    passes the same `rng` for every frame (the same skin, iris, lashes and glasses) and `sensor_rng` for what
    changes from frame to frame (blur, gain, noise)."""
    d = difficulty
    img, opening = _eye_image(scene, rng, size)
    points, radii = _glints(scene, rng, img, opening)
    _glasses(scene, rng, img, d)
    return _sensor(img, sensor_rng or rng, d, bits), points, radii
