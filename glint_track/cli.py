"""The `glint-track` command line: parses options and calls the library; no training logic lives here."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any
from collections.abc import Callable

import click
from click.core import ParameterSource

from glint_track import __version__
from glint_track.errors import GlintTrackError
from glint_track.training.config import OPTIMIZERS, PRECISIONS, SCHEDULERS, TrainConfig
from glint_track.training.losses import AGG_MODES, DIV_MODES, LOSSES

D = TrainConfig()  # defaults live in TrainConfig only


class _Group(click.Group):
    """The library's errors as Click's one-line errors (exit code 2); a traceback only under --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GlintTrackError as e:
            if ctx.params.get("debug"):
                traceback.print_exc()
            error = click.ClickException(e.message)
            error.exit_code = e.exit_code
            raise error from e


@click.group(cls=_Group, context_settings={"auto_envvar_prefix": "GLINT_TRACK", "help_option_names": ["-h", "--help"]})
@click.option("--debug/--no-debug", default=False, help="Show tracebacks for input errors and debug logging.")
@click.version_option(__version__, prog_name="glint-track")
def main(debug: bool) -> None:
    """Train a UNet to find each infrared LED's corneal glint, with every run tracked in MLflow.

    \b
    Quick start on built-in demo data:
      glint-track synth --out demo.h5
      glint-track train --h5 demo.h5        # 15 epochs: ~3 min on 2 CPU cores, val F1 ~0.99, ~0.3 px
      mlflow ui                            # browse runs (in the same folder)

    Every option can also be set as GLINT_TRACK_<COMMAND>_<OPTION>, e.g. GLINT_TRACK_TRAIN_EPOCHS=20.
    """
    _log_to_stderr(logging.DEBUG if debug else logging.INFO)


def _log_to_stderr(level: int) -> None:
    """Plain timestamped log lines on stderr; replaces the handler of an earlier call (e.g. in tests)."""
    global _console
    logger = logging.getLogger("glint_track")
    if _console is not None:
        logger.removeHandler(_console)
    _console = logging.StreamHandler(sys.stderr)
    _console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(_console)
    logger.setLevel(level)


_console: logging.Handler | None = None


def _options(*specs: Callable[[Callable], Callable]) -> Callable[[Callable], Callable]:
    def apply(f: Callable) -> Callable:
        for spec in reversed(specs):
            f = spec(f)
        return f

    return apply


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


class _GpuList(click.ParamType):
    name = "N[,N…]"

    def convert(self, value: Any, param: Any, ctx: Any) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            gpus = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            gpus = []
        if not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
            self.fail(f"{value!r} is not a list of GPU numbers: use e.g. 0,1", param, ctx)
        return gpus


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
  glint-track train --h5 data.h5 --batch-size 256 --lr 4e-3 --compile      # fastest on a GPU
  glint-track train --resume 3f2c9a0d5b1e4d7c8a6b2e9f0c1d2a3b --epochs 100
  MLFLOW_TRACKING_URI=http://mlflow.lab:5000 glint-track train --h5 data.h5 --experiment sweeps
  glint-track train --h5 data.h5 --gpus 0,1                           # DDP on two GPUs
  torchrun --nproc-per-node 2 -m glint_track train --h5 data.h5 --device cpu   # DDP, gloo on the CPU

