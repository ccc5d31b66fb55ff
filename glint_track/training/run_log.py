"""The run's log file (`training.log` in the MLflow run): every log line of the package, also on disk.

The handler is attached when training starts, before the run exists (it is opened beside the first epoch):
the lines logged until `open` names the file — settings, the start-up, the first steps — are kept and written
first, so the file has the whole command.

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

#: Lines kept while the file is not open yet (a start-up logs a few dozen; a bound in case it never opens).
MAX_EARLY_LINES = 10_000


class _File(logging.FileHandler):
    def __init__(self, path: Path, owner: RunLogHandler) -> None:
        super().__init__(path, delay=True)  # opened at the first line: a folder that cannot be written fails there
        self.owner = owner

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self.owner.fail(sys.exc_info()[1])


class RunLogHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(log_formatter())
        self.file: _File | None = None
        self.early: list[logging.LogRecord] = []
        self.failed: str | None = None  # why the file stopped being written

    def open(self, path: Path) -> None:
        """Write to `path` from now on, the lines kept so far first."""
        with self.lock:  # the lock `handle` holds while a line is emitted
            self.file = _File(path, self)
            self.file.setFormatter(self.formatter)
            early, self.early = self.early, []
            for record in early:
                self.emit(record)

    @property
    def path(self) -> Path | None:
        return Path(self.file.baseFilename) if self.file is not None else None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is not None:
            return
        if self.file is None:
            if len(self.early) < MAX_EARLY_LINES:
                self.early.append(record)
            return
        self.file.emit(record)

    def flush(self) -> None:
        if self.file is not None:
            try:
                self.file.flush()
            except OSError as e:
                self.fail(e)

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError as e:
                self.fail(e)
        super().close()

    def fail(self, error: BaseException | None) -> None:
        if self.failed is None:
            self.failed = os_reason(error) if error else "unknown error"
            sys.stderr.write(
                f"warning: the run's log file {self.path} cannot be written ({self.failed}); "
                f"its lines are only shown here from now on\n"
            )
