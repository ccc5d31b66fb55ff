"""The classical baseline detector: finds small bright round spots, ignores broad bright areas."""

from __future__ import annotations

import numpy as np

from glint_track.inference.classical import detect_glints, match_identity_free, summarise


def test_detects_small_spots_and_ignores_broad_light() -> None:
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
    img = np.full((96, 96), 60.0, np.float32)
    img += 120 * ((xx > 60) & (yy > 60))  # a broad bright patch: not a glint
    spots = [(20.0, 30.0), (45.5, 12.25), (70.0, 40.0)]
    for x, y in spots:
        img = np.maximum(img, 60 + 190 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2**2)))
    found = detect_glints(img.astype(np.uint8))
    tp, fp, fn, errors = match_identity_free(found, np.array(spots, np.float32), radius=2.0)
    assert (tp, fp, fn) == (3, 0, 0) and max(errors) < 0.5


def test_identity_free_matching_is_one_to_one() -> None:
    truth = np.array([[10, 10], [20, 10]], np.float32)
    pred = np.array([[10.5, 10], [11, 10], [50, 50]], np.float32)  # two claims on one glint, one far away
    tp, fp, fn, errors = match_identity_free(pred, truth, radius=3.0)
    assert (tp, fp, fn) == (1, 2, 1) and errors == [0.5]
    m = summarise(tp, fp, fn, errors)
    assert m["precision"] == 1 / 3 and m["recall"] == 0.5 and m["loc_err_mean"] == 0.5
