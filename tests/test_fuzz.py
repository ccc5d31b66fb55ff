"""Property tests (Hypothesis) over crafted HDF5 files, labelme folders and checkpoints: every input ends in
success or the one-line GlintTrackError, never another exception, and never takes memory beyond a small
multiple of the data it really holds. GLINT_TRACK_FUZZ_EXAMPLES sets the examples per target (CI: 300);
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
    checkpoint_specs,
    checkpoint_target,
    declared_bytes,
    h5_specs,
    h5_target,
    labelme_specs,
    labelme_target,
    run_target,
    write_checkpoint,
    write_h5,
    write_labelme,
)

from glint_track.data import load_glint_file
from glint_track.synth import write_synthetic

EXAMPLES = int(os.environ.get("GLINT_TRACK_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
MiB = 2**20


@FUZZ
@given(spec=h5_specs())
def test_any_hdf5_file_loads_or_is_refused_in_one_line(spec: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.h5"
        write_h5(spec, path)
        outcome = run_target(h5_target, path)
        assert outcome.peak_bytes <= 4 * declared_bytes(path) + 16 * MiB


@FUZZ
@given(spec=labelme_specs())
def test_any_labelme_folder_packs_or_is_refused_in_one_line(spec: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "annotations"
        write_labelme(spec, folder)
        outcome = run_target(labelme_target, folder, Path(tmp) / "out.h5", spec)
        assert outcome.peak_bytes <= 32 * MiB


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
        path = Path(tmp) / "crafted.pth"
        write_checkpoint(spec, path)
        run_target(checkpoint_target, path, two_glints, trace_memory=False)  # torch's memory is not traced anyway
