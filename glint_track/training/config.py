"""Every training setting in one place, with its default.

The CLI fills a TrainConfig; every field is logged as an MLflow param and stored in each checkpoint as
`train_args`, so a resumed run (or a checkpoint from the research script) recreates the same config.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, get_args, get_type_hints

from glint_track.constants import DEFAULT_MATCH_RADIUS, DEFAULT_THRESHOLD, RUNS_DIR, default_cache_dir
from glint_track.errors import GlintTrackError, shown

LOSSES = ("peak-bce", "focal", "bce", "dice", "hybrid")  # what each is: training/losses.py
DIV_MODES = ("overlap", "cosine", "kl")
AGG_MODES = ("max", "sum")
OPTIMIZERS = ("adam", "adamw", "sgd")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("flat-cosine", "none", "cosine", "step")
SPLITS = ("auto", "group", "frame")
#: --augment-strength: 0 (none) … this
MAX_AUGMENT_STRENGTH = 3.0
#: --passes-per-epoch auto: whole passes over the training frames to show the model about this many frames an epoch,
#: so that a few dozen labelled frames get hundreds of updates (a set of this size or more: one pass).
EPOCH_FRAMES = 512
#: The part of the epochs over which --scheduler flat-cosine decays the learning rate (fastai's fit_flat_cos: 0.25).
DECAY_SHARE = 0.4
MONITOR_MODES = ("min", "max")
#: Where a run's local folder goes without --output-dir: runs/<run id>.


@dataclass
class LossWeights:
    """Every knob of the research script's losses, with its defaults."""

    alpha: float = 1.0
    gamma: float = 2.0
    lam_focal: float = 1.0
    lam_bce: float = 0.0
    lam_dice: float = 0.0
    div_weight: float = 0.05
    div_mode: str = "cosine"
    lam_agg: float = 0.2
    agg_mode: str = "max"
    agg_wf: float = 1.0
    agg_wb: float = 0.0
    agg_wd: float = 0.0


def knobs_read(name: str) -> tuple[str, ...]:
    """The LossWeights fields that loss `name` reads; the others do not change its value."""
    return {"focal": ("alpha", "gamma"), "hybrid": tuple(f.name for f in fields(LossWeights))}.get(name, ())


#: Research-script flag names (SEED.md) that differ from ours, for its checkpoints' `train_args`.
_LEGACY_NAMES = {"batch": "batch_size", "agg_wF": "agg_wf", "agg_wB": "agg_wb", "agg_wD": "agg_wd"}
#: Settings that describe this invocation, not the training: a resume never inherits them, and a new value
#: on a continued run is not an override of the run's settings. The cache folder is this machine's (a checkpoint,
#: which may come from anyone, never chooses where this machine writes).
INVOCATION = frozenset({"resume", "init_from", "cache_dir"})
#: Settings that belong to the run a checkpoint came from: inherited only when continuing that run (a checkpoint
#: file from elsewhere neither names where its copy is written nor registers a model under a name of its choosing).
_RUN_ONLY = frozenset({"experiment", "run_name", "output_dir", "register_model"})
#: What glint-track did before a setting existed, for checkpoints written then (their train_args lack it): a resume
#: continues them as they were trained.
_BEFORE_SETTING = {"augment": False, "passes_per_epoch": 1, "split_by": "frame"}
#: What the research script did without a flag (it had no scheduler and always used Adam).
_RESEARCH_FIXED = {"optimizer": "adam", "scheduler": "none", "weight_decay": 0.0, "loss": "focal", **_BEFORE_SETTING}
#: The params a run page lists first (MLflow shows them in the order they were logged): what decides the model.
_PARAMS_FIRST = (
    "loss",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "scheduler",
    "step_size",
    "step_gamma",
    "weight_decay",
    "momentum",
    *(f.name for f in fields(LossWeights)),
    "base_channels",
    "h5",
    "augment",
    "augment_strength",
    "passes_per_epoch",
    "val_split",
    "split_by",
    "seed",
    "precision",
)


