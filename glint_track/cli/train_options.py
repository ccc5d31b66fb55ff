"""Every option of `glint-track train`, with its help; defaults come from TrainConfig."""

from __future__ import annotations

import click

from glint_track.cli.options import D, GpuList
from glint_track.training.config import (
    AGG_MODES,
    DIV_MODES,
    LOSSES,
    MAX_AUGMENT_STRENGTH,
    MONITOR_MODES,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULERS,
    SPLITS,
)

TRAIN_OPTIONS = (
    click.option(
        "--h5",
        type=click.Path(dir_okay=False),
        help="Glint HDF5 file (images, heatmaps[, present, stems]). Taken from the checkpoint on --resume.",
    ),
    click.option(
        "--resume",
        help="Continue a run: an MLflow run ID, a runs:/<id>/<path> URI, or a checkpoint file (the research "
        "script's too).",
    ),
    click.option(
        "--init-from",
        help="Fine-tune: a new run on --h5 that starts from a trained model's weights (an MLflow run ID: its best "
        "checkpoint; a runs:/ or models:/ URI; a checkpoint file), from epoch 1 with a fresh optimizer (its lr "
        "rising over that epoch); its width is the model's. The run is tagged with where it started and shows that "
        "model's data beside its own.",
    ),
    click.option("--experiment", default=D.experiment, show_default=True, help="MLflow experiment of a new run."),
    click.option("--run-name", help="MLflow run name of a new run (default: MLflow picks one)."),
    click.option(
        "--output-dir",
        "--output_dir",
        "output_dir",
        help="Local folder for checkpoints and the log [default: runs/<run id>].",
    ),
    click.option(
        "--epochs",
        type=int,
        default=D.epochs,
        show_default=True,
        help="Train until this epoch (total, counting resumed ones).",
    ),
    click.option(
        "--passes-per-epoch",
        type=click.IntRange(1, 10_000),
        help="Passes over the training frames an epoch [default: auto: about 512 frames an epoch, so 58 labelled "
        "frames get 9 passes and 512 or more get 1; the run records the number used].",
    ),
    click.option(
        "--batch-size",
        "--batch",
        "batch_size",
        type=int,
        default=D.batch_size,
        show_default=True,
        help="Images per step.",
    ),
    click.option(
        "--lr",
        type=float,
        default=D.lr,
        show_default=True,
        help="Learning rate (also of the fresh optimizer when resuming without optimizer state).",
    ),
    click.option(
        "--optimizer",
        type=click.Choice(OPTIMIZERS),
        default=D.optimizer,
        show_default=True,
        help="Optimizer (the research script used Adam).",
    ),
    click.option(
        "--weight-decay",
        type=float,
        default=D.weight_decay,
        show_default=True,
        help="Weight decay (decoupled for adamw).",
    ),
    click.option("--momentum", type=float, default=D.momentum, show_default=True, help="SGD momentum."),
    click.option(
        "--scheduler",
        type=click.Choice(SCHEDULERS),
        default=D.scheduler,
        show_default=True,
        help="LR schedule, set per epoch from the epoch number (no state): flat-cosine holds --lr, then decays it "
        "along a cosine over the last 40 % of the epochs; cosine decays from the start; none keeps --lr (the research "
        "script's).",
    ),
    click.option(
        "--step-size",
        type=int,
        default=D.step_size,
        show_default=True,
        help="Epochs between decays of --scheduler step.",
    ),
    click.option(
        "--step-gamma", type=float, default=D.step_gamma, show_default=True, help="Decay factor of --scheduler step."
    ),
    click.option(
        "--val-split",
        "--val_split",
        "val_split",
        type=float,
        default=D.val_split,
        show_default=True,
        help="Fraction held out for validation; the split is fixed by --seed, identical on resume.",
    ),
    click.option(
        "--split-by",
        type=click.Choice(SPLITS),
        default=D.split_by,
        show_default=True,
        help="What validation holds out: group = whole participants/sessions (the file's 'groups', which pack makes "
        "from sub-folders), so the metrics say how the model does on people it never saw; frame = frames at random "
        "(a recording's neighbouring frames then flatter it); auto = group where the file has two groups or more.",
    ),
    click.option(
        "--augment/--no-augment",
        default=D.augment,
        show_default=True,
        help="Redraw each training batch on the device: shifted, scaled and turned a little, partly covered, with "
        "unlabelled bright spots, blurred, re-exposed and noisy, the glints moved along (never mirrored: that would "
        "swap the LEDs). What makes a few dozen labelled frames hold on new people.",
    ),
    click.option(
        "--augment-strength",
        type=click.FloatRange(0, MAX_AUGMENT_STRENGTH),
        default=D.augment_strength,
        show_default=True,
        help="Scales every augmentation's range and chance (0: none, 2: twice as far).",
    ),
    click.option(
        "--seed",
        type=int,
        default=D.seed,
        show_default=True,
        help="Seeds the weights, the train/val split and the data order.",
    ),
    click.option("--device", default=D.device, show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option(
        "--gpus",
        type=GpuList(),
        help="Train on these GPUs, e.g. 0,1: several start torchrun with one DDP process each (--batch-size is per "
        "GPU).",
    ),
    click.option(
        "--num-workers",
        "--num_workers",
        "num_workers",
        type=int,
        default=D.num_workers,
        show_default=True,
        help="Loader worker processes, used only when the data does not fit on the GPU (it is kept there otherwise).",
    ),
    click.option(
        "--cache/--no-cache",
        default=D.cache,
        show_default=True,
        help="Keep the decoded arrays, uncompressed and memory-mapped, in --cache-dir: parallel runs on one file "
        "share one copy in RAM and skip decompression.",
    ),
    click.option(
        "--cache-dir",
        type=click.Path(file_okay=False),
        help="Where --cache keeps decoded files, by content digest [default: ~/.cache/glint-track].",
    ),
    click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default=D.precision,
        show_default=True,
        help="Mixed precision: auto = bf16 where the GPU or CPU computes it natively (Ampere+, AVX512-BF16/AMX), "
        "else fp32.",
    ),
    click.option(
        "--channels-last/--no-channels-last",
        default=D.channels_last,
        show_default=True,
        help="NHWC memory format: faster convolutions on GPUs and on oneDNN CPUs.",
    ),
    click.option(
        "--compile/--no-compile",
        default=D.compile,
        show_default=True,
        help="torch.compile the model: ~1 min to start, faster steps; for long runs.",
    ),
    click.option(
        "--cuda-graphs/--no-cuda-graphs",
        default=D.cuda_graphs,
        show_default=True,
        help="On one GPU without --compile, replay each full batch's training step (forward, loss, backward, Adam's "
        "update; forward and backward only under fp16 or SGD) from a CUDA graph: the same numbers, faster at small "
        "batch sizes (forward and backward graphed at batch 16 on an H200: 1.2-1.45x the images per second).",
    ),
    click.option(
        "--deterministic/--no-deterministic",
        default=D.deterministic,
        show_default=True,
        help="Bit-identical results for the same seed on a GPU too: deterministic kernels, no cuDNN autotuning "
        "(slower). On a CPU runs are reproducible either way.",
    ),
    click.option(
        "--base-channels",
        type=int,
        default=D.base_channels,
        show_default=True,
        help="UNet width of the first stage (16 → 1.9 M parameters). 8 with --epochs 30 runs 2.3× faster on a CPU "
        "(ONNX Runtime) and is about as accurate: the model for CPU trackers (docs/benchmarks.md).",
    ),
    click.option(
        "--loss",
        type=click.Choice(LOSSES),
        default=D.loss,
        show_default=True,
        help="Heat-map loss; hybrid combines the weighted terms below.",
    ),
    click.option("--alpha", type=float, default=D.alpha, show_default=True, help="Focal loss alpha."),
    click.option("--gamma", type=float, default=D.gamma, show_default=True, help="Focal loss gamma."),
    click.option(
        "--lam-focal",
        "--lam_focal",
        "lam_focal",
        type=float,
        default=D.lam_focal,
        show_default=True,
        help="Hybrid: weight of focal.",
    ),
    click.option(
        "--lam-bce",
        "--lam_bce",
        "lam_bce",
        type=float,
        default=D.lam_bce,
        show_default=True,
        help="Hybrid: weight of BCE.",
    ),
    click.option(
        "--lam-dice",
        "--lam_dice",
        "lam_dice",
        type=float,
        default=D.lam_dice,
        show_default=True,
        help="Hybrid: weight of Dice.",
    ),
    click.option(
        "--div-weight",
        "--div_weight",
        "div_weight",
        type=float,
        default=D.div_weight,
        show_default=True,
        help="Hybrid: weight of the channel divergence penalty.",
    ),
    click.option(
        "--div-mode",
        "--div_mode",
        "div_mode",
        type=click.Choice(DIV_MODES),
        default=D.div_mode,
        show_default=True,
        help="Hybrid: how channel overlap is measured.",
    ),
    click.option(
        "--lam-agg",
        "--lam_agg",
        "lam_agg",
        type=float,
        default=D.lam_agg,
        show_default=True,
        help="Hybrid: weight of the channel-aggregated term.",
    ),
    click.option(
        "--agg-mode",
        "--agg_mode",
        "agg_mode",
        type=click.Choice(AGG_MODES),
        default=D.agg_mode,
        show_default=True,
        help="Hybrid: how channels are combined for the aggregated term.",
    ),
    click.option(
        "--agg-wf",
        "--agg_wF",
        "agg_wf",
        type=float,
        default=D.agg_wf,
        show_default=True,
        help="Aggregated term: focal weight.",
    ),
    click.option(
        "--agg-wb",
        "--agg_wB",
        "agg_wb",
        type=float,
        default=D.agg_wb,
        show_default=True,
        help="Aggregated term: BCE weight.",
    ),
    click.option(
        "--agg-wd",
        "--agg_wD",
        "agg_wd",
        type=float,
        default=D.agg_wd,
        show_default=True,
        help="Aggregated term: Dice weight.",
    ),
    click.option(
        "--save-optimizer/--no-save-optimizer",
        " /--no_save_optimizer",
        "save_optimizer",
        default=D.save_optimizer,
        show_default=True,
        help="Keep the optimizer's state (Adam's moments; fp16's loss scale) in checkpoints (exact resume) or leave "
        "it out (files ~3× smaller; resume restarts the optimizer at --lr). The learning-rate schedule follows the "
        "epoch number, so it resumes either way.",
    ),
    click.option(
        "--save-freq",
        "--save_freq",
        "save_freq",
        type=int,
        default=D.save_freq,
        show_default=True,
        help="Keep checkpoints/epoch_NNN.pth every N epochs (0: never).",
    ),
    click.option(
        "--keep-last-n",
        "--keep_last_n",
        "keep_last_n",
        type=int,
        default=D.keep_last_n,
        show_default=True,
        help="Delete all but the newest N epoch_NNN.pth, from the run too (0: keep all).",
    ),
    click.option(
        "--monitor",
        default=D.monitor,
        show_default=True,
        help="Metric that decides best_model.pth, e.g. val_loss, val_f1 (with --monitor-mode max), val_loc_err_mean.",
    ),
    click.option(
        "--threshold",
        type=float,
        default=D.threshold,
        show_default=True,
        help="Peak probability from which a channel's glint counts as detected (val metrics).",
    ),
    click.option(
        "--match-radius",
        type=float,
        default=D.match_radius,
        show_default=True,
        help="Input pixels within which a detected glint matches its annotation (val metrics).",
    ),
    click.option(
        "--register-model", help="Also register the logged model in the MLflow Model Registry under this name."
    ),
    click.option(
        "--image-every",
        type=int,
        default=D.image_every,
        show_default=True,
        help="Log a picture of validation images with true and predicted glints every N epochs (0: at each new best).",
    ),
    click.option(
        "--monitor-mode",
        type=click.Choice(MONITOR_MODES),
        default=D.monitor_mode,
        show_default=True,
        help="Whether a lower or higher --monitor is better.",
    ),
    click.option(
        "--system-metrics/--no-system-metrics",
        default=D.system_metrics,
        show_default=True,
        help="Log CPU, memory, disk, network and GPU use as MLflow system metrics (system/…) while training; needs "
        "psutil (and nvidia-ml-py for GPUs).",
    ),
)
