"""Checkpoints: what goes in one, how it is written (atomically) and read (without unpickling code).

A checkpoint is gathered from the `state_dict()` of each stateful part of training (model, optimizer,
grad scaler, RNG, progress) and restored through their `load_state_dict()`; no field is copied by hand.
The file keeps the research script's keys (`epoch`, `model_state_dict`, `optimizer_state_dict`,
`train_args`, `metrics`, `timestamp`) so old tools read ours and we resume theirs.

`Checkpointer` decides which files to write after each epoch and hands them to an ArtifactStore
(the MLflow run) for upload and retention.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from glint_track.background import BackgroundWriter
from glint_track.checkpoint_schema import CorruptCheckpoint, check_container, check_fields
from glint_track.errors import GlintTrackError
from glint_track.files import atomic_path, file_digest, first_line, os_reason
from glint_track.model import canonical_state_dict

#: 2: the research script's layer names (1 had names of our own, renamed on load).
FORMAT_VERSION = 2
LATEST = "latest_checkpoint.pth"
BEST = "best_model.pth"
ARTIFACT_DIR = "checkpoints"
EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pth$")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class ArtifactStore(Protocol):
    """Where checkpoint files end up (the MLflow run); see tracking.RunTracker."""

    run_id: str

    def log_artifact(self, local_path: Path, artifact_dir: str) -> bool | None:
        """False when the upload is only queued (spooled), not yet in the run."""

    def delete_artifact(self, artifact_path: str) -> None: ...


class TrainProgress:
    """The loop's own state: last finished epoch, its metrics, and the best monitored value so far."""

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor = monitor
        self.mode = mode
        self.epoch = 0
        self.metrics: dict[str, float] = {}
        self.best_value: float | None = None
        self.best_epoch: int | None = None

    def update(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Record a finished epoch; True when its monitored metric is a new best."""
        self.epoch, self.metrics = epoch, metrics  # train() checked before starting that the monitor is logged
        value = metrics[self.monitor]
        better = self.best_value is None or (value < self.best_value if self.mode == "min" else value > self.best_value)
        if better:
            self.best_value, self.best_epoch = value, epoch
        return better

    def state_dict(self) -> dict[str, Any]:
        best = {"monitor": self.monitor, "mode": self.mode, "value": self.best_value, "epoch": self.best_epoch}
        return {"epoch": self.epoch, "metrics": self.metrics, "best": best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.metrics = dict(state.get("metrics") or {})
        best = state.get("best") or {}
        if best.get("monitor") == self.monitor and best.get("mode") == self.mode:
            self.best_value, self.best_epoch = best.get("value"), best.get("epoch")


class RNGState:
    """Random number generator states of torch (CPU and the training GPU), numpy and Python, as plain
    tensors/tuples. (Checkpoints before DDP support listed every GPU's state; the first is used.)"""

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached_gaussian": cached},
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # this process's GPU only (one per DDP rank)
            state["cuda"] = [torch.cuda.get_rng_state()]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
        random.setstate(state["python"])
        if state.get("cuda") and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.set_rng_state(state["cuda"][0])


#: Checkpoint key of each stateful part; `progress` is spread over the top level (`epoch`, `metrics`, `best`).
PART_KEYS = {
    "model": "model_state_dict",
    "optimizer": "optimizer_state_dict",
    "scaler": "scaler_state_dict",
    "rng": "rng_state",
}
#: Parts left out by --no-save-optimizer: resuming re-creates them from the command line.
OPTIMIZER_PARTS = ("optimizer", "scaler")


def gather(
    parts: dict[str, Stateful], train_args: dict[str, Any], save_optimizer: bool, model_info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One checkpoint dict from the parts' state_dict()s; `model_info` (glints, width, input size) lets
    evaluate/predict rebuild and feed the model without the training file."""
    state: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "train_args": train_args, "save_optimizer": save_optimizer, "model_info": model_info or {},
    }
    for name, part in parts.items():
        if name == "progress":
            state.update(part.state_dict())
        elif save_optimizer or name not in OPTIMIZER_PARTS:
            state[PART_KEYS[name]] = part.state_dict()
    state["timestamp"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return state


def restore(parts: dict[str, Stateful], checkpoint: dict[str, Any], source: str) -> list[str]:
    """Load each part present in the checkpoint; return the names of the parts it did not have."""
    missing = []
    for name, part in parts.items():
        key = PART_KEYS.get(name)
        if name == "progress":
            part.load_state_dict(checkpoint)
        elif checkpoint.get(key):  # an empty state (e.g. a disabled fp16 grad scaler) restores nothing
            try:
                part.load_state_dict(checkpoint[key])
            except (RuntimeError, ValueError, KeyError) as e:
                raise GlintTrackError(
                    f"{source}: its {name} state does not fit this {name} ({first_line(e)}); resume with the same "
                    f"--base-channels, data (glint count) and --optimizer as the run that wrote it"
                ) from e
        else:
            missing.append(name)
    return missing


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Serialise to a temp file in the same folder, fsync, then rename: a reader sees the old file or the new one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def save_and_digest(state: dict[str, Any], path: Path) -> str:
    """save_atomic, then the SHA-256 of the bytes written (what the checksum file records)."""
    save_atomic(state, path)
    return file_digest(path)


def copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def checksum_path(path: Path) -> Path:
    """Where a checkpoint's SHA-256 is kept: beside it, locally and in the run."""
    return path.with_name(path.name + ".sha256")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True: tensors and plain containers only, never pickled code.
    When its checksum file is beside it, the bytes are verified first (it may list two digests: the
    file's and the one it replaces, see Checkpointer._publish)."""
    path = Path(path)
    if not path.is_file():
        raise GlintTrackError(f"{path}: no such checkpoint file; pass a run ID, a runs:/ URI or an existing .pth file to --resume")
    sidecar = checksum_path(path)
    if sidecar.is_file() and file_digest(path) not in sidecar.read_text().split():
        raise CorruptCheckpoint(f"{path}: checksum mismatch, the file is truncated or corrupted; use an earlier checkpoint of the run")
    check_container(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise GlintTrackError(
            f"{path}: refused to load, it holds objects other than tensors and plain data, which could run code; "
            f"re-save it as a plain state dict from a trusted copy"
        ) from e
    except Exception as e:  # torch's reader of bytes from anyone: any failure means an unreadable file, never a crash
        raise CorruptCheckpoint(f"{path}: not a readable checkpoint ({first_line(e)}); it may be truncated, use an earlier one") from e
    if isinstance(checkpoint, dict) and "model_state_dict" not in checkpoint and checkpoint and all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        checkpoint = {"epoch": 0, "model_state_dict": checkpoint}  # a bare weights file (best_model_weights.pt)
    check_fields(checkpoint, str(path))
    checkpoint["model_state_dict"] = canonical_state_dict(checkpoint["model_state_dict"])
    checkpoint.setdefault("epoch", 0)
    checkpoint["train_args"] = checkpoint.get("train_args") or {}
    return checkpoint


def epoch_file(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pth"


def tree_map(fn: Callable[[Any], Any], obj: Any, leaf: type = torch.Tensor) -> Any:
    """`obj` with every `leaf` inside its dicts, lists and tuples replaced by fn(leaf), in order."""
    if isinstance(obj, leaf):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: tree_map(fn, v, leaf) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(tree_map(fn, v, leaf) for v in obj)
    return obj


def snapshot(obj: Any) -> Any:
    """A CPU copy of every tensor in a nested state, so training can go on changing the originals.

    GPU tensors are copied asynchronously into pinned memory: the training thread does not wait for
    them; the reader waits for the event `_copies_event()` records right after.
    """
    return tree_map(_cpu_copy, obj)


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_cuda:  # same strides (channels_last weights stay channels_last), pinned for an async copy
        out = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, pin_memory=True)
        return out.copy_(tensor.detach(), non_blocking=True)
    return tensor.detach().clone()


def _copies_event() -> torch.cuda.Event | None:
    """Marks the point in the GPU stream after which snapshot()'s copies are complete."""
    return torch.cuda.current_stream().record_event() if torch.cuda.is_available() and torch.cuda.is_initialized() else None


class Checkpointer:
    """After each epoch: write `latest_checkpoint.pth`, `best_model.pth` on improvement and
    `epoch_NNN.pth` every `save_every_n_epochs`, keeping only the newest `keep_last_n` epoch files.

    The state is copied to the CPU at once; the files are written atomically to `directory` and
    uploaded to `store` under `checkpoints/` by `writer` in the background (inline without one).
    `published` names the checkpoint files already in the run and the digest of each (a resumed run's;
    None where unknown).
    `serializer` writes a state to a file and returns its digest: `save_and_digest`, or a
    save_process.SaveProcess, which keeps torch.save off the training process.
    """

    def __init__(
        self,
        directory: Path,
        store: ArtifactStore,
        save_optimizer: bool = True,
        save_every_n_epochs: int = 10,
        keep_last_n: int = 3,
        writer: BackgroundWriter | None = None,
        model_info: dict[str, Any] | None = None,
        published: dict[str, str | None] | None = None,
        serializer: Callable[[dict[str, Any], Path], str] = save_and_digest,
    ) -> None:
        self.directory = directory
        self.model_info = model_info
        self.store = store
        self.save_optimizer = save_optimizer
        self.save_every_n_epochs = save_every_n_epochs
        self.keep_last_n = keep_last_n
        self.writer = writer
        #: checkpoint file → digests of the versions the run may hold: the one delivered last, and any whose
        #: upload still waits in the spool (a later replay may deliver any of them, in any order with its checksum)
        self.published: dict[str, list[str]] = {name: [d] if d else [] for name, d in (published or {}).items()}
        self.serializer = serializer
        for stale in directory.glob(".*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)

    def save(self, parts: dict[str, Stateful], train_args: dict[str, Any], epoch: int, is_best: bool) -> None:
        state = snapshot(gather(parts, train_args, self.save_optimizer, self.model_info))
        self._submit(state, _copies_event(), epoch, [LATEST, *self._copies(epoch, is_best)])

    def complete(self, state: dict[str, Any], best_is_this: bool) -> None:
        """Publish the best/epoch copies of a resumed checkpoint that its run lacks: the process that
        wrote it was killed after uploading latest_checkpoint.pth and before those."""
        epoch = int(state["epoch"])
        names = [n for n in self._copies(epoch, best_is_this) if n == BEST or n not in self.published]
        if names:
            self._submit(state, None, epoch, names)

    def _copies(self, epoch: int, is_best: bool) -> list[str]:
        every = self.save_every_n_epochs
        return [BEST] * is_best + ([epoch_file(epoch)] if every and epoch % every == 0 else [])

    def _submit(self, state: dict[str, Any], copied: torch.cuda.Event | None, epoch: int, names: list[str]) -> None:
        if self.writer is None:
            self._write(state, copied, epoch, names)
        else:
            self.writer.submit(self._write, state, copied, epoch, names)

    def _write(self, state: dict[str, Any], copied: torch.cuda.Event | None, epoch: int, names: list[str]) -> None:
        if copied is not None:
            copied.synchronize()
        latest = self.directory / LATEST
        try:
            digest = self.serializer(state, latest)
            for name in names:
                if name != LATEST:
                    copy_atomic(latest, self.directory / name)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError around the OSError
            raise GlintTrackError(
                f"writing the epoch {epoch} checkpoint to {self.directory} failed ({os_reason(e)}); free space there "
                f"(or pass --output-dir on another disk) and resume with --resume {self.store.run_id}: the previous "
                f"checkpoint is intact"
            ) from e
        for name in names:
            self._publish(name, digest)
        if any(EPOCH_FILE.match(n) for n in names):
            self._apply_retention()

    def _publish(self, name: str, digest: str) -> None:
        """Upload the checksum file, then the checkpoint. The checksum file lists the new digest and those
        of every version the run may hold now, so whenever a crash stops the upload, the run holds a file
        that verifies: an old one, or the complete new one (a cut one matches none)."""
        path = self.directory / name
        accepted = [digest] + [d for d in self.published.get(name, []) if d != digest]
        sidecar = checksum_path(path)
        try:
            with atomic_path(sidecar) as tmp:
                tmp.write_text("\n".join(accepted) + "\n")
            delivered = [self.store.log_artifact(sidecar, ARTIFACT_DIR), self.store.log_artifact(path, ARTIFACT_DIR)]
        except Exception as e:  # the store's refusal (tracking.RunTracker._refused) or the local checksum file's
            reason = os_reason(e)[:200]
            raise GlintTrackError(
                f"uploading {ARTIFACT_DIR}/{name} to run {self.store.run_id} failed ({reason}); the run's previous "
                f"{name} is intact: fix the artifact store (space, permissions) and resume with --resume {self.store.run_id}"
            ) from e
        self.published[name] = [digest] if False not in delivered else accepted  # spooled: the old versions may stay

    def _apply_retention(self) -> None:
        """Delete all but the newest keep_last_n epoch files, from the run and from the local folder."""
        if self.keep_last_n <= 0:
            return
        names = set(self.published) | {p.name for p in self.directory.glob("epoch_*.pth")}
        epochs = sorted(int(m.group(1)) for m in map(EPOCH_FILE.match, names) if m)
        for old in epochs[: -self.keep_last_n]:
            name = epoch_file(old)
            for file in (name, checksum_path(Path(name)).name):  # the checkpoint first: a checksum alone is ignored
                if name in self.published:
                    self.store.delete_artifact(f"{ARTIFACT_DIR}/{file}")
                (self.directory / file).unlink(missing_ok=True)
            self.published.pop(name, None)