@dataclass
class TrainConfig(LossWeights):
    """Training settings; the loss knobs (alpha … agg_wd) come from LossWeights."""

    h5: str | None = None
    output_dir: str | None = None  # local copy of checkpoints and log; default runs/<run id>
    experiment: str = "glint-track"
    run_name: str | None = None
    resume: str | None = None  # run ID, runs:/ URI or checkpoint path
    init_from: str | None = None  # a new run from these weights (fine-tuning): run ID, runs:/, models:/ or file
    # model and loss
    base_channels: int = 16
    loss: str = "peak-bce"  # the research script's was focal
    # optimisation
    epochs: int = 15
    passes_per_epoch: int | None = None  # None: auto, EPOCH_FRAMES an epoch (run records the number it used)
    batch_size: int = 16
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    scheduler: str = "flat-cosine"  # the research script had none
    step_size: int = 10  # step scheduler: epochs between decays
    step_gamma: float = 0.1
    augment: bool = True  # each training batch redrawn (data/augment.py); the research script had none
    augment_strength: float = 1.0
    val_split: float = 0.1
    split_by: str = "auto"  # group: whole groups (participants) held out, where the file has groups
    seed: int = 42
    device: str = "auto"
    num_workers: int = 4  # only when the data does not fit on the GPU
    cache: bool = True  # decoded arrays memory-mapped from a cache shared by parallel runs
    cache_dir: str | None = None  # default: $XDG_CACHE_HOME/glint-track or ~/.cache/glint-track
    # speed
    precision: str = "auto"  # bf16 where the GPU/CPU computes it natively, else fp32
    channels_last: bool = True
    compile: bool = False
    cuda_graphs: bool = True  # replay each full batch's forward/backward from a CUDA graph (one GPU, no --compile)
    deterministic: bool = False  # bit-identical results on a GPU too, at some speed cost
    # checkpoints
    save_optimizer: bool = True
    save_freq: int = 10
    keep_last_n: int = 3
    monitor: str = "val_loss"
    monitor_mode: str = "min"
    # glint metrics
    threshold: float = DEFAULT_THRESHOLD  # a channel's peak probability at or above this is a detected glint
    match_radius: float = (
        DEFAULT_MATCH_RADIUS  # input pixels between a detected glint and its annotation to count as found
    )
    register_model: str | None = None  # also register the logged model in the Model Registry under this name
    image_every: int = 0  # log a picture of validation predictions every N epochs; 0: at each new best
    system_metrics: bool = True  # CPU, memory, disk, network and GPU use as MLflow system metrics (needs psutil)

    def loss_weights(self) -> LossWeights:
        return LossWeights(**{f.name: getattr(self, f.name) for f in fields(LossWeights)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def params(self) -> dict[str, Any]:
        """The settings as the MLflow run lists them: what decides the model first, and without the settings
        this run does not use (another loss's knobs, momentum without SGD, step decay without the step
        scheduler), which would read as if they had an effect, and without the local folder, which differs
        from run to run without meaning anything. train_args.json and checkpoints keep all."""
        unused = {f.name for f in fields(LossWeights)} - set(knobs_read(self.loss))
        unused |= {"momentum"} if self.optimizer != "sgd" else set()
        unused |= {"step_size", "step_gamma"} if self.scheduler != "step" else set()
        unused |= {"augment_strength"} if not self.augment else set()
        unused.add("output_dir")  # where this machine keeps a copy (the tag glint_track.local_copy): not a setting
        values = self.to_dict()
        return {k: values[k] for k in dict.fromkeys([*_PARAMS_FIRST, *values]) if k not in unused}

    def run_folder(self, run_id: str) -> Path:
        """The run's local folder: --output-dir, else runs/<run id>."""
        return Path(self.output_dir) if self.output_dir else RUNS_DIR / run_id

    def cache_folder(self) -> Path | None:
        """Where decoded arrays are cached; None with --no-cache."""
        if not self.cache:
            return None
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def validate(self) -> None:
        """Reject impossible values with the fix, whatever their source (CLI, env var or checkpoint)."""
        checks = [
            (self.h5 is not None, "no data file given: pass --h5 FILE (or --resume a run that has one)"),
            (
                not (self.init_from and self.resume),
                "--init-from starts a new run from a model's weights and --resume continues one: pass one of them",
            ),
            (self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})"),
            (
                self.passes_per_epoch is None or 1 <= self.passes_per_epoch <= 10_000,
                f"--passes-per-epoch must be auto or 1 … 10000 (got {self.passes_per_epoch})",
            ),
            (
                math.isfinite(self.augment_strength) and 0 <= self.augment_strength <= MAX_AUGMENT_STRENGTH,
                f"--augment-strength must be in 0 … {MAX_AUGMENT_STRENGTH:g} (got {self.augment_strength}); 0 is "
                "none, 1 the default, or turn it off with --no-augment",
            ),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number (got {self.lr})"),
            (
                math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                f"--weight-decay must be 0 or more (got {self.weight_decay})",
            ),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), e.g. 0.9 (got {self.momentum})"),
            (
                math.isfinite(self.step_gamma) and self.step_gamma > 0,
                f"--step-gamma must be positive (got {self.step_gamma})",
            ),
            (0 <= self.seed < 2**32, f"--seed must be in 0 … {2**32 - 1} (got {self.seed})"),
            (bool(self.experiment.strip()), "--experiment must name an MLflow experiment (got an empty name)"),
            (
                self.run_name is None or bool(self.run_name.strip()),
                "--run-name must not be empty (leave it out for a generated name)",
            ),
            (
                self.register_model is None
                or (self.register_model.strip() and not set("/:") & set(self.register_model)),
                f"--register-model {self.register_model!r} is not a model name MLflow accepts (not empty, no '/' or "
                "':')",
            ),
            (0.0 < self.val_split < 1.0, f"--val-split must be inside (0, 1), e.g. 0.1 (got {self.val_split})"),
            (self.base_channels >= 1, f"--base-channels must be at least 1 (got {self.base_channels})"),
            (self.num_workers >= 0, f"--num-workers must be 0 or more (got {self.num_workers})"),
            (self.image_every >= 0, f"--image-every must be 0 (at each new best) or more (got {self.image_every})"),
            (self.save_freq >= 0, f"--save-freq must be 0 (off) or more (got {self.save_freq})"),
            (self.keep_last_n >= 0, f"--keep-last-n must be 0 (keep all) or more (got {self.keep_last_n})"),
            (self.step_size >= 1, f"--step-size must be at least 1 (got {self.step_size})"),
            (0.0 < self.threshold < 1.0, f"--threshold must be inside (0, 1) (got {self.threshold})"),
            (
                math.isfinite(self.match_radius) and self.match_radius > 0,
                f"--match-radius must be positive (got {self.match_radius})",
            ),
            *(
                (math.isfinite(w) and w >= 0, f"--{name.replace('_', '-')} must be 0 or more (got {w})")
                for name, w in asdict(self.loss_weights()).items()
                if isinstance(w, float)
            ),
            (
                not (self.deterministic and self.compile),
                "--deterministic cannot be combined with --compile, whose kernels are chosen by timing; drop one of "
                "them",
            ),
        ]
        for ok, message in checks + self._choice_checks():
            if not ok:
                raise GlintTrackError(message)

    def _choice_checks(self) -> list[tuple[bool, str]]:
        """Each setting that takes one of a few names holds one of them."""
        choices = {
            "loss": LOSSES,
            "optimizer": OPTIMIZERS,
            "scheduler": SCHEDULERS,
            "div_mode": DIV_MODES,
            "agg_mode": AGG_MODES,
            "precision": PRECISIONS,
            "split_by": SPLITS,
            "monitor_mode": MONITOR_MODES,
        }
        return [
            (
                getattr(self, name) in allowed,
                f"unknown --{name.replace('_', '-')} {getattr(self, name)!r}: choose one of {', '.join(allowed)}",
            )
            for name, allowed in choices.items()
        ]


