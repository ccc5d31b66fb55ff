"""SIGKILL at a chosen point of a real training process, for tests that need the kill to land exactly there.

Put this folder first on PYTHONPATH and set GLINT_TRACK_TEST_KILL to one of
  publish:<file>:<n>  after the n-th upload of checkpoints/<file> by this process (before the next file);
  write:<n>           once the n-th checkpoint file this process (or its save process) writes is in its temp
                      file, before the rename;
  log_model           halfway through uploading the files of the MLflow model.
The process then dies as under `kill -9`: no handler, no `finally`, no atexit.

GLINT_TRACK_TEST_SLOW_UPLOAD=<seconds> delays each checkpoint file's upload into the run by that long (a slow
machine or store: the epoch's checkpoint, and its metrics queued behind it, reach the run late).

GLINT_TRACK_TEST_GATE=<folder> holds the process just before it claims its MLflow run (its plan, and on a
resume its checkpoint, already read): it writes <folder>/<pid>.waiting and goes on once <folder>/<pid>.go or
<folder>/all.go exists, so a test decides which process claims when.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after_publish(name: str, count: int) -> None:
    from glint_track.training.checkpointer import Checkpointer

    real, done = Checkpointer._publish, []

    def publish(self, file: str, digest: str) -> None:
        real(self, file, digest)
        if file == name:
            done.append(file)
            if len(done) == count:
                _die()

    Checkpointer._publish = publish


def _while_writing(count: int) -> None:
    """save_atomic writes every checkpoint file, in the trainer or in its save process (`python -c …`, which
    inherits this environment): its count-th call in either writes the temp file, then the trainer dies there.
    (Watching the folder for the temp file from a thread missed writes shorter than a GIL switch.)"""
    import sys

    import torch

    from glint_track.checkpoint import format as checkpoint_format

    real, calls = checkpoint_format.save_atomic, []

    def save_atomic(state, path: Path) -> None:
        calls.append(path)
        if len(calls) < count:
            return real(state, path)
        with checkpoint_format.atomic_path(path) as tmp:
            torch.save(state, tmp)
            if sys.argv[0] == "-c":  # the save process: its parent is the trainer
                os.kill(os.getppid(), signal.SIGKILL)
            _die()

    checkpoint_format.save_atomic = save_atomic


def _in_log_model() -> None:
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    real = LocalArtifactRepository.log_artifacts

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        if not (Path(local_dir) / "MLmodel").is_file():
            return real(self, local_dir, artifact_path)
        files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
        for file in files[: len(files) // 2]:
            folder = file.parent.relative_to(local_dir).as_posix()
            self.log_artifact(str(file), "/".join(p for p in (artifact_path, folder) if p and p != ".") or None)
        _die()

    LocalArtifactRepository.log_artifacts = log_artifacts


def _slow_upload(seconds: float) -> None:
    import time

    from glint_track.training.checkpointer import Checkpointer

    real = Checkpointer._publish

    def publish(self, file: str, digest: str) -> None:
        time.sleep(seconds)
        real(self, file, digest)

    Checkpointer._publish = publish


def _gate(folder: Path) -> None:
    import time

    from glint_track.tracking.lease import RunLease

    real = RunLease.acquire.__func__

    def acquire(cls, *args, **kwargs):
        (folder / f"{os.getpid()}.waiting").touch()
        deadline = time.monotonic() + 120
        while not ((folder / f"{os.getpid()}.go").exists() or (folder / "all.go").exists()):
            if time.monotonic() > deadline:
                raise SystemExit("test gate: never opened")
            time.sleep(0.01)
        return real(cls, *args, **kwargs)

    RunLease.acquire = classmethod(acquire)


if os.environ.get("GLINT_TRACK_TEST_SLOW_UPLOAD"):
    _slow_upload(float(os.environ["GLINT_TRACK_TEST_SLOW_UPLOAD"]))
if os.environ.get("GLINT_TRACK_TEST_GATE"):
    _gate(Path(os.environ["GLINT_TRACK_TEST_GATE"]))

_point = os.environ.get("GLINT_TRACK_TEST_KILL", "")
if _point.startswith("publish:"):
    _, _name, _count = _point.split(":")
    _after_publish(_name, int(_count))
elif _point.startswith("write:"):
    _while_writing(int(_point.split(":")[1]))
elif _point == "log_model":
    _in_log_model()
