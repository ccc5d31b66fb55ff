"""What README promises and no other test checked: environment variables, worker loaders, the cache's
switches, sweep parameters and GPU slots, the git-commit tag, the terminal progress bar, a changed
scheduler on resume, and evaluating a checkpoint file."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import mlflow
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY, latest_checkpoint, run_cli, train_tiny
from mlflow.tracking import MlflowClient

from glint_track.cli import main
from glint_track.data import batches as batches_module

ROOT = Path(__file__).resolve().parents[2]


def test_every_option_can_come_from_a_glint_track_command_option_variable(tiny_h5: Path, tmp_path: Path) -> None:
    env = {
        "GLINT_TRACK_TRAIN_EPOCHS": "2",
        "GLINT_TRACK_TRAIN_RUN_NAME": "from-env",
        "GLINT_TRACK_TRAIN_NO_SAVE_OPTIMIZER": "1",
    }
    result = CliRunner().invoke(main, ["train", "--h5", str(tiny_h5), *TINY], env=env)
    assert result.exit_code == 0, result.output
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.info.run_name == "from-env" and run.data.params["epochs"] == "2"
    typed = CliRunner().invoke(
        main,
        ["synth", "--out", str(tmp_path / "s.h5"), "--size", "32", "--num-samples", "3"],
        env={"GLINT_TRACK_SYNTH_NUM_SAMPLES": "5", "GLINT_TRACK_SYNTH_NUM_GLINTS": "2"},
    )
    assert typed.exit_code == 0, typed.output
    with h5py.File(tmp_path / "s.h5") as f:  # what was typed wins over the variable; the variable fills the rest
        assert f["images"].shape[0] == 3 and f["heatmaps"].shape[1] == 2


def test_worker_processes_stream_the_same_batches_as_the_resident_loader(
    tiny_h5: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, resident = train_tiny(tiny_h5, "--epochs", "2")
    monkeypatch.setattr(
        batches_module, "fits_on_device", lambda *args, **kwargs: False
    )  # as for data larger than the GPU
    result, streamed = train_tiny(tiny_h5, "--epochs", "2", "--num-workers", "2")
    assert "streamed by 2 workers" in result.output
    a, b = (latest_checkpoint(r)[0] for r in (resident, streamed))
    for key, value in a["model_state_dict"].items():
        assert torch.equal(value, b["model_state_dict"][key]), key


def test_cache_dir_is_used_and_no_cache_writes_none(tiny_h5: Path, tmp_path: Path) -> None:
    cache = tmp_path / "my-cache"
    first, _ = train_tiny(tiny_h5, "--epochs", "1", "--cache-dir", str(cache))
    assert "from the cache" not in first.output and any(cache.rglob("*.npy")), list(cache.rglob("*"))
    second, _ = train_tiny(tiny_h5, "--epochs", "1", "--cache-dir", str(cache))
    assert "from the cache" in second.output
    default_cache = Path(os.environ["XDG_CACHE_HOME"])
    third, _ = train_tiny(tiny_h5, "--epochs", "1", "--no-cache")
    assert "from the cache" not in third.output and not default_cache.exists()


def _sweep_children(parent: str) -> dict[str, mlflow.entities.Run]:
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{parent}'", output_format="list"
    )
    return {r.data.tags["glint_track.sweep.point"]: r for r in runs}


def test_sweep_param_axis_and_summary_csv(tiny_h5: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "sweep",
            "--h5",
            str(tiny_h5),
            "--param",
            "base_channels=4,6",
            "--parallel",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--val-split",
            "0.25",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    parent = next(line.split()[1].rstrip(":") for line in result.output.splitlines() if line.startswith("Sweep "))
    children = _sweep_children(parent)
    assert {c.data.params["base_channels"] for c in children.values()} == {"4", "6"}
    rows = list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{parent}/summary.csv"))))
    assert sorted(r["base_channels"] for r in rows) == ["4", "6"] and {r["status"] for r in rows} == {"FINISHED"}
    for row in rows:
        history = MlflowClient().get_metric_history(row["run_id"], "val_loss")
        assert float(row["val_loss"]) == min(m.value for m in history)


def test_sweep_gives_each_parallel_child_the_next_gpu(tiny_h5: Path) -> None:
    """On a CPU machine the children fail on their cuda:N device, which shows which GPU each was given."""
    if torch.cuda.is_available():
        pytest.skip("this checks the slot assignment where no GPU exists (tests/system/test_gpu.py uses real ones)")
    result = CliRunner().invoke(
        main,
        [
            "sweep",
            "--h5",
            str(tiny_h5),
            "--lr",
            "1e-3,2e-3",
            "--gpus",
            "0,1",
            "--parallel",
            "2",
            "--epochs",
            "1",
            "--base-channels",
            "4",
            "--batch-size",
            "8",
        ],
    )
    assert result.exit_code == 1
    assert "on cuda:0" in result.stderr and "on cuda:1" in result.stderr
    errors = {
        c.data.tags["glint_track.sweep.error"]
        for c in _sweep_children(
            mlflow.search_runs(
                search_all_experiments=True, filter_string="tags.glint_track.sweep.children = '2'", output_format="list"
            )[0].info.run_id
        ).values()
    }
    assert all("cuda" in e.lower() for e in errors), errors


def test_the_git_commit_of_the_glint_track_checkout_is_tagged(tiny_h5: Path) -> None:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    if head.returncode != 0:
        pytest.skip("glint-track does not run from a git checkout here (an installed copy has no commit to tag)")
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    assert MlflowClient().get_run(run_id).data.tags["mlflow.source.git.commit"] == head.stdout.strip()


def test_a_terminal_gets_a_progress_bar_and_a_pipe_plain_lines(tiny_h5: Path, tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    cmd = [sys.executable, "-m", "glint_track", "train", "--h5", str(tiny_h5), *TINY, "--epochs", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(
        child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0)
    )  # a terminal has a size; 0×0 draws nothing
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=child_fd, cwd=tmp_path)
    os.close(child_fd)
    chunks = []
    while True:
        try:
            data = os.read(main_fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    terminal = b"".join(chunks).decode(errors="replace")
    assert "epoch 1 train:" in terminal and "batch/s" in terminal and "\r" in terminal, terminal[-2000:]
    # an epoch's line comes from the writer thread once its checkpoint is in, while the next epoch's bar runs: it
    # clears the bar and stands on a line of its own (what a terminal shows last on each line is after its last \r)
    shown = [line.split("\r")[-1] for line in terminal.replace("\r\n", "\n").split("\n")]  # the pty's newlines
    for epoch in (1, 2):
        assert any(re.match(rf"\d{{4}}-\d\d-\d\d [\d:,]+ INFO epoch {epoch}/2 ", line) for line in shown), shown
    piped = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert piped.returncode == 0 and "epoch 1/2" in piped.stderr and "epoch 1 train:" not in piped.stderr


def test_a_changed_scheduler_on_resume_applies_from_the_next_epoch(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "2", "--lr", "0.01", "--scheduler", "none")
    result = run_cli(
        "train", "--resume", run_id, "--epochs", "5", "--scheduler", "step", "--step-size", "1", "--step-gamma", "0.5"
    )
    assert result.exit_code == 0, result.output
    lrs = {m.step: m.value for m in MlflowClient().get_metric_history(run_id, "lr")}
    assert lrs[1] == lrs[2] == pytest.approx(0.01)
    assert lrs[4] == pytest.approx(lrs[3] * 0.5) and lrs[5] == pytest.approx(lrs[4] * 0.5) and lrs[3] < 0.01
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["glint_track.override.scheduler"] == "step from epoch 3"
    checkpoint, _ = latest_checkpoint(run_id)
    assert checkpoint["train_args"]["scheduler"] == "step"


def test_evaluate_a_checkpoint_file_gives_what_its_run_id_gives(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "2")
    _, best = latest_checkpoint(run_id, "best_model.pth")
    by_file = CliRunner().invoke(
        main, ["evaluate", "--model", str(best), "--h5", str(tiny_h5), "--json", "--device", "cpu"]
    )
    by_run = CliRunner().invoke(
        main, ["evaluate", "--model", run_id, "--h5", str(tiny_h5), "--json", "--device", "cpu"]
    )
    assert by_file.exit_code == 0 and by_run.exit_code == 0, by_file.output + by_run.output
    import json

    file_report, run_report = json.loads(by_file.stdout), json.loads(by_run.stdout)
    assert file_report["overall"] == run_report["overall"] and set(file_report["per_glint"]) == set(
        run_report["per_glint"]
    )