Research-script spellings (--batch, --output_dir, --no_save_optimizer, --save_freq, --keep_last_n,
--val_split, --num_workers, --agg_wF …) are accepted too.
"""


@main.command("train", help=TRAIN_HELP)
@_options(
    click.option("--h5", type=click.Path(dir_okay=False), help="Glint HDF5 file (images, heatmaps[, present, stems]). Taken from the checkpoint on --resume."),
    click.option("--resume", help="Continue a run: an MLflow run ID, a runs:/<id>/<path> URI, or a checkpoint file (the research script's too)."),
    click.option("--experiment", default=D.experiment, show_default=True, help="MLflow experiment of a new run."),
    click.option("--run-name", help="MLflow run name of a new run (default: MLflow picks one)."),
    click.option("--output-dir", "--output_dir", "output_dir", help="Local folder for checkpoints and the log [default: runs/<run id>]."),
    click.option("--epochs", type=int, default=D.epochs, show_default=True, help="Train until this epoch (total, counting resumed ones)."),
    click.option("--batch-size", "--batch", "batch_size", type=int, default=D.batch_size, show_default=True, help="Images per step."),
    click.option("--lr", type=float, default=D.lr, show_default=True, help="Learning rate (also of the fresh optimizer when resuming without optimizer state)."),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=D.optimizer, show_default=True, help="Optimizer (the research script used Adam)."),
    click.option("--weight-decay", type=float, default=D.weight_decay, show_default=True, help="Weight decay (decoupled for adamw)."),
    click.option("--momentum", type=float, default=D.momentum, show_default=True, help="SGD momentum."),
    click.option("--scheduler", type=click.Choice(SCHEDULERS), default=D.scheduler, show_default=True, help="LR schedule, stepped per epoch; its state is checkpointed."),
    click.option("--step-size", type=int, default=D.step_size, show_default=True, help="Epochs between decays of --scheduler step."),
    click.option("--step-gamma", type=float, default=D.step_gamma, show_default=True, help="Decay factor of --scheduler step."),
    click.option("--val-split", "--val_split", "val_split", type=float, default=D.val_split, show_default=True, help="Fraction held out for validation; the split is fixed by --seed, identical on resume."),
    click.option("--seed", type=int, default=D.seed, show_default=True, help="Seeds the weights, the train/val split and the data order."),
    click.option("--device", default=D.device, show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--gpus", type=_GpuList(), help="Train on these GPUs, e.g. 0,1: several start torchrun with one DDP process each (--batch-size is per GPU)."),
    click.option("--num-workers", "--num_workers", "num_workers", type=int, default=D.num_workers, show_default=True, help="Loader worker processes, used only when the data does not fit on the GPU (it is kept there otherwise)."),
    click.option("--cache/--no-cache", default=D.cache, show_default=True, help="Keep the decoded arrays, uncompressed and memory-mapped, in --cache-dir: parallel runs on one file share one copy in RAM and skip decompression."),
    click.option("--cache-dir", type=click.Path(file_okay=False), help="Where --cache keeps decoded files, by content digest [default: ~/.cache/glint-track]."),
    click.option("--precision", type=click.Choice(PRECISIONS), default=D.precision, show_default=True, help="Mixed precision: auto = bf16 where the GPU or CPU computes it natively (Ampere+, AVX512-BF16/AMX), else fp32."),
    click.option("--channels-last/--no-channels-last", default=D.channels_last, show_default=True, help="NHWC memory format: faster convolutions on GPUs and on oneDNN CPUs."),
    click.option("--compile/--no-compile", default=D.compile, show_default=True, help="torch.compile the model: ~1 min to start, faster steps; for long runs."),
    click.option("--deterministic/--no-deterministic", default=D.deterministic, show_default=True, help="Bit-identical results for the same seed on a GPU too: deterministic kernels, no cuDNN autotuning (slower). On a CPU runs are reproducible either way."),
    click.option("--base-channels", type=int, default=D.base_channels, show_default=True, help="UNet width of the first stage (16 → 1.9 M parameters)."),
    click.option("--loss", type=click.Choice(LOSSES), default=D.loss, show_default=True, help="Heat-map loss; hybrid combines the weighted terms below."),
    click.option("--alpha", type=float, default=D.alpha, show_default=True, help="Focal loss alpha."),
    click.option("--gamma", type=float, default=D.gamma, show_default=True, help="Focal loss gamma."),
    click.option("--lam-focal", "--lam_focal", "lam_focal", type=float, default=D.lam_focal, show_default=True, help="Hybrid: weight of focal."),
    click.option("--lam-bce", "--lam_bce", "lam_bce", type=float, default=D.lam_bce, show_default=True, help="Hybrid: weight of BCE."),
    click.option("--lam-dice", "--lam_dice", "lam_dice", type=float, default=D.lam_dice, show_default=True, help="Hybrid: weight of Dice."),
    click.option("--div-weight", "--div_weight", "div_weight", type=float, default=D.div_weight, show_default=True, help="Hybrid: weight of the channel divergence penalty."),
    click.option("--div-mode", "--div_mode", "div_mode", type=click.Choice(DIV_MODES), default=D.div_mode, show_default=True, help="Hybrid: how channel overlap is measured."),
    click.option("--lam-agg", "--lam_agg", "lam_agg", type=float, default=D.lam_agg, show_default=True, help="Hybrid: weight of the channel-aggregated term."),
    click.option("--agg-mode", "--agg_mode", "agg_mode", type=click.Choice(AGG_MODES), default=D.agg_mode, show_default=True, help="Hybrid: how channels are combined for the aggregated term."),
    click.option("--agg-wf", "--agg_wF", "agg_wf", type=float, default=D.agg_wf, show_default=True, help="Aggregated term: focal weight."),
    click.option("--agg-wb", "--agg_wB", "agg_wb", type=float, default=D.agg_wb, show_default=True, help="Aggregated term: BCE weight."),
    click.option("--agg-wd", "--agg_wD", "agg_wd", type=float, default=D.agg_wd, show_default=True, help="Aggregated term: Dice weight."),
    click.option(
        "--save-optimizer/--no-save-optimizer", " /--no_save_optimizer", "save_optimizer", default=D.save_optimizer, show_default=True,
        help="Keep optimizer and scheduler state in checkpoints (exact resume) or leave it out (files ~3× smaller; resume restarts the optimizer at --lr).",
    ),
    click.option("--save-freq", "--save_freq", "save_freq", type=int, default=D.save_freq, show_default=True, help="Keep checkpoints/epoch_NNN.pth every N epochs (0: never)."),
    click.option("--keep-last-n", "--keep_last_n", "keep_last_n", type=int, default=D.keep_last_n, show_default=True, help="Delete all but the newest N epoch_NNN.pth, from the run too (0: keep all)."),
    click.option("--monitor", default=D.monitor, show_default=True, help="Metric that decides best_model.pth, e.g. val_loss, val_f1 (with --monitor-mode max), val_loc_err_mean."),
    click.option("--threshold", type=float, default=D.threshold, show_default=True, help="Peak probability from which a channel's glint counts as detected (val metrics)."),
    click.option("--match-radius", type=float, default=D.match_radius, show_default=True, help="Input pixels within which a detected glint matches its annotation (val metrics)."),
    click.option("--register-model", help="Also register the logged model in the MLflow Model Registry under this name."),
    click.option("--image-every", type=int, default=D.image_every, show_default=True, help="Log a picture of validation images with true and predicted glints every N epochs (0: at each new best)."),
    click.option("--monitor-mode", type=click.Choice(["min", "max"]), default=D.monitor_mode, show_default=True, help="Whether a lower or higher --monitor is better."),
    click.option("--system-metrics/--no-system-metrics", default=D.system_metrics, show_default=True, help="Log CPU, memory, disk, network and GPU use as MLflow system metrics (system/…) while training; needs psutil (and nvidia-ml-py for GPUs)."),
)
@click.pass_context
def train_cmd(ctx: click.Context, **options: Any) -> None:
    from glint_track.training.loop import train
    from glint_track.training.resume import AlreadyFinished
    from glint_track.training.run import POOR_ADVICE, POOR_F1
    from glint_track.training.stopping import TrainingStopped

    for name in ("resume", "output_dir", "cache_dir"):  # `mlflow run` passes empty strings for "not set"
        options[name] = options[name] or None
    explicit = frozenset(
        name for name in options if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    )
    gpus = options.pop("gpus")
    if gpus and len(gpus) > 1 and "WORLD_SIZE" not in os.environ:
        from glint_track.training.distributed import launch_torchrun

        launch_torchrun(gpus, _argv_without_gpus(sys.argv[1:]))  # does not return
    if gpus:
        options["device"] = f"cuda:{gpus[0]}" if "WORLD_SIZE" not in os.environ else "cuda"
    try:
        result = train(TrainConfig(**options), explicit)
    except AlreadyFinished as e:
        click.echo(str(e))
        return
    except TrainingStopped as e:
        ctx.exit(e.exit_code)  # 130 for SIGINT, 143 for SIGTERM; the log said which run and how to resume
    if result is None:  # a DDP rank other than 0: rank 0 reports
        return
    click.echo(f"\n{_summary_line(result)}")
    click.echo(f"  Local copy:  {result.output_dir}")
    if result.tracking_uri.startswith(("http://", "https://")):
        click.echo(f"  Open:        {result.tracking_uri.rstrip('/')}/#/experiments/{result.experiment_id}/runs/{result.run_id}")
    else:
        click.echo(f"  Browse:      mlflow ui --backend-store-uri {result.tracking_uri}   then open http://127.0.0.1:5000/#/experiments/{result.experiment_id}/runs/{result.run_id}")
    click.echo(f"  Resume:      glint-track train --resume {result.run_id} --epochs {result.epochs * 2}")
    if result.glints is not None and result.glints["f1"] < POOR_F1:
        click.echo(f"Warning: val F1 {result.glints['f1']:.3f}. {POOR_ADVICE}", err=True)
    if result.spool:
        click.echo(
            f"Warning: the tracking server did not receive everything; the rest is in {result.spool}. When it is back, "
            f"run: glint-track sync {result.spool}", err=True,
        )
        ctx.exit(EXIT_SPOOL_PENDING)


def _summary_line(result: Any) -> str:
    """The run's glint result first: what a user waits for."""
    head = f"Run {result.run_id} finished {result.epochs} epochs"
    if result.glints is None:
        return head + "."
    g = result.glints
    return (f"{head}: val F1 {g['f1']:.3f}, mean glint error {g['loc_err_mean']:.2f} px (median {g['loc_err_median']:.2f} px), "
            f"best checkpoint = epoch {int(g['epoch'])} by {result.monitor}.")


