"""Stopping on request: SIGTERM (what schedulers send) and SIGINT (Ctrl-C) end training cleanly.

The first signal asks the loop to stop after the step in flight: the run keeps its last complete
checkpoint, is marked KILLED, and the process exits 128 + the signal number (143, 130). A second signal
stops at once, wherever the process is.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(BaseException):
    """Raised in the training thread once a stop was requested; a BaseException so no `except Exception` eats it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Catches SIGTERM/SIGINT while installed (main thread only) and remembers the first."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only; an embedding program handles them itself
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise TrainingStopped(signum)  # asked twice: stop now
        self.signum = signum
        log.warning(
            "%s received: stopping after the step in flight (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def check(self, agree: Callable[[bool], bool] | None = None) -> None:
        """Raise TrainingStopped if a stop was requested; `agree` combines the flag over DDP ranks, so every
        rank stops at the same step."""
        requested = self.signum is not None
        if agree is not None:
            requested = agree(requested)
        if requested:
            raise TrainingStopped(self.signum or signal.SIGTERM)
