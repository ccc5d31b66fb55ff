"""`glint-track train`, `sweep` and `sync`: parse options and call the training library."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

import click
from click.core import ParameterSource

from glint_track.cli.options import stacked
from glint_track.cli.train_options import TRAIN_OPTIONS
from glint_track.text import counted, glint_error
from glint_track.training.config import TrainConfig


def _argv_without_gpus(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            out.append(arg)
    return out


TRAIN_HELP = """Train the glint UNet on an HDF5 file and track the run in MLflow.

Logs every setting as a param, per-epoch metrics (step = epoch), checkpoints under checkpoints/
(latest every epoch, best on improvement, epoch_NNN every --save-freq), the config, the log, and
the best weights as an MLflow model. With no MLFLOW_TRACKING_URI, runs go to ./mlflow.db.

\b
Examples:
  glint-track train --h5 train_256.h5                                 # the default recipe
  glint-track train --h5 train_256.h5 --epochs 50
  glint-track train --h5 data.h5 --loss hybrid --div-mode overlap --no-save-optimizer
  glint-track train --h5 data.h5 --scheduler cosine --monitor val_f1 --monitor-mode max
  glint-track train --h5 data.h5 --batch-size 256 --lr 4e-3 --compile      # most images/s on a GPU, not most accurate
  glint-track train --resume 3f2c9a0d5b1e4d7c8a6b2e9f0c1d2a3b --epochs 100
  glint-track train --h5 round2.h5 --init-from 3f2c9a0d5b1e4d7c8a6b2e9f0c1d2a3b        # fine-tune on more data
  MLFLOW_TRACKING_URI=http://mlflow.lab:5000 glint-track train --h5 data.h5 --experiment sweeps
  glint-track train --h5 data.h5 --gpus 0,1                           # DDP on two GPUs
  torchrun --nproc-per-node 2 -m glint_track train --h5 data.h5 --device cpu   # DDP, gloo on the CPU

Research-script spellings (--batch, --output_dir, --no_save_optimizer, --save_freq, --keep_last_n,
--val_split, --num_workers, --agg_wF …) are accepted too.
"""


@click.command("train", help=TRAIN_HELP)
@stacked(*TRAIN_OPTIONS)
@click.pass_context
def train_cmd(ctx: click.Context, **options: Any) -> None:
    check_typed(options)  # before anything heavy is imported: a mistyped value answers at once
    # MLflow is not imported here: a new run's first step does not wait for it (training.opening imports it)
    from glint_track.training.loop import train
    from glint_track.training.resume import AlreadyFinished
    from glint_track.training.stopping import TrainingStopped

    for name in ("resume", "init_from", "output_dir", "cache_dir"):  # `mlflow run` passes "" for "not set"
        options[name] = options[name] or None
    explicit = frozenset(
        name
        for name in options
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    )
    gpus = options.pop("gpus")
    if gpus and len(gpus) > 1 and "WORLD_SIZE" not in os.environ:
        from glint_track.training.distributed import launch_torchrun

        launch_torchrun(gpus, _argv_without_gpus(sys.argv[1:]))  # does not return
    if gpus:
        options["device"] = f"cuda:{gpus[0]}" if "WORLD_SIZE" not in os.environ else "cuda"
    try:
        result = train(TrainConfig(**options), explicit, launched=(ctx.obj or {}).get("launched"))
    except AlreadyFinished as e:
        click.echo(str(e))
        return
    except TrainingStopped as e:
        ctx.exit(e.exit_code)  # 130 for SIGINT, 143 for SIGTERM; the log said which run and how to resume
    if result is None:  # a DDP rank other than 0: rank 0 reports
        return
    from glint_track.tracking.ui import run_url, runs_table_url
    from glint_track.training.tracked_run import POOR_ADVICE, POOR_F1

    click.echo(f"\n{_summary_line(result)}")
    click.echo(f"  Local copy:  {result.output_dir}")
    remote = result.tracking_uri.startswith(("http://", "https://"))
    ui = result.tracking_uri if remote else "http://127.0.0.1:5000"
    if not remote:
        click.echo(f"  Browse:      mlflow ui --backend-store-uri {shlex.quote(result.tracking_uri)}   then open")
    click.echo(f"  Runs:        {runs_table_url(ui, result.experiment_id)}")
    click.echo(f"  This run:    {run_url(ui, result.experiment_id, result.run_id)}")
    click.echo(f"  Resume:      glint-track train --resume {result.run_id} --epochs {result.epochs * 2}")
    if result.glints is not None and result.glints["f1"] < POOR_F1:
        click.echo(f"Warning: val F1 {result.glints['f1']:.3f}. {POOR_ADVICE}", err=True)
    if result.spool:
        click.echo(
            f"Warning: the tracking server did not receive everything; the rest is in {result.spool}. When it is back, "
            f"run: glint-track sync {result.spool}",
            err=True,
        )
        ctx.exit(EXIT_SPOOL_PENDING)


def check_typed(options: dict[str, Any]) -> None:
    """The settings' own checks, before torch and MLflow are imported: a value a user typed that no training could
    take is refused in 0.1 s, not after seconds of imports. (A setting not typed has its valid default here; what a
    resumed checkpoint brings is checked again once it is merged.)"""
    settings = {k: v for k, v in options.items() if k != "gpus"}
    for name in ("resume", "init_from", "output_dir", "cache_dir"):
        settings[name] = settings[name] or None
    if settings["resume"] and not settings["h5"]:
        settings["h5"] = "the resumed run's data"  # the checkpoint names it
    TrainConfig(**settings).validate()


def _summary_line(result: Any) -> str:
    """The run's glint result first: what a user waits for."""
    head = f"Run {result.run_id} finished {counted(result.epochs, 'epoch')}"
    if result.glints is None:
        return head + "."
    g, groups = result.glints, result.by_group
    unseen = f", validated on {counted(len(groups), 'group')} it never trained on" if groups else ""
    line = (
        f"{head}{unseen}: val F1 {g['f1']:.3f}, {glint_error(g['loc_err_mean'], g['loc_err_median'])}, "
        f"best checkpoint = epoch {int(g['epoch'])} by {result.monitor}."
    )
    for name, m in (groups or {}).items():
        line += f"\n  {name}: F1 {m['f1']:.3f}, {glint_error(m['loc_err_mean'], m['loc_err_median'])}"
    return line


#: Exit status of a training that finished but whose tracking calls wait in a spool.
EXIT_SPOOL_PENDING = 3
