"""The `glint-track` command group: logging, and the library's errors as one-line Click errors."""

from __future__ import annotations

import atexit
import errno
import logging
import os
import re
import sys
import threading
import traceback
from typing import Any
from urllib.parse import quote

import click
import psutil

from glint_track import __version__
from glint_track.cli.data import inspect_cmd, pack_cmd, select_cmd, synth_cmd
from glint_track.cli.sweep import sweep_cmd, sync_cmd
from glint_track.cli.tools import evaluate_cmd, export_cmd, predict_cmd
from glint_track.cli.train import train_cmd
from glint_track.errors import GlintTrackError
from glint_track.logs import ConsoleHandler, log_formatter, route_third_party


class _Group(click.Group):
    """The library's errors as Click's one-line errors (exit code 2); a traceback only under --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            try:
                return super().invoke(ctx)
            except OSError as e:
                one_line = _path_error(e)
                if one_line is None:
                    raise
                raise one_line from e
        except (GlintTrackError, click.ClickException) as e:
            if isinstance(e, GlintTrackError) and ctx.params.get("debug"):
                traceback.print_exc()
            project = os.environ.get(PROJECT_PARAMETERS_ENV)
            if isinstance(e, click.ClickException) and not project:
                raise
            error = click.ClickException(_in_project_terms(e.format_message(), project or ""))
            error.exit_code = e.exit_code
            raise error from e


#: What the file system says about a path the user chose (a name too long, a folder that cannot be written, a full
#: disk) and what to do: a one-line error wherever in a command it surfaces, never a traceback.
_PATH_FIXES = {
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EACCES: "choose a folder you can write, or fix its permissions",
    errno.EPERM: "choose a folder you can write, or fix its permissions",
    errno.EROFS: "choose a folder on a disk that can be written",
    errno.ENOSPC: "free some space there, or choose another disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
}


def _path_error(error: OSError) -> GlintTrackError | None:
    """An OSError about a path the user chose, as a one-line GlintTrackError (None for any other OSError)."""
    if error.errno not in _PATH_FIXES or error.filename is None:
        return None
    name = str(error.filename)
    shown = name if len(name) <= 120 else f"{name[:60]}…{name[-40:]} ({len(name)} characters)"
    return GlintTrackError(f"{shown}: {error.strerror}; {_PATH_FIXES[error.errno]}")


#: Set by mlproject.sh to the MLproject's parameter names: under `mlflow run`, errors name `-P epochs`, not `--epochs`
#: (and show no usage line of a command the user did not type).
PROJECT_PARAMETERS_ENV = "GLINT_TRACK_PROJECT_PARAMETERS"


def _in_project_terms(message: str, parameters: str) -> str:
    """`message` as an `mlflow run` user reads it: each option the project sets named by its `-P` parameter."""
    for name in filter(None, (p.strip() for p in parameters.split(","))):
        if name == "no_save_optimizer":
            pairs = [("--no-save-optimizer", f"-P {name}=true"), ("--save-optimizer", f"-P {name}=false")]
        else:
            pairs = [("--resume" if name == "resume_run_id" else "--" + name.replace("_", "-"), f"-P {name}")]
        for option, parameter in pairs:
            message = re.sub(rf"'?(?<![\w-]){re.escape(option)}(?![\w-])'?", parameter, message)
    return message


@click.group(cls=_Group, context_settings={"auto_envvar_prefix": "GLINT_TRACK", "help_option_names": ["-h", "--help"]})
@click.option("--debug/--no-debug", default=False, help="Show tracebacks for input errors and debug logging.")
@click.version_option(__version__, prog_name="glint-track")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Train a UNet to find each infrared LED's corneal glint, with every run tracked in MLflow.

    \b
    Quick start on built-in demo data:
      glint-track synth --out demo.h5
      glint-track train --h5 demo.h5        # 15 epochs: 1 min 38–41 s on 2 CPU cores, val F1 1.00, 0.24 px
      mlflow ui                            # browse runs (in the same folder)

    Every option can also be set as GLINT_TRACK_<COMMAND>_<OPTION>, e.g. GLINT_TRACK_TRAIN_EPOCHS=20.
    """
    _log_to_stderr(debug)
    _name_default_store()
    ctx.obj = {"launched": _launched}  # when this process started, if it is the command (a start-up time counts it)


def run() -> None:
    """The `glint-track` command (console script and `python -m glint_track`). After a command that succeeded, the
    process ends once its threads are done and Python's exit handlers have run: finalising the modules of torch,
    MLflow and SQLAlchemy afterwards takes 1.5-3 s, writes nothing, and the user waits for it."""
    global _launched
    _launched = psutil.Process().create_time()
    try:
        main()
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
    shutdown_threads = getattr(threading, "_shutdown", None)  # what Python's exit runs first: stops thread pools, joins
    if shutdown_threads is None:
        return  # a Python without it exits the usual way
    shutdown_threads()
    atexit._run_exitfuncs()  # then its exit handlers (logging's flush among them)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _name_default_store() -> None:
    """MLflow's default store is ./mlflow.db, named by a URI that percent-encodes the folder: in a folder whose path
    has spaces or non-ASCII letters, SQLite opens the right file but MLflow first creates a folder named by the
    encoded path (/tmp/%C3%9Cber/), left empty beside the real one. The same store, named by its plain path."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return
    folder = os.getcwd()
    if "%" not in folder and quote(folder) != folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{os.path.join(folder, 'mlflow.db')}"


def _log_to_stderr(debug: bool) -> None:
    """Plain timestamped log lines on stderr, MLflow's and warnings only with --debug (see logs.py);
    replaces the handler of an earlier call (e.g. in tests)."""
    global _console
    logger = logging.getLogger("glint_track")
    if _console is not None:
        logger.removeHandler(_console)
    _console = ConsoleHandler(sys.stderr)
    _console.setFormatter(log_formatter())
    logger.addHandler(_console)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    route_third_party(_console, debug)


_console: logging.Handler | None = None
_launched: float | None = None  # set by run(): the process is the command (not a program that invokes it)


for command in (
    train_cmd,
    sweep_cmd,
    sync_cmd,
    evaluate_cmd,
    predict_cmd,
    export_cmd,
    select_cmd,
    pack_cmd,
    inspect_cmd,
    synth_cmd,
):
    main.add_command(command)
