"""Sweeps: a grid of trainings run as MLflow child runs under one parent run.

Each grid point is an ordinary `glint-track train` process whose MLflow run (created here, tagged
with the parent) it continues through MLFLOW_RUN_ID, so a child is a complete run of its own: params,
metrics, checkpoints, model, resumable by ID. K run at a time, on the CPU, one GPU or several GPUs in
turn; they share one decoded copy of the data through the memory-mapped cache. The parent keeps the
sweep's definition (`sweep.json`), a summary table of every child's best values and the best child's
tags. `--resume PARENT` finishes what did not finish and leaves finished children alone.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from glint_track.checkpoint.format import ARTIFACT_DIR, LATEST
from glint_track.constants import default_cache_dir
from glint_track.data.glint_file import load_glint_file
from glint_track.errors import GlintTrackError
from glint_track.figures import sweep_curves
from glint_track.tracking.server import experiment_id_for, list_artifact_names, open_tracking_store, tracking_uri

log = logging.getLogger(__name__)

TAG_POINT = "glint_track.sweep.point"
TAG_PARENT = "mlflow.parentRunId"  # what the MLflow UI nests child runs by
#: Epoch metrics that are bookkeeping, not results: left out of the summary.
_NOT_SUMMARISED = {"lr", "epoch_time_s"}
_HIGHER_IS_BETTER = ("f1", "precision", "recall", "images_per_s")
#: The per-epoch curves the parent run's picture compares across children.
_COMPARED = ("val_f1", "val_loc_err_mean", "val_loss")


@dataclass
class SweepSpec:
    """What a sweep trains: `axes` (train option → values, in grid order) and the flags every child shares."""

    h5: str
    axes: dict[str, list[str]]
    train_args: list[str]
    monitor: str = "val_loss"
    monitor_mode: str = "min"

    def points(self) -> list[dict[str, str]]:
        names = list(self.axes)
        return [dict(zip(names, values)) for values in itertools.product(*(self.axes[n] for n in names))]


@dataclass
class Child:
    point: dict[str, str]
    run_id: str
    status: str = "PENDING"
    log_file: Path | None = None
    best: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return point_key(self.point)

    @property
    def label(self) -> str:
        return point_label(self.point)


def point_key(point: dict[str, str]) -> str:
    return json.dumps(point, sort_keys=True)


def point_label(point: dict[str, str]) -> str:
    """How a grid point reads in logs and as its child run's name, e.g. `loss=bce lr=1e-3`."""
    return " ".join(f"{k}={v}" for k, v in point.items())


def parse_axes(loss: str | None, lr: str | None, params: tuple[str, ...]) -> dict[str, list[str]]:
    """--loss a,b --lr x,y --param name=v1,v2 … → {option: [values]}; each value is checked by the child."""
    axes: dict[str, list[str]] = {}
    for name, values in [("loss", loss), ("lr", lr)] + [
        tuple(p.split("=", 1)) if "=" in p else (p, "") for p in params
    ]:
        if values is None:
            continue
        name = name.strip().lstrip("-").replace("-", "_")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not name or not items:
            raise GlintTrackError(
                f"--param {name or '?'}={values}: give a train option and its values, e.g. --param base_channels=16,32"
            )
        axes[name] = items
    if not axes:
        raise GlintTrackError("nothing to sweep: give comma-separated values to --loss, --lr or --param NAME=V1,V2")
    return axes