#: Exit status of a training that finished but whose tracking calls wait in a spool.
EXIT_SPOOL_PENDING = 3


@main.command("sync")
@click.argument("spool", type=click.Path(file_okay=False, exists=True))
def sync_cmd(spool: str) -> None:
    """Send the metrics, checkpoints and status that a training kept locally while the tracking server
    was unreachable. The server is the one the training used, unless MLFLOW_TRACKING_URI says otherwise.

    \b
    Example:
      glint-track sync runs/3f2c9a0d5b1e4d7c8a6b2e9f0c1d2a3b/spool
    """
    from pathlib import Path

    from glint_track.tracking.sync import sync

    run_id, sent = sync(Path(spool))
    click.echo(f"sent {sent} calls to run {run_id}" if sent else f"nothing left to send for run {run_id}")


@main.command("sweep", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--h5", type=click.Path(dir_okay=False), help="Glint HDF5 file every child trains on.")
@click.option("--loss", help="Losses to try, comma-separated, e.g. focal,bce,hybrid.")
@click.option("--lr", help="Learning rates to try, comma-separated, e.g. 1e-3,3e-4.")
@click.option("--param", "params", multiple=True, metavar="NAME=V1,V2", help="Any other train option to vary, e.g. --param base_channels=16,32 (repeatable).")
@click.option("--parallel", type=click.IntRange(1), default=1, show_default=True, help="Children trained at once.")
@click.option("--gpus", type=_GpuList(), help="Spread children over these GPUs in turn, e.g. 0,1 (default: each child's --device).")
@click.option("--monitor", default=D.monitor, show_default=True, help="Metric that picks each child's best model and the best child.")
@click.option("--monitor-mode", type=click.Choice(["min", "max"]), default=D.monitor_mode, show_default=True)
@click.option("--experiment", default=D.experiment, show_default=True, help="MLflow experiment of the parent and child runs.")
@click.option("--resume", help="Parent run ID of a sweep to finish: children that did not finish are resumed or started, the rest skipped.")
@click.pass_context
def sweep_cmd(ctx: click.Context, h5: str | None, loss: str | None, lr: str | None, params: tuple[str, ...], parallel: int,
              gpus: list[int] | None, monitor: str, monitor_mode: str, experiment: str, resume: str | None) -> None:
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
    click.echo(f"\nSweep {parent}: {len(children) - len(failed)} of {len(children)} children finished; summary.csv is in the parent run.")
    if failed:
        click.echo(f"{len(failed)} failed (see each child's log under sweeps/{parent}/); after fixing the cause: "
                   f"glint-track sweep --resume {parent}", err=True)
        ctx.exit(1)


#: A detection threshold: a probability strictly between 0 and 1.
PROBABILITY = click.FloatRange(0, 1, min_open=True, max_open=True)
#: Largest image side `pack --img-size` and `predict --input-size` accept (memory grows with its square).
MAX_SIDE = 8192


class _Size(click.ParamType):
    """H or HxW, e.g. 256 or 240x320."""

    name = "H[xW]"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            parts = [int(v) for v in str(value).lower().split("x")]
        except ValueError:
            parts = []
        if len(parts) not in (1, 2) or not 1 <= min(parts) <= max(parts) <= MAX_SIDE:
            self.fail(f"{value!r} is not a size from 1 to {MAX_SIDE}: use H or HxW, e.g. 256 or 240x320", param, ctx)
        return (parts[0], parts[-1])


@main.command("evaluate")
@click.option("--model", "model_ref", required=True, help="A run ID (its best_model.pth), runs:/<id>/<path>, models:/<name>/<version>, or a checkpoint file (the research script's too).")
@click.option("--h5", required=True, type=click.Path(dir_okay=False), help="Glint HDF5 file to evaluate on (every sample).")
@click.option("--threshold", type=PROBABILITY, default=D.threshold, show_default=True, help="Peak probability from which a glint counts as detected.")
@click.option("--match-radius", type=click.FloatRange(0, 1e4, min_open=True), default=D.match_radius, show_default=True, help="Input pixels within which a detected glint matches its annotation.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@click.option("--log/--no-log", "log_run", default=False, show_default=True, help="Record the evaluation as an MLflow run tagged with the model's run.")
@click.option("--experiment", default=D.experiment, show_default=True, help="MLflow experiment of the --log run.")
def evaluate_cmd(model_ref: str, h5: str, threshold: float, match_radius: float, batch_size: int, device: str,
                 as_json: bool, log_run: bool, experiment: str) -> None:
    """Detection precision/recall/F1, localisation error and identity swaps of a trained model, per glint.

    \b
    Examples:
      glint-track evaluate --model 5308fe93de8b4c3f9a278246725680ea --h5 test.h5
      glint-track evaluate --model old_run/best_model.pth --h5 test.h5 --json
    """
    import json

    from glint_track.inference.evaluate import evaluate, log_evaluation
    from glint_track.tracking.server import check_tracking_server

    check_tracking_server()
    result = evaluate(model_ref, h5, threshold, match_radius, batch_size, device)
    click.echo(json.dumps(result.to_dict(), indent=1) if as_json else result.table())
    if log_run:
        click.echo(f"logged as MLflow run {log_evaluation(result, experiment, threshold, match_radius)}", err=as_json)


@main.command("predict")
@click.option("--model", "model_ref", required=True, help="A run ID (its best_model.pth), a runs:/<id>/<path> URI, or a checkpoint file.")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="preds.csv or preds.json: one row per image and glint.")
@click.option("--overlay-dir", type=click.Path(file_okay=False), help="Also write each image with its numbered glints drawn.")
@click.option("--threshold", type=PROBABILITY, default=D.threshold, show_default=True, help="Peak probability from which a glint is reported present.")
@click.option("--input-size", type=_Size(), help="Model input H[xW] [default: the training images' size from the checkpoint].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def predict_cmd(model_ref: str, inputs: tuple[str, ...], out: str, overlay_dir: str | None, threshold: float,
                input_size: tuple[int, int] | None, device: str) -> None:
    """Glint coordinates (in each image's own pixels) for image files or folders of any size.

    \b
    Examples:
      glint-track predict --model 5308fe93de8b4c3f9a278246725680ea frames/ --out preds.csv --overlay-dir overlays/
      glint-track predict --model best_model.pth eye1.png eye2.png --out preds.json
    """
    from pathlib import Path

    from glint_track.inference.predict import predict

    rows = predict(model_ref, list(inputs), Path(out), Path(overlay_dir) if overlay_dir else None, threshold, input_size, device)
    images = len({r["image"] for r in rows})
    click.echo(f"{sum(r['present'] for r in rows)} glints found in {images} images → {out}")


@main.command("pack")
@click.option("--in-dir", type=click.Path(file_okay=False), required=True, help="Folder of labelme .json files (and their images).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="HDF5 file to write (appears only when complete).")
@click.option("--num-glints", type=click.IntRange(1, 64), default=8, show_default=True, help="Glint channels: labels g1..gN.")
@click.option("--prefix", default="g", show_default=True, help="Label prefix before the 1-based glint number.")
@click.option("--sigma-scale", type=click.FloatRange(0, 100), default=1.2, show_default=True, help="Gaussian sigma = max(sigma-min, radius × sigma-scale).")
@click.option("--sigma-min", type=click.FloatRange(0, 100, min_open=True), default=1.5, show_default=True)
@click.option("--img-size", type=_Size(), help="Resize images to H[xW] (default: the first image's size).")
@click.option("--hm-size", type=_Size(), help="Heat-map size h[xw] (default and only accepted value: image size / 4).")
@click.option("--recursive/--no-recursive", default=False, show_default=True, help="Also read subfolders.")
@click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), default="gzip", show_default=True)
def pack_cmd(in_dir: str, out: str, num_glints: int, prefix: str, sigma_scale: float, sigma_min: float,
             img_size: tuple[int, int] | None, hm_size: tuple[int, int] | None, recursive: bool, compression: str) -> None:
    """Pack labelme glint annotations (circles g1..gN) into a training HDF5 file.

    \b
    Example:
      glint-track pack --in-dir annotations/ --out train_256.h5 --img-size 256
    """
    from glint_track.data.pack import pack_labelme

    summary = pack_labelme(in_dir, out, num_glints, prefix, sigma_scale, sigma_min, img_size, hm_size, recursive, compression)
    skipped = f", skipped {len(summary.skipped)} file(s) (see warnings)" if summary.skipped else ""
    click.echo(f"packed {summary.packed} samples with {summary.glints} glints into {summary.out}{skipped}")


