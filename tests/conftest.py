"""Shared fixtures: tiny synthetic data, an isolated MLflow store per test, and a CLI runner."""
# ruff: noqa: E402  (OMP_NUM_THREADS must be set before torch is imported)

from __future__ import annotations

import os
import subprocess
import sys

if "PYTEST_XDIST_WORKER" in os.environ:  # one worker per core: one compute thread each, for it and its subprocesses
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import pytest
import torch
from click.testing import CliRunner, Result

from glint_track.cli import main
from glint_track.data.synth import write_synthetic

# Small enough for a 2-core CPU: 32×32 images, a 4-wide UNet, a few dozen samples.
TINY = [
    "--base-channels",
    "4",
    "--batch-size",
    "8",
    "--val-split",
    "0.25",
    "--passes-per-epoch",
    "1",
    "--device",
    "cpu",
]


def _native_bf16_cpu() -> bool:
    from glint_track.engine import Precision

    return Precision.resolve("auto", torch.device("cpu"), channels_last=False).name == "bf16"


#: `--precision auto` trains in bf16 on a CPU with AVX512-BF16 or AMX and in fp32 on others, and CI runs on both
#: kinds. Tests whose assertions rest on what a trained model computes take the `train_precision` fixture: they
#: run once per precision on a CPU that has bf16 (so a test that holds in one arithmetic only fails here, not on
#: the next CI machine), and in fp32 elsewhere (bf16 would only be emulated there).
CPU_PRECISIONS = ("fp32", "bf16") if _native_bf16_cpu() else ("fp32",)


@pytest.fixture(params=CPU_PRECISIONS)
def train_precision(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's training precision, as a user sets it (GLINT_TRACK_TRAIN_PRECISION)."""
    monkeypatch.setenv("GLINT_TRACK_TRAIN_PRECISION", request.param)
    return request.param


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "tiny.h5", num_samples=32, size=32, num_glints=4, seed=1)


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own working directory with MLflow's embedded default store (./mlflow.db)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the decoded-data cache, per test
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` cannot have files added while inside: its mode without write bits, or, for root (whom modes do
    not stop), the immutable attribute; skipped where neither holds."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        undo = ["chattr", "-i", str(folder)]
    else:
        pytest.skip("cannot make a folder read-only here (root without chattr)")
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str, poll_s: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy (returned); fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


#: This checkout: the MLproject `mlflow run` runs.
REPO = Path(__file__).resolve().parents[1]


def mlflow_run(*params: str) -> subprocess.CompletedProcess:
    """`mlflow run` of this checkout with `-P` params, as users type it, into the test's tracking store."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow.get_tracking_uri())
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():  # else as the README has it: its .venv, not active
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    args = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local"]
    for p in params:
        args += ["-P", p]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def run_cli(*args: str, **kwargs: Any) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False, **kwargs)


def fails_cleanly(args: list[str], message: str, env: dict[str, str] | None = None) -> str:
    """Run the CLI and check the project's bad-input contract: exit 2, one `Error:` line holding
    `message`, no traceback. Returns that line."""
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output
    return errors[0]


def train_tiny(h5: Path, *args: str) -> tuple[Result, str]:
    """Train with the tiny settings; returns the CLI result and the run ID it printed."""
    result = run_cli("train", "--h5", str(h5), *TINY, *args)
    assert result.exit_code == 0, result.output
    run_id = next(line.split()[1] for line in result.output.splitlines() if line.startswith("Run "))
    return result, run_id


def latest_checkpoint(run_id: str, name: str = "latest_checkpoint.pth") -> tuple[dict, Path]:
    path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"checkpoints/{name}"))
    return torch.load(path, weights_only=True), path
