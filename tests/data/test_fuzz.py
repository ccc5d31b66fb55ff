"""Property tests (Hypothesis) over crafted HDF5 files, labelme folders, COCO exports and checkpoints: every input
ends in success or the one-line GlintTrackError, never another exception, and never takes memory beyond a small
multiple of the data it really holds. GLINT_TRACK_FUZZ_EXAMPLES sets the examples per target (CI: 150);
benchmarks/fuzz.py runs 10,000 per target and counts the outcomes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from strategies import (
    GLINTS,
    SIZE,
    check_checkpoint,
    check_coco,
    check_h5,
    check_labelme,
    checkpoint_specs,
    coco_specs,
    h5_specs,
    labelme_specs,
)

from glint_track.data.glint_file import load_glint_file
from glint_track.data.synth import write_synthetic

EXAMPLES = int(os.environ.get("GLINT_TRACK_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(spec=h5_specs())
def test_any_hdf5_file_loads_or_is_refused_in_one_line(spec: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_h5(spec, Path(tmp))


@FUZZ
@given(spec=labelme_specs())
def test_any_labelme_folder_packs_or_is_refused_in_one_line(spec: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_labelme(spec, Path(tmp))


@FUZZ
@given(spec=coco_specs())
def test_any_coco_export_packs_or_is_refused_in_one_line(spec: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_coco(spec, Path(tmp))


@pytest.fixture(scope="module")
def two_glints(tmp_path_factory: pytest.TempPathFactory):
    path = write_synthetic(
        tmp_path_factory.mktemp("data") / "two.h5", num_samples=8, size=SIZE, num_glints=GLINTS, seed=5
    )
    return load_glint_file(path)


@FUZZ
@given(spec=checkpoint_specs())
def test_any_checkpoint_resumes_or_is_refused_in_one_line(spec: dict, two_glints) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_checkpoint(spec, Path(tmp), two_glints)
