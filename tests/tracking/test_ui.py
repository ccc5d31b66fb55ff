"""What a user sees of a run outside the numbers: the log lines on the terminal and in training.log, and
how the run reads in the MLflow UI (params, metrics, logged models, pictures)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, TINY

OUR_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ")


def test_the_terminal_and_training_log_hold_our_lines_only(tiny_h5: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="always")  # warnings would show, were they let
    cmd = [sys.executable, "-m", "glint_track", "train", "--h5", str(tiny_h5), *TINY, "--epochs", "1"]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mlflow.db").is_file()  # a fresh store: MLflow created its tables during this run
    logged = [line for line in result.stderr.splitlines() if line and not line.startswith(("Warning:", " "))]
    assert logged and all(OUR_LINE.match(line) for line in logged), result.stderr
    assert "\x1b[" not in result.stderr + result.stdout  # no colour codes in a pipe
    (log,) = (tmp_path / "runs").glob("*/training.log")
    assert all(OUR_LINE.match(line) for line in log.read_text().splitlines()), log.read_text()

    debug = subprocess.run(
        [*cmd[:3], "--debug", *cmd[3:]], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert debug.returncode == 0 and "INFO Started monitoring system metrics" in debug.stderr, debug.stderr
