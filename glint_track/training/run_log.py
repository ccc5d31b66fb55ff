"""The run's log file (`training.log` in the MLflow run): every log line of the package, also on disk.

A disk can fill up during a run. logging's own FileHandler then prints a traceback for every line it
cannot write; this one says so once, in one line, and stops writing, while training goes on (the
checkpoint that cannot be written either stops the run with its own one-line error).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from glint_track.files import os_reason
from glint_track.logs import log_formatter


class RunLogHandler(logging.FileHandler):
    def __init__(self, path: Path) -> None:
        super().__init__(
            path, delay=True
        )  # opened at the first line: a folder that cannot be written fails there, quietly
        self.setFormatter(log_formatter())
        self.failed: str | None = None  # why the file stopped being written

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is None:
            super().emit(record)

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as e:
            self._fail(e)

    def close(self) -> None:
        try:
            super().close()
        except OSError as e:
            self._fail(e)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self._fail(sys.exc_info()[1])

    def _fail(self, error: BaseException | None) -> None:
        if self.failed is None:
            self.failed = os_reason(error) if error else "unknown error"
            sys.stderr.write(
                f"warning: the run's log file {self.baseFilename} cannot be written ({self.failed}); "
                f"its lines are only shown here from now on\n"
            )
