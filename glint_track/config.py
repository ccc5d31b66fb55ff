"""Every training setting in one place, with its default.

The CLI fills a TrainConfig; every field is logged as an MLflow param and stored in each checkpoint as
`train_args`, so a resumed run (or a checkpoint from the research script) recreates the same config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from glint_track.errors import GlintTrackError
from glint_track.losses import AGG_MODES, DIV_MODES, LOSSES, LossWeights

OPTIMIZERS = ("adam", "adamw", "sgd")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("none", "cosine", "step")
MONITOR_MODES = ("min", "max")

#: Research-script flag names (SEED.md) that differ from ours, for its checkpoints' `train_args`.
_LEGACY_NAMES = {"batch": "batch_size", "agg_wF": "agg_wf", "agg_wB": "agg_wb", "agg_wD": "agg_wd"}
#: Settings that describe this invocation, not the training, so a resume never inherits them.
_NOT_INHERITED = {"resume"}
#: Settings that belong to the run a checkpoint came from: inherited only when continuing that run.
_RUN_ONLY = frozenset({"experiment", "run_name", "output_dir"})
#: What the research script did without a flag (it had no scheduler and always used Adam).
_RESEARCH_FIXED = {"optimizer": "adam", "scheduler": "none", "weight_decay": 0.0, "loss": "focal"}


@dataclass
class TrainConfig(LossWeights):
    """Training settings; the loss knobs (alpha … agg_wd) come from LossWeights."""

    h5: str | None = None
    output_dir: str | None = None  # local copy of checkpoints and log; default runs/<run name>
    experiment: str = "glint-track"
    run_name: str | None = None
    resume: str | None = None  # run ID, runs:/ URI or checkpoint path
    # model and loss
    base_channels: int = 16
    loss: str = "peak-bce"  # the research script's was focal
    # optimisation
    epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    scheduler: str = "none"
    step_size: int = 10  # step scheduler: epochs between decays
    step_gamma: float = 0.1
    val_split: float = 0.1
    seed: int = 42
    device: str = "auto"
    num_workers: int = 4  # only when the data does not fit on the GPU
    cache: bool = True  # decoded arrays memory-mapped from a cache shared by parallel runs
    cache_dir: str | None = None  # default: $XDG_CACHE_HOME/glint-track or ~/.cache/glint-track
    # speed
    precision: str = "auto"  # bf16 where the GPU/CPU computes it natively, else fp32
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False  # bit-identical results on a GPU too, at some speed cost
    # checkpoints
    save_optimizer: bool = True
    save_freq: int = 10
    keep_last_n: int = 3
    monitor: str = "val_loss"
    monitor_mode: str = "min"
    # glint metrics
    threshold: float = 0.3  # a channel's peak probability at or above this is a detected glint
    match_radius: float = 3.0  # input pixels between a detected glint and its annotation to count as found
    register_model: str | None = None  # also register the logged model in the Model Registry under this name
    image_every: int = 0  # log a picture of validation predictions every N epochs; 0: at each new best
    system_metrics: bool = True  # CPU, memory, disk, network and GPU use as MLflow system metrics (needs psutil)

    def loss_weights(self) -> LossWeights:
        return LossWeights(**{f.name: getattr(self, f.name) for f in fields(LossWeights)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Reject impossible values with the fix, whatever their source (CLI, env var or checkpoint)."""
        checks = [
            (self.h5 is not None, "no data file given: pass --h5 FILE (or --resume a run that has one)"),
            (self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (self.lr > 0, f"--lr must be positive (got {self.lr})"),
            (0.0 < self.val_split < 1.0, f"--val-split must be inside (0, 1), e.g. 0.1 (got {self.val_split})"),
            (self.base_channels >= 1, f"--base-channels must be at least 1 (got {self.base_channels})"),
            (self.num_workers >= 0, f"--num-workers must be 0 or more (got {self.num_workers})"),
            (self.image_every >= 0, f"--image-every must be 0 (at each new best) or more (got {self.image_every})"),
            (self.save_freq >= 0, f"--save-freq must be 0 (off) or more (got {self.save_freq})"),
            (self.keep_last_n >= 0, f"--keep-last-n must be 0 (keep all) or more (got {self.keep_last_n})"),
            (self.step_size >= 1, f"--step-size must be at least 1 (got {self.step_size})"),
            (self.loss in LOSSES, f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"),
            (self.scheduler in SCHEDULERS, f"unknown scheduler {self.scheduler!r}: choose one of {', '.join(SCHEDULERS)}"),
            (self.div_mode in DIV_MODES, f"unknown --div-mode {self.div_mode!r}: choose one of {', '.join(DIV_MODES)}"),
            (self.agg_mode in AGG_MODES, f"unknown --agg-mode {self.agg_mode!r}: choose one of {', '.join(AGG_MODES)}"),
            (self.precision in PRECISIONS, f"unknown --precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"),
            (0.0 < self.threshold < 1.0, f"--threshold must be inside (0, 1) (got {self.threshold})"),
            (self.match_radius > 0, f"--match-radius must be positive (got {self.match_radius})"),
            (not (self.deterministic and self.compile),
             "--deterministic cannot be combined with --compile, whose kernels are chosen by timing; drop one of them"),
            (self.monitor_mode in MONITOR_MODES, f"--monitor-mode must be min or max (got {self.monitor_mode!r})"),
        ]
        for ok, message in checks:
            if not ok:
                raise GlintTrackError(message)


def args_from_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's settings as TrainConfig fields: its `train_args` (ours, or the research script's
    flags), and for a research checkpoint what that script fixed without a flag."""
    known = {f.name for f in fields(TrainConfig)}
    out: dict[str, Any] = {} if "format_version" in checkpoint else dict(_RESEARCH_FIXED)
    for key, value in checkpoint.get("train_args", {}).items():
        if key == "no_save_optimizer":
            out["save_optimizer"] = not value
            continue
        key = _LEGACY_NAMES.get(key, key)
        if key in known and key not in _NOT_INHERITED:
            out[key] = value
    return out


def merge_resumed(cli: TrainConfig, inherited: dict[str, Any], explicit: frozenset[str], same_run: bool) -> TrainConfig:
    """Settings of a resumed training: the checkpoint's, except what the user typed on this command line.
    A new run (from a checkpoint file) keeps its own name, experiment and output folder."""
    skip = explicit | (frozenset() if same_run else _RUN_ONLY)
    return replace(cli, **{k: v for k, v in inherited.items() if k not in skip})
