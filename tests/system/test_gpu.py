"""GPU promises, on real GPUs: bf16 by default, --compile, the save process, a deterministic kill-and-resume
bit for bit, NCCL DDP over two GPUs, sweep --gpus, GPU system metrics, and a model that learns in 5 epochs.

Skipped where no GPU exists; with GLINT_TRACK_REQUIRE_GPU=1 (the GPU machine) a missing GPU fails instead.
Run there with: GLINT_TRACK_REQUIRE_GPU=1 pytest -o addopts=-ra tests/system/test_gpu.py (one process: no xdist workers)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import run_cli
from mlflow.tracking import MlflowClient

from glint_track.checkpoint.format import load_checkpoint
from glint_track.data.synth import write_synthetic

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import differing_parts, with_killpoint  # noqa: E402

GPUS = torch.cuda.device_count()
if GPUS == 0:
    if os.environ.get("GLINT_TRACK_REQUIRE_GPU") == "1":
        raise RuntimeError("GLINT_TRACK_REQUIRE_GPU=1 but torch sees no CUDA GPU")
    pytest.skip("no CUDA GPU (GLINT_TRACK_REQUIRE_GPU=1 makes this a failure)", allow_module_level=True)

pytestmark = pytest.mark.timeout(550)
SMALL = ["--base-channels", "8", "--batch-size", "16", "--device", "cuda"]


@pytest.fixture(scope="module")
def gpu_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("gpu") / "d.h5", num_samples=256, size=64, num_glints=4, seed=2)


def _child(args: list[str], kill_at: str | None = None, **env: str) -> subprocess.CompletedProcess:
    full = with_killpoint(dict(os.environ, **env), kill_at)
    return subprocess.run(
        [sys.executable, "-m", "glint_track", "train", *args], env=full, capture_output=True, text=True, timeout=500
    )


def _run(name: str) -> mlflow.entities.Run:
    return mlflow.search_runs(
        search_all_experiments=True, filter_string=f"attributes.run_name = '{name}'", output_format="list"
    )[0]


def test_defaults_on_a_gpu_bf16_save_process_system_metrics_and_5_epochs_learn(gpu_h5: Path) -> None:
    args = ["--h5", str(gpu_h5), "--device", "cuda", "--epochs", "5", "--run-name", "gpu-default"]
    # a sample a second: with CUDA graphs these 5 epochs end before MLflow's default 10 s sampling interval
    result = _child(args, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bf16 on cuda" in result.stderr  # --precision auto on a GPU that computes bf16 natively
    assert "checkpoints are serialised by process" in result.stderr  # GLINT_TRACK_SAVE_PROCESS=auto on a GPU
    run = _run("gpu-default")
    assert run.info.status == "FINISHED" and run.data.params["precision"] == "auto"
    assert run.data.metrics["best_val_f1"] >= 0.9 and run.data.metrics["best_val_loc_err_mean"] <= 1.5, run.data.metrics
    assert any(k.startswith("system/gpu_") for k in run.data.metrics), sorted(run.data.metrics)


def test_compile_trains_and_resumes(gpu_h5: Path) -> None:
    first = _child(["--h5", str(gpu_h5), *SMALL, "--epochs", "2", "--compile", "--run-name", "compiled"])
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = _run("compiled").info.run_id
    resumed = _child(["--resume", run_id, "--epochs", "3"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "val_loss")] == [1, 2, 3]
    folder = Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "checkpoints"
    state = load_checkpoint(folder / "latest_checkpoint.pth")
    assert state["epoch"] == 3 and not any("_orig_mod" in k for k in state["model_state_dict"])  # loads without compile


def test_deterministic_gpu_run_sigkilled_and_resumed_equals_a_straight_run(gpu_h5: Path) -> None:
    common = ["--h5", str(gpu_h5), *SMALL, "--epochs", "4", "--deterministic"]
    straight = _child([*common, "--run-name", "straight"])
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _child([*common, "--run-name", "killed"], kill_at="publish:latest_checkpoint.pth:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_id = _run("killed").info.run_id
    resumed = _child(["--resume", run_id])
    assert resumed.returncode == 0 and "epochs 3→4" in resumed.stderr, resumed.stderr[-3000:]
    folders = [
        Path(mlflow.get_run(r).info.artifact_uri.removeprefix("file://")) / "checkpoints"
        for r in (run_id, _run("straight").info.run_id)
    ]
    a, b = (load_checkpoint(f / "latest_checkpoint.pth") for f in folders)
    assert differing_parts(a, b) == []  # weights and Adam moments, bit for bit


@pytest.mark.skipif(GPUS < 2, reason="needs two GPUs")
def test_two_gpus_nccl_ddp_is_one_run_that_resumes_on_one_gpu(gpu_h5: Path) -> None:
    result = _child(
        ["--h5", str(gpu_h5), *SMALL[:-2], "--gpus", "0,1", "--epochs", "2", "--run-name", "ddp"]
    )  # execs torchrun
    assert result.returncode == 0, result.stderr[-3000:]
    assert "× 2 ranks" in result.stderr
    run = _run("ddp")
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2", run.data.params
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == 1  # rank 0 alone logs
    resumed = _child(["--resume", run.info.run_id, "--epochs", "3"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3]


def test_sweep_puts_children_on_the_gpus_in_turn(gpu_h5: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    )  # children: -m glint_track
    gpus = ",".join(str(i) for i in range(min(GPUS, 2)))
    result = run_cli(
        "sweep",
        "--h5",
        str(gpu_h5),
        "--lr",
        "1e-3,2e-3",
        "--gpus",
        gpus,
        "--parallel",
        "2",
        "--epochs",
        "1",
        "--base-channels",
        "8",
        "--batch-size",
        "16",
    )
    assert result.exit_code == 0, result.output
    for i in range(min(GPUS, 2)):
        assert f"on cuda:{i}" in result.stderr
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {c.info.status for c in children} == {"FINISHED"} and len(children) == 2


@pytest.mark.parametrize(
    ("extra", "captured"),
    [
        ([], "whole training step"),  # the default: bf16, Adam, peak-bce
        (["--scheduler", "cosine", "--epochs", "3"], "whole training step"),  # a new lr each epoch, read by the graph
        (["--loss", "hybrid"], "whole training step"),
        (["--precision", "fp16"], "training forward/backward"),  # loss scaling reads overflow on the host
    ],
)
def test_cuda_graphs_train_exactly_as_eager_steps(gpu_h5: Path, extra: list[str], captured: str) -> None:
    common = ["--h5", str(gpu_h5), *SMALL, "--epochs", "2", *extra, "--deterministic"]  # 256 × 0.9: a partial batch
    name = "-".join(["graphed", *extra])
    graphed = _child([*common, "--run-name", name])
    assert graphed.returncode == 0 and f"CUDA graph of the {captured} captured" in graphed.stderr, graphed.stderr
    eager = _child([*common, "--no-cuda-graphs", "--run-name", f"eager-{name}"])
    assert eager.returncode == 0 and "CUDA graph" not in eager.stderr, eager.stderr[-3000:]
    a, b = (
        load_checkpoint(
            Path(_run(run).info.artifact_uri.removeprefix("file://")) / "checkpoints" / "latest_checkpoint.pth"
        )
        for run in (name, f"eager-{name}")
    )
    assert differing_parts(a, b) == []  # weights, BatchNorm statistics and Adam moments, bit for bit
