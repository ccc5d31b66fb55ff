"""A single background thread for a run's I/O, so the next epoch starts while the last one is saved."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any


class BackgroundWriter:
    """Runs submitted jobs (checkpoint writes, uploads, metric logging) one at a time, in order.

    A failed job is re-raised on the next `submit` or at `flush`, which waits for everything: call it
    before the run ends so that no run finishes with an upload missing. Jobs queued behind a failed one
    are skipped: an epoch's metrics are never logged when its checkpoint did not make it, so a resume
    from the previous checkpoint does not log that epoch twice.

    `hold()` makes queued jobs wait until `release()`: serialising a checkpoint takes the GIL in many
    short turns, and at an epoch boundary, where the GPU waits for the training thread to launch the
    next steps, every turn would stall it; once a few steps are queued on the GPU, the writer can run.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glint-track-writer")
        self._pending: list[Future] = []
        self._failed = threading.Event()
        self._go = threading.Event()
        self._go.set()

    def hold(self) -> None:
        """Called at an epoch's end, before its checkpoint is queued: waits for the jobs queued before
        (the epoch before's checkpoint, metrics, pictures). At most one checkpoint is ever waiting, which
        bounds memory (one CPU copy of the state) and what a kill can lose (the epoch in progress and,
        in its first steps, the one before); the training waits only where writing is slower than an epoch."""
        wait(self._pending)
        self._go.clear()

    def release(self) -> None:
        self._go.set()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for f in done:
            f.result()
        self._pending.append(self._pool.submit(self._run, fn, *args))

    def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        self._go.wait()
        if self._failed.is_set():
            return
        try:
            fn(*args)
        except BaseException:
            self._failed.set()
            raise

    def flush(self) -> None:
        self.release()
        pending, self._pending = self._pending, []
        errors = [f.exception() for f in pending]  # waits for each, in order
        if first := next((e for e in errors if e is not None), None):
            raise first

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)