@main.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--preview", type=click.Path(dir_okay=False), help="Write a PNG grid of samples with the glints drawn and numbered.")
@click.option("--count", type=click.IntRange(1, 256), default=16, show_default=True, help="Samples in the preview.")
def inspect_cmd(file: str, preview: str | None, count: int) -> None:
    """Summarise a glint HDF5 file and check that the trainer accepts it.

    \b
    Example:
      glint-track inspect train_256.h5 --preview train_256.png
    """
    from glint_track.data.inspect import describe, format_summary
    from glint_track.data.inspect import preview as draw_preview

    data, summary = describe(file)
    click.echo(format_summary(summary))
    if preview:
        click.echo(f"preview: {draw_preview(data, preview, count)}")


@main.command("synth")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="HDF5 file to write.")
@click.option("--num-samples", type=click.IntRange(1), default=512, show_default=True)
@click.option("--size", type=click.IntRange(16), default=128, show_default=True, help="Image side in pixels (multiple of 16).")
@click.option("--difficulty", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="0: centred gaze, open eyes, clean images; 1: wide gaze, closing lids, glasses reflections, blur and noise.")
@click.option("--num-glints", type=click.IntRange(1, 32), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--labelme-dir", type=click.Path(file_okay=False), help="Also write each image as PNG with its labelme JSON here.")
def synth_cmd(out: str, num_samples: int, size: int, difficulty: float, num_glints: int, seed: int, labelme_dir: str | None) -> None:
    """Write built-in demo data: synthetic eye images with labelled glints.

    \b
    Example:
      glint-track synth --out demo.h5 && glint-track train --h5 demo.h5
    """
    from glint_track.data.synth import write_synthetic

    if size % 16:
        raise GlintTrackError(f"--size {size} is not a multiple of 16, which the UNet needs; use e.g. {size // 16 * 16 or 16}")
    path = write_synthetic(out, num_samples, size, num_glints, seed, labelme_dir, difficulty)
    click.echo(f"wrote {num_samples} synthetic {size}×{size} samples with {num_glints} glints to {path}")


if __name__ == "__main__":
    main()
