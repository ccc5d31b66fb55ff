"""One log format for the terminal and the run's training.log, and third-party lines kept out of both.

MLflow logs its housekeeping (database set-up, the system-metrics thread, signature checks) at INFO in a
format and colours of its own, torch's ONNX exporter at WARNING, and libraries raise Python warnings about
their own internals: none tells a user anything about their model. All are shown with --debug.
"""

from __future__ import annotations

import logging
import os

from glint_track.files import printable

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class OneLineFormatter(logging.Formatter):
    """Each record's message as one line of plain text: control characters in it (a newline, an ANSI escape, from a
    file name someone chose) are escaped, so no input can forge a log line or colour the terminal. A traceback
    (--debug) is appended as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message)
        return super().formatMessage(record)


def log_formatter() -> logging.Formatter:
    return OneLineFormatter(LOG_FORMAT)


class ConsoleHandler(logging.StreamHandler):
    """Log lines on stderr; on a terminal, written through tqdm so that a line from a background thread (an epoch's,
    printed once its checkpoint is in, while the next epoch's progress bar runs) clears the bar and redraws it below
    instead of breaking it."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(self.stream, "isatty", lambda: False)():
            super().emit(record)
            return
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging's own rule: a record that cannot be written is reported, not raised
            self.handleError(record)


def route_third_party(handler: logging.Handler, debug: bool) -> None:
    """MLflow's log lines go through `handler` (our format, no colours), its warnings and errors only unless
    `debug`; Python warnings become log records, shown only with `debug`. Called before MLflow is imported
    (commands import it when they need it), or after: either way MLflow's own handler is not used."""
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # read once, when MLflow is imported
    _only_through(logging.getLogger("mlflow"), handler, logging.INFO if debug else logging.WARNING)
    logging.captureWarnings(True)
    _only_through(logging.getLogger("py.warnings"), handler, logging.WARNING if debug else logging.CRITICAL)
    # the ONNX exporter notes at WARNING which optional operator sets (torchvision's) it skips; importing torch
    # resets that logger's level from TORCH_LOGS ("-onnx": errors only), so that says it too
    if not debug:
        os.environ.setdefault("TORCH_LOGS", "-onnx")
    _only_through(logging.getLogger("torch.onnx"), handler, logging.WARNING if debug else logging.ERROR)


def _only_through(logger: logging.Logger, handler: logging.Handler, level: int) -> None:
    """`logger`'s records at `level` and above through `handler` alone (MLflow's own coloured handler, if it
    was imported already, removed)."""
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
