"""`glint-track evaluate`: how well a trained model finds each glint in a file, as a table, JSON or an MLflow run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glint_track.constants import DEFAULT_MATCH_RADIUS, DEFAULT_THRESHOLD, default_cache_dir
from glint_track.data.batches import make_batches, place
from glint_track.data.glint_file import GlintData, load_glint_file
from glint_track.engine import Precision, infer, resolve_device
from glint_track.errors import GlintTrackError
from glint_track.glints import METRIC_NAMES, GlintMetrics, decode, ground_truth
from glint_track.model import GlintUNet
from glint_track.text import px
from glint_track.tracking.fetch import fetch_checkpoint
from glint_track.tracking.tracker import RunTracker


@dataclass
class Evaluation:
    model: str
    h5: str
    samples: int
    overall: dict[str, float]
    per_glint: list[dict[str, float]]
    source_run_id: str | None
    data: GlintData  # the file evaluated on, so --log records it without reading it again

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "h5": self.h5,
            "samples": self.samples,
            "overall": self.overall,
            "per_glint": {f"g{c + 1}": m for c, m in enumerate(self.per_glint)},
        }

    def table(self) -> str:
        head = (
            f"{'glint':6s}{'precision':>10s}{'recall':>8s}{'f1':>7s}{'err mean':>12s}{'err median':>12s}{'swaps':>7s}"
        )
        rows = [(f"g{c + 1}", m) for c, m in enumerate(self.per_glint)] + [("all", self.overall)]
        lines = [f"{self.model} on {self.h5} ({self.samples} images)", head]
        for name, m in rows:  # columns wide enough for "none found" with a space before it
            lines.append(
                f"{name:6s}{m['precision']:10.3f}{m['recall']:8.3f}{m['f1']:7.3f}{px(m['loc_err_mean']):>12s}"
                f"{px(m['loc_err_median']):>12s}{m['swap_rate']:7.3f}"
            )
        return "\n".join(lines)


def evaluate(
    model_ref: str,
    h5: str,
    threshold: float = DEFAULT_THRESHOLD,
    match_radius: float = DEFAULT_MATCH_RADIUS,
    batch_size: int = 64,
    device_name: str = "auto",
    cache: bool = True,
) -> Evaluation:
    source = fetch_checkpoint(model_ref, prefer_best=True, option="--model")
    model = GlintUNet.from_checkpoint(source.checkpoint, model_ref)
    data: GlintData = load_glint_file(h5, default_cache_dir() if cache else None)
    if data.num_glints != model.num_glints:
        raise GlintTrackError(
            f"{model_ref} predicts {model.num_glints} glints but {h5} has {data.num_glints}; evaluate on data with "
            "the same glints"
        )
    device = resolve_device(device_name)
    on_device, resident = place(data, device)
    model = model.to(device)
    precision = Precision.resolve("auto", device, channels_last=False)
    truth = ground_truth(on_device.points, on_device.present, on_device.heatmaps).to(on_device.images.device)
    metrics = GlintMetrics(data.num_glints, match_radius)
    batches = make_batches(
        on_device,
        np.arange(data.num_samples),
        batch_size,
        shuffle=False,
        seed=0,
        device=device,
        num_workers=2,
        resident=resident,
    )
    for logits, _, index in infer(model, batches, precision):
        metrics.update(decode(logits, threshold), truth.take(index))
    return Evaluation(model_ref, str(h5), data.num_samples, metrics.compute(), metrics.per_glint(), source.run_id, data)


def log_evaluation(result: Evaluation, experiment: str, threshold: float, match_radius: float) -> str:
    """Record the evaluation as its own MLflow run, tagged with the model's run; returns its ID."""
    tracker = RunTracker.start(experiment, f"evaluate {Path(result.h5).stem}", None, claim=False)
    status = "FAILED"
    try:
        tags = {"glint_track.evaluated_model": result.model, "glint_track.kind": "evaluation"}
        if result.source_run_id:
            tags["glint_track.evaluated_run"] = result.source_run_id
        tracker.set_tags(tags)
        tracker.log_config(
            {
                "h5": result.h5,
                "model": result.model,
                "threshold": threshold,
                "match_radius": match_radius,
                "samples": result.samples,
            }
        )
        tracker.log_dataset(result.data)
        metrics = {f"eval_{k}": v for k, v in result.overall.items()}
        metrics |= {f"eval_g{c + 1}_{k}": m[k] for c, m in enumerate(result.per_glint) for k in METRIC_NAMES}
        tracker.log_metrics(metrics, step=0)
        tracker.log_dict(result.to_dict(), "evaluation.json")
        status = "FINISHED"
    finally:
        tracker.finish(status, wait_s=0)
    return tracker.run_id
