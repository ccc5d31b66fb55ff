"""What the benchmark scripts share."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def make_workdir(path: Path | None, prefix: str) -> Path:
    """The folder a benchmark writes its data, runs and MLflow store into (a new temp folder by default)."""
    workdir = (path or Path(tempfile.mkdtemp(prefix=prefix))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def tensors(obj: object) -> list[torch.Tensor]:
    """Every tensor in a nested checkpoint state, in a fixed order, to compare two states bit for bit."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a `python -m glint_track` child: this checkout first on PYTHONPATH, which keeps
    whatever PYTHONPATH already held (on the lent GPU machine, the carried mlflow)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **extra)


def train_command(*args: str) -> list[str]:
    """`glint-track train` with `args`, as this interpreter runs it (`python -m glint_track`)."""
    return [sys.executable, "-m", "glint_track", "train", *args]


#: Its sitecustomize makes a process SIGKILL itself at a chosen point (GLINT_TRACK_TEST_KILL, see there).
KILLPOINTS = ROOT / "tests" / "killpoints"


def with_killpoint(
    env: dict[str, str], point: str | None, *, gate: Path | None = None, slow_upload_s: float = 0.0
) -> dict[str, str]:
    """`env` for a `python -m glint_track` child that SIGKILLs itself at `point` (None: never), with `gate`
    waits in that folder before claiming its run, and with `slow_upload_s` uploads each checkpoint file that much
    late (see tests/killpoints), this checkout importable."""
    hooks = {"GLINT_TRACK_TEST_KILL": point} if point else {}
    if gate is not None:
        hooks["GLINT_TRACK_TEST_GATE"] = str(gate)
    if slow_upload_s:
        hooks["GLINT_TRACK_TEST_SLOW_UPLOAD"] = str(slow_upload_s)
    paths = [str(KILLPOINTS)] * bool(hooks) + [str(ROOT), env.get("PYTHONPATH", "")]
    return dict(env, PYTHONPATH=os.pathsep.join(p for p in paths if p)) | hooks


def synthetic_file(workdir: Path, prefix: str, samples: int, size: int) -> Path:
    """The benchmark's data (8 glints, seed 0), written once per workdir and size."""
    from glint_track.data.synth import write_synthetic

    h5 = workdir / f"{prefix}_{samples}_{size}.h5"
    if not h5.exists():
        write_synthetic(h5, num_samples=samples, size=size, num_glints=8, seed=0)
    return h5


def differing_parts(
    a: dict, b: dict, parts: tuple[str, ...] = ("model_state_dict", "optimizer_state_dict")
) -> list[str]:
    """The parts of two checkpoints that are not equal bit for bit."""

    def same(x: object, y: object) -> bool:
        tx, ty = tensors(x), tensors(y)
        return len(tx) == len(ty) and all(torch.equal(p, q) for p, q in zip(tx, ty))

    return [part for part in parts if not same(a[part], b[part])]
