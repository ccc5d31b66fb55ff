"""Checkpoint files serialised by a child process, so `torch.save` never shares the training GIL.

`torch.save` pickles a few hundred tensors and takes the GIL for each; on a background *thread* every
one of those turns makes the training thread wait, and with it a GPU that is fed by that thread
(measured on an H200: ~20 ms per epoch, 3 % of a 0.6 s epoch; with this module, saving and tracking
cost 0.1 % on an H100, docs/benchmarks.md). Here the training process only copies
the tensors' bytes into one shared buffer (a memfd both processes map) and sends a small description
of the state; the child rebuilds the state, writes it atomically and returns its SHA-256.

Linux only (memfd); elsewhere, and if the child ever dies, checkpoints are written in-process.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch

from glint_track.checkpoint.format import save_and_digest, tree_map
from glint_track.errors import GlintTrackError

log = logging.getLogger(__name__)

ALIGN = 64


class _Slot(NamedTuple):
    """Where one tensor's bytes lie in the shared buffer."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def layout(state: Any) -> tuple[Any, list[tuple[torch.Tensor, _Slot]], int]:
    """`state` with every tensor replaced by its _Slot, the (tensor, slot) pairs, and the bytes they need."""
    pairs: list[tuple[torch.Tensor, _Slot]] = []
    end = 0

    def place(tensor: torch.Tensor) -> _Slot:
        nonlocal end
        dense = tensor.is_contiguous() or (
            tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
        )
        tensor = tensor if dense else tensor.contiguous()
        slot = _Slot(end, tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))
        end += -(-tensor.numel() * tensor.element_size() // ALIGN) * ALIGN  # rounded up to ALIGN
        pairs.append((tensor, slot))
        return slot

    return tree_map(place, state), pairs, end


def _view(buffer: torch.Tensor, slot: _Slot) -> torch.Tensor:
    """The slot's bytes seen as a tensor of its dtype, shape and strides (channels_last stays so)."""
    size = slot.dtype.itemsize * torch.Size(slot.shape).numel()
    return buffer[slot.offset : slot.offset + size].view(slot.dtype).as_strided(slot.shape, slot.stride)


def rebuild(skeleton: Any, buffer: torch.Tensor) -> Any:
    """The state `layout` described, each tensor a copy with its own storage (a view into the buffer
    would make torch.save write the whole buffer with every tensor)."""

    def copy(slot: _Slot) -> torch.Tensor:
        out = torch.empty_strided(slot.shape, slot.stride, dtype=slot.dtype)
        return out.copy_(_view(buffer, slot)) if out.numel() else out

    return tree_map(copy, skeleton, leaf=_Slot)


def wanted(device: torch.device) -> bool:
    """GLINT_TRACK_SAVE_PROCESS: `auto` (default) uses the child for GPU training, where the GPU waits
    whenever the training thread does; on a CPU the child would only compete for the same cores.
    `on` or `off` force it (`on` still needs Linux)."""
    choice = os.environ.get("GLINT_TRACK_SAVE_PROCESS", "auto").strip().lower()
    if choice not in ("auto", "on", "off"):
        raise GlintTrackError(f"GLINT_TRACK_SAVE_PROCESS={choice!r}: use auto, on or off")
    return SaveProcess.available() and (choice == "on" or (choice == "auto" and device.type == "cuda"))


class SaveProcess:
    """Callable like `checkpoint.save_and_digest(state, path) -> sha256`, but the work is done by a
    child process. The child starts with this object, when the run opens: its interpreter and torch take
    seconds to import, which then pass during the first epoch instead of stalling the checkpoint after it
    (on an H200 the epoch after the first checkpoint ended ~3 s late). The buffer they share grows to fit."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._failed = False
        self._size = 0
        try:
            self._start()
        except OSError as e:
            self._give_up(e)

    @staticmethod
    def available() -> bool:
        return hasattr(os, "memfd_create") and sys.platform.startswith("linux")

    def __call__(self, state: dict[str, Any], path: Path) -> str:
        if self._failed:
            return save_and_digest(state, path)
        skeleton, pairs, size = layout(state)
        try:
            if size > self._size:
                self._grow(size)
            for tensor, slot in pairs:
                if tensor.numel():
                    _view(self._buffer, slot).copy_(tensor)
            pickle.dump((skeleton, str(path), self._size), self._requests, protocol=pickle.HIGHEST_PROTOCOL)
            self._requests.flush()
            reply = pickle.load(self._replies)
        except (EOFError, OSError, pickle.UnpicklingError) as e:
            self._give_up(e)
            return save_and_digest(state, path)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def _give_up(self, error: BaseException) -> None:
        code = self._proc.poll() if self._proc else None
        log.warning(
            "the checkpoint writer process stopped (%s, exit code %s); writing checkpoints in this process from now on",
            type(error).__name__,
            code,
        )
        self._failed = True
        self.close()

    def _start(self) -> None:
        buffer_fd = os.memfd_create("glint-track-checkpoint")
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        root = str(Path(__file__).resolve().parents[2])  # this very package, whatever the working directory holds
        serve_call = (
            f"import sys; sys.path.insert(0, {root!r}); "
            "from glint_track.training.save_process import serve; serve(*map(int, sys.argv[1:]))"
        )
        cmd = [sys.executable, "-c", serve_call, str(request_r), str(reply_w), str(buffer_fd), str(os.getpid())]
        try:
            self._proc = subprocess.Popen(cmd, pass_fds=(request_r, reply_w, buffer_fd), close_fds=True)
        except OSError:
            for fd in (request_w, reply_r, buffer_fd):
                os.close(fd)
            raise
        finally:
            for fd in (request_r, reply_w):  # the child holds its own copies
                os.close(fd)
        self._buffer_fd = buffer_fd
        self._requests = os.fdopen(request_w, "wb")
        self._replies = os.fdopen(reply_r, "rb")
        log.info(
            "checkpoints are serialised by process %d (GLINT_TRACK_SAVE_PROCESS=off writes them in this one)",
            self._proc.pid,
        )

    def _grow(self, size: int) -> None:
        """Make the shared buffer `size` bytes; the child maps it again at the next request, which names the size."""
        self._unmap()
        os.ftruncate(self._buffer_fd, size)
        self._map = mmap.mmap(self._buffer_fd, size)
        self._buffer = torch.frombuffer(self._map, dtype=torch.uint8)
        self._size = size

    def _unmap(self) -> None:
        if self._size:
            del self._buffer
            self._map.close()
            self._size = 0

    def close(self) -> None:
        """Ends the child (it finishes a write in progress first)."""
        if self._proc is None:
            return
        for stream in (self._requests, self._replies):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._unmap()
        os.close(self._buffer_fd)
        self._proc = None


def _die_with(parent: int) -> None:
    """A SIGKILLed trainer takes its writer with it: no orphan finishes a file behind a resumed run.
    (The signal comes when the *thread* that started the child ends: the one that opened the run, which
    lives until the run is closed.)"""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def serve(request_fd: int, reply_fd: int, buffer_fd: int, parent: int) -> None:
    """The child: for each (skeleton, path, buffer size) request, write the checkpoint and reply its SHA-256 (or
    the error)."""
    _die_with(parent)
    for sig in (signal.SIGINT, signal.SIGTERM):  # a stop request is for the trainer, which then closes us in order
        signal.signal(sig, signal.SIG_IGN)
    size, buffer = 0, torch.empty(0, dtype=torch.uint8)
    with os.fdopen(request_fd, "rb") as requests, os.fdopen(reply_fd, "wb") as replies:
        while True:
            try:
                skeleton, path, needed = pickle.load(requests)
            except EOFError:
                return
            if needed != size:  # the trainer grew the buffer
                size, buffer = needed, torch.frombuffer(mmap.mmap(buffer_fd, needed), dtype=torch.uint8)
            try:
                reply: Any = save_and_digest(rebuild(skeleton, buffer), Path(path))
            except Exception as e:  # noqa: BLE001 - handed to the trainer, which reports it
                reply = e
            pickle.dump(reply, replies)
            replies.flush()