def run_sweep(
    spec: SweepSpec | None,
    experiment: str,
    parallel: int,
    gpus: list[int] | None,
    resume: str | None,
    workdir: Path = Path("sweeps"),
) -> tuple[str, list[Child]]:
    """Run (or finish) a sweep; returns the parent run ID and its children, each with its status."""
    open_tracking_store()
    client = MlflowClient()
    if resume:
        parent, spec, known = _reopen(client, resume)
    else:
        assert spec is not None
        experiment_id = experiment_id_for(experiment, client)
        name = "sweep " + " × ".join(f"{k}={','.join(v)}" for k, v in spec.axes.items())
        parent = client.create_run(experiment_id, run_name=name, tags={"glint_track.kind": "sweep"}).info.run_id
        params = {f"sweep.{k}": ",".join(v) for k, v in spec.axes.items()} | {
            "sweep.h5": spec.h5,
            "sweep.train_args": " ".join(spec.train_args),
            "sweep.parallel": parallel,
            "sweep.gpus": gpus or "",
        }
        client.log_batch(parent, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        client.log_dict(parent, spec.__dict__, "sweep.json")
        known = {}
    experiment_id = client.get_run(parent).info.experiment_id
    # one decoded copy for every child: they memory-map it from the cache instead of each decompressing the file
    load_glint_file(spec.h5, default_cache_dir())

    children = []
    for point in spec.points():
        run = known.get(point_key(point))
        if run is None:
            run = client.create_run(
                experiment_id, run_name=point_label(point), tags={TAG_PARENT: parent, TAG_POINT: point_key(point)}
            )
        children.append(Child(point, run.info.run_id, run.info.status))
    todo = [c for c in children if c.status != "FINISHED"]
    for c in children:
        if c.status == "FINISHED":
            log.info("%s: finished already (run %s), skipped", c.label, c.run_id)
    folder = workdir / parent
    folder.mkdir(parents=True, exist_ok=True)
    _run_children(client, spec, todo, parallel, gpus, folder)

    for c in children:
        c.status = client.get_run(c.run_id).info.status
        c.best = _best_values(client, c.run_id)
    _summarise(client, parent, spec, children)
    failed = [c for c in children if c.status != "FINISHED"]
    client.set_terminated(parent, "FAILED" if failed else "FINISHED")
    return parent, children


def _reopen(client: MlflowClient, parent: str) -> tuple[str, SweepSpec, dict[str, Any]]:
    try:
        run = client.get_run(parent)
    except MlflowException as e:
        raise GlintTrackError(
            f"no MLflow run with ID {parent} at {tracking_uri()}; copy the sweep's parent run ID from the MLflow UI"
        ) from e
    try:
        spec = SweepSpec(**mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/sweep.json"))
    except (MlflowException, OSError, TypeError) as e:
        raise GlintTrackError(
            f"run {parent} is not a glint-track sweep (no sweep.json); pass the parent run of a sweep"
        ) from e
    found = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'", max_results=10000
    )
    known = {r.data.tags[TAG_POINT]: r for r in found if TAG_POINT in r.data.tags}
    client.update_run(parent, status="RUNNING")
    return parent, spec, known


def _child_command(spec: SweepSpec, child: Child, gpu: int | None) -> list[str]:
    args = [sys.executable, "-m", "glint_track", "train", "--h5", spec.h5]
    for name, value in child.point.items():
        args += [f"--{name.replace('_', '-')}", value]
    args += spec.train_args + ["--monitor", spec.monitor, "--monitor-mode", spec.monitor_mode]
    if gpu is not None:
        args += ["--device", f"cuda:{gpu}"]
    names = list_artifact_names(child.run_id, ARTIFACT_DIR)
    if LATEST in names:  # an interrupted child continues from its own checkpoint
        args += ["--resume", child.run_id]
    return args


def _run_children(
    client: MlflowClient, spec: SweepSpec, todo: list[Child], parallel: int, gpus: list[int] | None, folder: Path
) -> None:
    """K at a time; GPU slots in turn. A child that fails is marked FAILED and the others go on."""
    waiting = list(todo)
    running: dict[int, tuple[Child, subprocess.Popen]] = {}
    while waiting or running:
        for slot in range(parallel):
            if slot not in running and waiting:
                child = waiting.pop(0)
                gpu = gpus[slot % len(gpus)] if gpus else None
                child.log_file = folder / f"{child.run_id}.log"
                cmd = _child_command(spec, child, gpu)
                env = dict(os.environ, MLFLOW_RUN_ID=child.run_id)
                log.info(
                    "%s: starting run %s%s", child.label, child.run_id, f" on cuda:{gpu}" if gpu is not None else ""
                )
                with open(child.log_file, "w") as child_log:  # the child keeps its own copy of the descriptor
                    running[slot] = (child, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=child_log))
        time.sleep(0.2)
        for slot, (child, proc) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[slot]
            if proc.returncode == 0:
                log.info("%s: finished (run %s)", child.label, child.run_id)
                continue
            last = [line for line in child.log_file.read_text().splitlines() if line.strip()][-1:] or ["(no output)"]
            log.warning(
                "%s: failed with exit code %d: %s (log: %s)", child.label, proc.returncode, last[0], child.log_file
            )
            if client.get_run(child.run_id).info.status == "RUNNING":  # it stopped before it could say so
                client.set_terminated(child.run_id, "FAILED")
            client.set_tag(child.run_id, "glint_track.sweep.error", last[0][:5000])


def _best_values(client: MlflowClient, run_id: str) -> dict[str, float]:
    """Each metric's best value over the epochs (lowest, or highest for F1, precision, recall, speed)."""
    best = {}
    for key in client.get_run(run_id).data.metrics:
        if key in _NOT_SUMMARISED:
            continue
        values = [m.value for m in client.get_metric_history(run_id, key)]
        best[key] = max(values) if any(h in key for h in _HIGHER_IS_BETTER) else min(values)
    return best


def _summarise(client: MlflowClient, parent: str, spec: SweepSpec, children: list[Child]) -> None:
    metrics = sorted({k for c in children for k in c.best})
    rows = [
        {**c.point, "run_id": c.run_id, "status": c.status, **{m: c.best.get(m, "") for m in metrics}} for c in children
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*spec.axes, "run_id", "status", *metrics])
    writer.writeheader()
    writer.writerows(rows)
    client.log_text(parent, out.getvalue(), "summary.csv")
    client.log_dict(parent, rows, "summary.json")
    curves = {
        c.label: {m: [(h.step, h.value) for h in client.get_metric_history(c.run_id, m)] for m in _COMPARED}
        for c in children
    }
    client.log_image(parent, sweep_curves(curves, _COMPARED), "figures/children.png")
    done = [c for c in children if c.status == "FINISHED" and spec.monitor in c.best]
    failed = [c for c in children if c.status != "FINISHED"]
    tags = {
        "glint_track.sweep.children": len(children),
        "glint_track.sweep.failed": len(failed),
        "glint_track.sweep.monitor": f"{spec.monitor} ({spec.monitor_mode})",
    }
    if failed:
        tags["glint_track.sweep.failed_runs"] = ",".join(c.run_id for c in failed)
    if done:
        pick = min if spec.monitor_mode == "min" else max
        best = pick(done, key=lambda c: c.best[spec.monitor])
        tags |= {
            "glint_track.sweep.best_run": best.run_id,
            "glint_track.sweep.best_point": best.label,
            "glint_track.sweep.best_value": best.best[spec.monitor],
        }
        client.log_metric(parent, f"best_{spec.monitor}", best.best[spec.monitor])
    client.log_batch(parent, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def table(children: list[Child], monitor: str) -> str:
    lines = [f"{'child':40s} {'run':32s} {'status':9s} best {monitor}"]
    for c in children:
        value = c.best.get(monitor)
        lines.append(f"{c.label[:40]:40s} {c.run_id:32s} {c.status:9s} {'' if value is None else f'{value:.5g}'}")
    return "\n".join(lines)
