"""`glint-track sweep` (grids of trainings as MLflow child runs) and `sync` (a spool sent to its run)."""

from __future__ import annotations

from pathlib import Path

import click

from glint_track.cli.options import D, GpuList
from glint_track.errors import GlintTrackError
from glint_track.training.config import MONITOR_MODES


@click.command("sync")
@click.argument("spool", type=click.Path(file_okay=False, exists=True))
def sync_cmd(spool: str) -> None:
    """Send the metrics, checkpoints and status that a training kept locally while the tracking server
    was unreachable. The server is the one the training used, unless MLFLOW_TRACKING_URI says otherwise.

    \b
    Example:
      glint-track sync runs/3f2c9a0d5b1e4d7c8a6b2e9f0c1d2a3b/spool
    """
    from glint_track.tracking.sync import sync

    run_id, sent = sync(Path(spool))
    click.echo(f"sent {sent} calls to run {run_id}" if sent else f"nothing left to send for run {run_id}")


@click.command("sweep", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--h5", type=click.Path(dir_okay=False), help="Glint HDF5 file every child trains on.")
@click.option("--loss", help="Losses to try, comma-separated, e.g. focal,bce,hybrid.")
@click.option("--lr", help="Learning rates to try, comma-separated, e.g. 1e-3,3e-4.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=V1,V2",
    help="Any other train option to vary, e.g. --param base_channels=16,32 (repeatable).",
)
@click.option("--parallel", type=click.IntRange(1), default=1, show_default=True, help="Children trained at once.")
@click.option(
    "--gpus", type=GpuList(), help="Spread children over these GPUs in turn, e.g. 0,1 (default: each child's --device)."
)
@click.option(
    "--monitor",
    default=D.monitor,
    show_default=True,
    help="Metric that picks each child's best model and the best child.",
)
@click.option("--monitor-mode", type=click.Choice(MONITOR_MODES), default=D.monitor_mode, show_default=True)
@click.option(
    "--experiment", default=D.experiment, show_default=True, help="MLflow experiment of the parent and child runs."
)
@click.option(
    "--resume",
    help="Parent run ID of a sweep to finish: children that did not finish are resumed or started, the rest skipped.",
)
@click.pass_context
def sweep_cmd(
    ctx: click.Context,
    h5: str | None,
    loss: str | None,
    lr: str | None,
    params: tuple[str, ...],
    parallel: int,
    gpus: list[int] | None,
    monitor: str,
    monitor_mode: str,
    experiment: str,
    resume: str | None,
) -> None:
    """Train a grid of settings as MLflow child runs under one parent run, K at a time.

    Any further option is passed to every child's `glint-track train` (e.g. --epochs 30
    --no-save-optimizer). The parent run gets summary.csv (each child's best value of every metric) and
    tags naming the best child; a failed child does not stop the others.

    \b
    Examples:
      glint-track sweep --h5 data.h5 --loss focal,bce,hybrid --lr 1e-3,3e-4 --parallel 3 --epochs 30
      glint-track sweep --h5 data.h5 --param base_channels=16,32 --gpus 0,1 --parallel 2 --no-save-optimizer
      glint-track sweep --resume 7d2e0c9b1a8f4e3d9c6b5a4f3e2d1c0b
    """
    from glint_track.training.sweep import SweepSpec, parse_axes, run_sweep, table

    spec = None
    if not resume:
        if not h5:
            raise GlintTrackError("no data file given: pass --h5 FILE (or --resume a sweep's parent run ID)")
        spec = SweepSpec(str(h5), parse_axes(loss, lr, params), list(ctx.args), monitor, monitor_mode)
    elif h5 or loss or lr or params or ctx.args:
        raise GlintTrackError("--resume finishes a sweep as it was defined; drop the other sweep options")
    parent, children = run_sweep(spec, experiment, parallel, gpus, resume)
    click.echo(table(children, monitor))
    failed = [c for c in children if c.status != "FINISHED"]
    click.echo(
        f"\nSweep {parent}: {len(children) - len(failed)} of {len(children)} children finished; summary.csv is in "
        "the parent run."
    )
    if failed:
        click.echo(
            f"{len(failed)} failed (see each child's log under sweeps/{parent}/); after fixing the cause: "
            f"glint-track sweep --resume {parent}",
            err=True,
        )
        ctx.exit(1)
