"""The geometry of a near-eye infrared eye tracker, in millimetres, for `synth`.

Camera coordinates: the camera's pinhole at the origin, x right, y down, z forward (towards the eye).
The eye turns about its centre of rotation; the cornea is a sphere whose centre lies on the optical axis
in front of that centre; each LED's glint is where the cornea mirrors the LED into the camera (the
first Purkinje image). The pupil and iris are circles in a plane across the optical axis.

Sources of the numbers (typical adult values):
- corneal radius of curvature 7.8 mm (Gullstrand's schematic eye; range 7.0-8.6),
- centre of rotation 13.5 mm behind the corneal apex (Fry & Hill 1962), so the corneal centre of curvature
  lies 5.7 mm in front of it,
- visible iris (limbus) radius 5.9 mm (horizontal visible iris diameter 11.8 mm, Rüfer et al. 2005),
- entrance pupil about 3.0 mm behind the apex, radius 1.0-4.0 mm (dark-adapted under IR lighting),
- the cornea ends at the limbus: glints beyond it fall on the sclera and are not corneal reflections.
Tracker layout (head-mounted, as in VR/AR headsets): the camera 25-45 mm from the eye, the LEDs on a
ring of radius 12-25 mm around the lens, near the camera's plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CORNEA_RADIUS_MM = 7.8
ROTATION_TO_APEX_MM = 13.5
LIMBUS_RADIUS_MM = 5.9
PUPIL_DEPTH_MM = 3.0  # behind the corneal apex


@dataclass(frozen=True)
class Eye:
    """An eye in camera coordinates: `centre` (3,) of rotation, `gaze` (3,) unit vector of its optical
    axis, pointing out of the eye (towards the camera when looking at it)."""

    centre: np.ndarray
    gaze: np.ndarray
    cornea_radius: float = CORNEA_RADIUS_MM
    pupil_radius: float = 2.0

    @property
    def cornea_centre(self) -> np.ndarray:
        return self.centre + (ROTATION_TO_APEX_MM - self.cornea_radius) * self.gaze

    @property
    def apex(self) -> np.ndarray:
        return self.centre + ROTATION_TO_APEX_MM * self.gaze

    @property
    def pupil_centre(self) -> np.ndarray:
        return self.apex - PUPIL_DEPTH_MM * self.gaze

    @property
    def limbus_cos(self) -> float:
        """cos of the angle, at the corneal centre, between the optical axis and the limbus."""
        return float(np.sqrt(1 - (LIMBUS_RADIUS_MM / self.cornea_radius) ** 2))

    def circle(self, radius: float, depth: float, n: int = 64) -> np.ndarray:
        """n points (n×3) of a circle across the optical axis, `depth` mm behind the apex."""
        a = np.cross(self.gaze, [0.0, 1.0, 0.0])
        a /= np.linalg.norm(a)
        b = np.cross(self.gaze, a)
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
        return self.apex - depth * self.gaze + radius * (np.cos(t) * a + np.sin(t) * b)


def gaze_vector(yaw: float, pitch: float) -> np.ndarray:
    """The optical axis turned by `yaw` (right, radians) and `pitch` (down) from looking straight at the
    camera (−z)."""
    v = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), -np.cos(yaw) * np.cos(pitch)])
    return v / np.linalg.norm(v)


def led_ring(count: int, radius: float, z: float = 0.0, phase: float = -np.pi / 2) -> np.ndarray:
    """`count` LED positions (count×3) on a ring around the camera's axis, the first at `phase` (the top),
    then clockwise as the camera sees them."""
    t = phase + 2 * np.pi * np.arange(count) / count
    return np.stack([radius * np.cos(t), radius * np.sin(t), np.full(count, z)], 1)


def corneal_reflections(eye: Eye, leds: np.ndarray, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Where the cornea mirrors each LED into the camera: points (K×3) on the corneal sphere whose normal
    bisects the directions to the LED and to the camera (the law of reflection), and whether each is a
    corneal glint (on the cornea, inside the limbus, and facing both)."""
    c, r = eye.cornea_centre, eye.cornea_radius

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    normal = unit(unit(leds - c) + unit(-c))
    for _ in range(iterations):  # a fixed point: sources this far away move the point by microns after a few
        point = c + r * normal
        normal = unit(unit(leds - point) + unit(-point))
    point = c + r * normal
    on_cornea = normal @ eye.gaze >= eye.limbus_cos
    facing = (np.sum(normal * (leds - point), 1) > 0) & (np.sum(normal * -point, 1) > 0)
    return point, on_cornea & facing


def reflection_error(eye: Eye, point: np.ndarray, leds: np.ndarray) -> np.ndarray:
    """The angle (radians) between the incidence and reflection angles at each point: 0 where the law of
    reflection holds."""
    normal = (point - eye.cornea_centre) / eye.cornea_radius
    to_led = (leds - point) / np.linalg.norm(leds - point, axis=1, keepdims=True)
    to_cam = -point / np.linalg.norm(point, axis=1, keepdims=True)
    incidence = np.arccos(np.clip(np.sum(normal * to_led, 1), -1, 1))
    reflection = np.arccos(np.clip(np.sum(normal * to_cam, 1), -1, 1))
    coplanar = np.abs(np.sum(np.cross(to_led, to_cam) * normal, 1))
    return np.abs(incidence - reflection) + coplanar


def project(points: np.ndarray, focal_px: float, centre_px: tuple[float, float]) -> np.ndarray:
    """Pinhole projection (N×3 mm → N×2 pixels, x y)."""
    return np.stack(
        [focal_px * points[:, 0] / points[:, 2] + centre_px[0], focal_px * points[:, 1] / points[:, 2] + centre_px[1]],
        1,
    )
