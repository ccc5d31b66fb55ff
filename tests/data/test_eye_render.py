"""The near-eye IR generator: saturated glints, dark-pupil appearance, glints where the cornea mirrors the
LEDs, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glint_track.data.eye_model import (
    LIMBUS_RADIUS_MM,
    PUPIL_DEPTH_MM,
    Eye,
    corneal_reflections,
    gaze_vector,
    led_ring,
    project,
    reflection_error,
)
from glint_track.data.eye_render import (
    LIMBUS_DEPTH_MM,
    PUPIL_MAGNIFICATION,
    Scene,
    _coverage,
    _lids,
    render_sample,
    render_scene,
)

SIZE = 128


def test_at_least_nine_in_ten_visible_glint_centres_are_saturated() -> None:
    values = []
    for i in range(40):
        image, points, _ = render_sample(np.random.default_rng([7, i]), SIZE, 8, difficulty=i / 39)
        for x, y in points[~np.isnan(points[:, 0])]:
            values.append(image[int(y), int(x)])
    assert len(values) > 200 and np.mean(np.array(values) >= 250) >= 0.9


def test_the_pupil_is_darker_than_the_iris_which_is_darker_than_the_skin() -> None:
    ordered = 0
    for i in range(30):
        rng = np.random.default_rng([8, i])
        scene = Scene.draw(rng, SIZE, 8, 0.3)
        image, points, _ = render_scene(scene, rng, SIZE, 0.3)
        eye = scene.eye
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        near_glint = np.zeros((SIZE, SIZE), bool)
        for x, y in points[~np.isnan(points[:, 0])]:
            near_glint |= np.hypot(xx - x, yy - y) < 4
        opening = _coverage(SIZE, [_lids(scene, SIZE)[0]])
        pupil = _coverage(SIZE, [scene.to_px(eye.circle(eye.pupil_radius * PUPIL_MAGNIFICATION, PUPIL_DEPTH_MM))])
        iris = _coverage(SIZE, [scene.to_px(eye.circle(LIMBUS_RADIUS_MM, LIMBUS_DEPTH_MM))])
        regions = {
            "pupil": (pupil > 0.99) & (opening > 0.99),
            "iris": (iris > 0.99) & (pupil < 0.01) & (opening > 0.99),
            "skin": opening < 0.01,
        }
        level = {k: np.median(image[mask & ~near_glint]) for k, mask in regions.items() if (mask & ~near_glint).any()}
        ordered += level.get("pupil", 0) < level["iris"] < level["skin"]
    assert ordered >= 28


def test_each_glint_is_where_the_cornea_mirrors_its_led_into_the_camera() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        eye = Eye(np.array([*rng.normal(0, 2, 2), rng.uniform(40, 55)]), gaze_vector(*rng.uniform(-0.5, 0.5, 2)))
        leds = led_ring(8, rng.uniform(12, 25))
        points, valid = corneal_reflections(eye, leds)
        assert np.all(reflection_error(eye, points, leds) < 1e-9)  # angle in = angle out, in one plane
        assert np.allclose(np.linalg.norm(points - eye.cornea_centre, axis=1), eye.cornea_radius)
        assert np.all(valid == ((points - eye.cornea_centre) @ eye.gaze / eye.cornea_radius >= eye.limbus_cos))


def test_labels_are_the_projected_reflections_in_ring_order() -> None:
    rng = np.random.default_rng(4)
    scene = Scene.draw(rng, SIZE, 8, 0.0)
    _, points, _ = render_scene(scene, rng, SIZE, 0.0)
    expected = scene.to_px(corneal_reflections(scene.eye, scene.leds)[0])
    shown = ~np.isnan(points[:, 0])
    assert shown.sum() >= 6 and np.allclose(points[shown], expected[shown], atol=1e-4)
    straight = Eye(np.array([0.0, 0.0, 48.5]), gaze_vector(0, 0))
    ring = project(corneal_reflections(straight, led_ring(8, 18))[0], 400, (64, 64))
    angles = np.degrees(np.arctan2(ring[:, 1] - 64, ring[:, 0] - 64))  # image y down: clockwise = increasing
    assert abs(angles[0] + 90) < 1e-6 and np.all(np.diff(np.unwrap(np.radians(angles))) > 0)


def test_the_pupil_moves_farther_than_the_glints_as_the_eye_turns() -> None:
    """What pupil-centre/corneal-reflection tracking rests on: the pupil-to-glints vector grows with gaze."""
    leds, vectors = led_ring(8, 18), []
    for yaw in np.radians([0, 5, 10, 20, 30]):
        eye = Eye(np.array([0.0, 0.0, 48.5]), gaze_vector(yaw, 0))
        glints = project(corneal_reflections(eye, leds)[0], 400, (64, 64)).mean(0)
        pupil = project(eye.pupil_centre[None], 400, (64, 64))[0]
        vectors.append(pupil[0] - glints[0])
    assert abs(vectors[0]) < 1e-6 and np.all(np.diff(vectors) > 0)


def test_the_same_seed_gives_the_same_image_and_twelve_bits_fill_the_range() -> None:
    a, pa, _ = render_sample(np.random.default_rng(5), SIZE, 8)
    b, pb, _ = render_sample(np.random.default_rng(5), SIZE, 8)
    c, _, _ = render_sample(np.random.default_rng(6), SIZE, 8)
    assert np.array_equal(a, b) and np.array_equal(pa, pb, equal_nan=True) and not np.array_equal(a, c)
    deep, points, _ = render_sample(np.random.default_rng(5), SIZE, 8, bits=12)
    x, y = points[~np.isnan(points[:, 0])][0].astype(int)
    assert deep.dtype == np.uint16 and deep.max() == 4095 and deep[y, x] == 4095


@pytest.mark.parametrize("difficulty", [0.0, 1.0])
def test_difficulty_spans_gaze_lids_and_blur(difficulty: float) -> None:
    scenes = [Scene.draw(np.random.default_rng([9, i]), SIZE, 8, difficulty) for i in range(200)]
    gaze = max(np.degrees(np.arccos(-s.eye.gaze[2])) for s in scenes)
    closed = min(s.opening for s in scenes)
    assert (gaze < 20 and closed > 0.4) if difficulty == 0 else (gaze > 25 and closed < 0.4)


def test_synth_bits_keeps_the_sensor_depth_in_labelme_pngs_that_pack_to_the_hdf5_images(tmp_path: Path) -> None:
    import h5py

    from glint_track.data.pack import pack_labelme
    from glint_track.data.synth import write_synthetic

    folder = tmp_path / "labelme"
    synth = write_synthetic(tmp_path / "synth.h5", num_samples=3, size=SIZE, num_glints=4, labelme_dir=folder, bits=12)
    png = np.asarray(Image.open(folder / "synth_000000.png"))
    assert png.dtype.itemsize == 2 and 255 < png.max() <= 4095
    pack_labelme(folder, tmp_path / "packed.h5", num_glints=4)
    with h5py.File(synth) as a, h5py.File(tmp_path / "packed.h5") as b:
        assert a.attrs["sensor_bits"] == 12 and np.array_equal(a["images"][:], b["images"][:])
        assert np.allclose(a["points"][:], b["points"][:], equal_nan=True, atol=1e-3)
