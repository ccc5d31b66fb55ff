"""Saving a training's checkpoints every epoch: latest, best and per-epoch copies, written off the training
thread, published to the run with checksums, old epoch files pruned; and the small stateful parts
(progress, RNG) a checkpoint holds beside the model and optimizer."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from glint_track.checkpoint.format import (
    ARTIFACT_DIR,
    BEST,
    EPOCH_FILE,
    LATEST,
    Stateful,
    checksum_path,
    copy_atomic,
    epoch_file,
    gather,
    save_and_digest,
    tree_map,
)
from glint_track.errors import GlintTrackError
from glint_track.files import atomic_path, os_reason
from glint_track.training.background import BackgroundWriter

log = logging.getLogger(__name__)


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
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": pos,
                "has_gauss": has_gauss,
                "cached_gaussian": cached,
            },
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # this process's GPU only (one per DDP rank)
            state["cuda"] = [torch.cuda.get_rng_state()]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(
            ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        )
        random.setstate(state["python"])
        if state.get("cuda") and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.set_rng_state(state["cuda"][0])


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
    return (
        torch.cuda.current_stream().record_event()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None
    )


@dataclass(frozen=True)
class KeepPolicy:
    """Which checkpoints a run keeps, as the user sets it: optimizer state or not (--save-optimizer), an
    `epoch_NNN.pth` every `save_every_n_epochs` (--save-freq; 0: none) and the newest `keep_last_n` of those
    (--keep-last-n; 0: all)."""

    save_optimizer: bool = True
    save_every_n_epochs: int = 10
    keep_last_n: int = 3


class Checkpointer:
    """After each epoch: write `latest_checkpoint.pth`, `best_model.pth` on improvement and the epoch files
    `policy` asks for.

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
        policy: KeepPolicy = KeepPolicy(),
        *,
        writer: BackgroundWriter | None = None,
        model_info: dict[str, Any] | None = None,
        published: dict[str, str | None] | None = None,
        serializer: Callable[[dict[str, Any], Path], str] = save_and_digest,
    ) -> None:
        self.directory = directory
        self.model_info = model_info
        self.store = store
        self.policy = policy
        self.writer = writer
        #: checkpoint file → digests of the versions the run may hold: the one delivered last, and any whose
        #: upload still waits in the spool (a later replay may deliver any of them, in any order with its checksum)
        self.published: dict[str, list[str]] = {name: [d] if d else [] for name, d in (published or {}).items()}
        self.serializer = serializer
        for stale in directory.glob(".*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)

    def save(self, parts: dict[str, Stateful], train_args: dict[str, Any], epoch: int, is_best: bool) -> None:
        state = snapshot(gather(parts, train_args, self.policy.save_optimizer, self.model_info))
        self._submit(state, _copies_event(), epoch, [LATEST, *self._copies(epoch, is_best)])

    def complete(self, state: dict[str, Any], best_is_this: bool) -> None:
        """Publish the best/epoch copies of a resumed checkpoint that its run lacks: the process that
        wrote it was killed after uploading latest_checkpoint.pth and before those. They are written from a
        copy: the optimizer took the checkpoint's tensors as its own state (Optimizer.load_state_dict keeps
        tensors that need no cast), and training changes them while the writer saves."""
        epoch = int(state["epoch"])
        names = [n for n in self._copies(epoch, best_is_this) if n == BEST or n not in self.published]
        if names:
            self._submit(snapshot(state), None, epoch, names)

    def _copies(self, epoch: int, is_best: bool) -> list[str]:
        every = self.policy.save_every_n_epochs
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
            then = (
                f"resume with --resume {self.store.run_id}: the previous checkpoint is intact"
                if LATEST in self.published
                else "train again: the run has no checkpoint yet"
            )
            raise GlintTrackError(
                f"writing the epoch {epoch} checkpoint to {self.directory} failed ({os_reason(e)}); free space there "
                f"(or pass --output-dir on another disk) and {then}"
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
                f"{name} is intact: fix the artifact store (space, permissions) and resume with --resume "
                f"{self.store.run_id}"
            ) from e
        self.published[name] = [digest] if False not in delivered else accepted  # spooled: the old versions may stay

    def _apply_retention(self) -> None:
        """Delete all but the newest keep_last_n epoch files, from the run and from the local folder."""
        if self.policy.keep_last_n <= 0:
            return
        names = set(self.published) | {p.name for p in self.directory.glob("epoch_*.pth")}
        epochs = sorted(int(m.group(1)) for m in map(EPOCH_FILE.match, names) if m)
        for old in epochs[: -self.policy.keep_last_n]:
            name = epoch_file(old)
            for file in (name, checksum_path(Path(name)).name):  # the checkpoint first: a checksum alone is ignored
                if name in self.published:
                    self.store.delete_artifact(f"{ARTIFACT_DIR}/{file}")
                (self.directory / file).unlink(missing_ok=True)
            self.published.pop(name, None)