def args_from_checkpoint(checkpoint: dict[str, Any], label: str) -> dict[str, Any]:
    """A checkpoint's settings as TrainConfig fields: its `train_args` (ours, or the research script's
    flags), and for a research checkpoint what that script fixed without a flag. A value of the wrong
    type is refused in one line (validate() checks ranges once the settings are merged)."""
    types = get_type_hints(TrainConfig)
    out: dict[str, Any] = dict(_BEFORE_SETTING) if "format_version" in checkpoint else dict(_RESEARCH_FIXED)
    for key, value in checkpoint.get("train_args", {}).items():
        if key == "no_save_optimizer":
            key, value = "save_optimizer", not value if isinstance(value, bool) else value
        key = _LEGACY_NAMES.get(key, key)
        if key not in types or key in INVOCATION:
            continue
        if not _has_type(value, types[key]):
            raise GlintTrackError(
                f"{label}: its train_args has {key} = {shown(value)}, not {_type_name(types[key])}; the checkpoint "
                "is damaged "
                f"or was not written by glint-track or the research script: use another one"
            )
        out[key] = float(value) if types[key] in (float, float | None) and value is not None else value
    return out


def _type_name(annotation: Any) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in (get_args(annotation) or (annotation,)))


def _has_type(value: Any, annotation: Any) -> bool:
    """`value` fits a TrainConfig field's annotation (int for a float field too; never a bool for a number)."""
    allowed = get_args(annotation) or (annotation,)
    if value is None:
        return type(None) in allowed
    if isinstance(value, bool):
        return bool in allowed
    return any(
        isinstance(value, int if t is float else t) or (t is float and isinstance(value, float))
        for t in allowed
        if t is not type(None)
    )


def merge_resumed(cli: TrainConfig, inherited: dict[str, Any], explicit: frozenset[str], same_run: bool) -> TrainConfig:
    """Settings of a resumed training: the checkpoint's, except what the user typed on this command line.
    A new run (from a checkpoint file) keeps its own name, experiment and output folder."""
    skip = explicit | (frozenset() if same_run else _RUN_ONLY)
    return replace(cli, **{k: v for k, v in inherited.items() if k not in skip})
