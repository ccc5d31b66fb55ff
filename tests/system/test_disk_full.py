"""A real full disk (a tiny tmpfs) under each place a run writes: the output folder, the artifact store, the
data cache. Each ends in one line and exit 2 with the run FAILED, or (the cache) a warning and a finished
run; never a traceback. Needs root to mount; tests/system/test_reliability.py injects the same errors without."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from conftest import TINY
from servers import MlflowServer

from glint_track.cli import main


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 300 kB tmpfs, filled up."""
    mount = tmp_path / "full"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        with open(mount / "filler", "wb") as f:
            try:
                f.write(b"\0" * 400_000)
            except OSError:
                pass
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _train(h5: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["train", "--h5", str(h5), *TINY, "--epochs", "2", *extra])
    return result.exit_code, result.output


def _only_run_status() -> str:
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1
    return runs.status[0]


def test_a_full_output_folder_is_one_line_and_a_failed_run(tiny_h5: Path, full_disk: Path) -> None:
    code, output = _train(tiny_h5, "--output-dir", str(full_disk / "out"))
    assert code == 2 and "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], errors  # the run's folder is set up first
    assert "setting up the output folder failed" in errors[0] or "checkpoint to" in errors[0], errors
    assert output.count("cannot be written (No space left on device)") <= 1  # the log file: said once, not per line
    assert _only_run_status() == "FAILED"


def test_a_full_artifact_store_is_one_line_and_a_failed_run(tiny_h5: Path, full_disk: Path) -> None:
    Path("mlruns").symlink_to(full_disk)  # MLflow's default artifact root, beside mlflow.db
    code, output = _train(tiny_h5)
    assert code == 2 and "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "artifact store" in errors[0], errors
    assert _only_run_status() == "FAILED"


def test_a_full_cache_disk_only_slows_the_run_down(tiny_h5: Path, full_disk: Path) -> None:
    code, output = _train(tiny_h5, "--cache-dir", str(full_disk / "cache"))
    assert code == 0 and "Traceback" not in output, output
    assert "could not cache the decoded data" in output
    assert _only_run_status() == "FINISHED"


def test_a_full_tracking_database_disk_is_one_line(
    tiny_h5: Path, full_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{full_disk / 'mlflow.db'}")
    code, output = _train(tiny_h5)
    assert code == 2 and "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "tracking store at sqlite:" in errors[0] and "disk is full" in errors[0], errors


@pytest.mark.timeout(400)
def test_a_server_whose_artifact_disk_is_full_refuses_and_the_run_fails_in_one_line(
    tiny_h5: Path, full_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `mlflow server` storing artifacts on a full disk answers uploads with an error: that is a
    refusal to report (exit 2, run FAILED), not an outage to wait out."""
    server = MlflowServer(tmp_path, artifacts=full_disk / "artifacts")
    server.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        code, output = _train(tiny_h5)
        assert code == 2 and "Traceback" not in output, output
        errors = [line for line in output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "could not store a file" in errors[0] and "artifact store" in errors[0], errors
        assert _only_run_status() == "FAILED"
    finally:
        server.stop()
