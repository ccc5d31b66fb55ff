"""Everything that talks to MLflow: the run, its params/metrics/artifacts, and fetching a run's checkpoint.

With no MLFLOW_TRACKING_URI, MLflow's embedded default is used (SQLite `mlflow.db` in the working
directory, artifacts beside it); teams point MLFLOW_TRACKING_URI at an `mlflow server`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import numpy as np
import requests
import torch
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, LoggedModelStatus, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

import glint_track
from glint_track.checkpoint import EPOCH_FILE, ARTIFACT_DIR, BEST, LATEST, CorruptCheckpoint, copy_atomic, load_checkpoint
from glint_track.config import INVOCATION
from glint_track.data import GlintData
from glint_track.errors import GlintTrackError
from glint_track.files import file_digest, first_line, os_reason
from glint_track.lease import RunLease
from glint_track.spool import Spool

try:  # the SQL stores' errors (mlflow-skinny installs may lack SQLAlchemy)
    from sqlalchemy.exc import SQLAlchemyError

    _SQL_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError,)
except ImportError:
    _SQL_ERRORS = ()

log = logging.getLogger(__name__)
# MLflow's per-download progress bars would clutter our log; our own progress is shown per epoch.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow retries a failed request for minutes by default; an unreachable server is spooled instead (see
# RunTracker), so a few seconds of retries are enough to ride out a blip.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")

TAG_RESUMED_FROM = "glint_track.resumed_from"
TAG_DATASET_DIGEST = "glint_track.dataset.digest"
TAG_OVERRIDE = "glint_track.override."  # + setting: its value on a continued run where it differs from the param
TAG_HISTORY = "glint_track.history"  # one line per resume that changed settings
TAG_SUMMARY = "glint_track.summary"  # the glint result
TAG_NOTE = "mlflow.note.content"  # the run's description in the MLflow UI
TAG_CONTINUED_IN = "glint_track.continued_in"  # on a run `mlflow run` made that another run trained in
DEFAULT_EXPERIMENT_ID = "0"  # MLflow's Default experiment
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def check_tracking_server() -> None:
    """Fail fast, in one line, when a remote tracking server is unreachable or refuses our credentials.

    MLflow's own client retries for minutes before giving up; a user who mistyped a URI should know now.
    """
    uri = tracking_uri()
    if not _is_remote(uri):
        return
    auth = None
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    try:
        r = requests.get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=auth, timeout=10)
    except requests.RequestException as e:
        raise GlintTrackError(
            f"cannot reach the MLflow tracking server at {uri} ({type(e).__name__}); start it "
            f"(`mlflow server ...`) or fix/unset MLFLOW_TRACKING_URI to use the local mlflow.db"
        ) from e
    if r.status_code in (401, 403):
        raise GlintTrackError(
            f"the MLflow tracking server at {uri} refused the credentials (HTTP {r.status_code}); "
            f"set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a valid account"
        )
    if r.status_code >= 400:
        raise GlintTrackError(f"the MLflow tracking server at {uri} answered HTTP {r.status_code}; check that MLFLOW_TRACKING_URI points at an MLflow server")


@dataclass
class ResumeSource:
    """A checkpoint to resume from and, for a run ID, the MLflow run it continues (None: a new run)."""

    checkpoint: dict[str, Any]
    run_id: str | None
    label: str
    best: dict[str, Any] | None = None  # the run's best_model.pth, so best_model.pth carries over
    run_status: str | None = None
    published: dict[str, str | None] = field(default_factory=dict)  # the run's checkpoint files → digest where read
    experiment_name: str | None = None  # the continued run's
    dataset_digest: str | None = None  # SHA-256 of the file the continued run trains on


def _download_checkpoint(run_id: str, artifact_path: str, names: set[str] | None = None) -> tuple[dict[str, Any], str]:
    """Download a checkpoint with its checksum file (when the run has one) and load it, verified.
    `names`: the files in the checkpoint's folder, when the caller has listed it already."""
    with tempfile.TemporaryDirectory(prefix="glint-track-resume-") as tmp:
        path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp))
        sidecar = f"{artifact_path}.sha256"
        if names is None:
            parent = str(Path(sidecar).parent) if "/" in sidecar else None
            names = {Path(f.path).name for f in MlflowClient().list_artifacts(run_id, parent)}
        if Path(sidecar).name in names:
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=sidecar, dst_path=tmp)
        return load_checkpoint(path), file_digest(path)


def _newest_intact_alternative(run_id: str, names: set[str]) -> str | None:
    """The newest epoch checkpoint of a run (else its best) that loads and verifies, as a runs:/ URI."""
    epochs = sorted((n for n in names if EPOCH_FILE.match(n)), reverse=True)
    for name in [*epochs, *([BEST] if BEST in names else [])]:
        try:
            _download_checkpoint(run_id, f"{ARTIFACT_DIR}/{name}", names)
            return f"runs:/{run_id}/{ARTIFACT_DIR}/{name}"
        except GlintTrackError:
            continue
    return None


def fetch_checkpoint(source: str, prefer_best: bool = False, option: str = "--resume") -> ResumeSource:
    """Resolve a checkpoint reference: a local file, a `runs:/<id>/<path>` URI, or an MLflow run ID
    (its latest checkpoint, or with `prefer_best` its best_model.pth when it has one)."""
    if Path(source).is_file():
        return ResumeSource(load_checkpoint(source), None, source)
    if source.startswith("models:/"):  # a logged or registered glint-track model: its checkpoint artifact
        with tempfile.TemporaryDirectory(prefix="glint-track-model-") as tmp:
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp))
            except MlflowException as e:
                raise GlintTrackError(f"{source}: no such model at {tracking_uri()}; check the name and version in the MLflow UI") from e
            found = sorted(local.rglob("*.pth"))
            if not found:
                raise GlintTrackError(f"{source}: not a glint-track model (no checkpoint inside); pass a run ID or a checkpoint file")
            return ResumeSource(load_checkpoint(found[0]), None, source)
    if source.startswith("runs:/"):  # one checkpoint of a run: a new run starts from it (see resume.py)
        run_id, _, artifact_path = source[len("runs:/"):].partition("/")
        _get_run(run_id)
        try:
            checkpoint, _ = _download_checkpoint(run_id, artifact_path or f"{ARTIFACT_DIR}/{LATEST}")
        except (MlflowException, OSError) as e:
            raise GlintTrackError(f"{source}: no such artifact in run {run_id}; list the run's checkpoints in the MLflow UI") from e
        return ResumeSource(checkpoint, None, source)
    if not _RUN_ID.match(source):
        raise GlintTrackError(
            f"{option} {source!r} is neither an existing checkpoint file, a runs:/ URI nor an MLflow run ID (32 hex digits); "
            f"copy the run ID from the MLflow UI or the end of a training log"
        )
    run = _get_run(source)
    experiment = MlflowClient().get_experiment(run.info.experiment_id)
    _refuse_deleted(run, experiment)
    names = {Path(f.path).name for f in MlflowClient().list_artifacts(source, ARTIFACT_DIR)}
    if LATEST not in names:
        raise GlintTrackError(
            f"run {source} has no {ARTIFACT_DIR}/{LATEST} (it stopped before finishing an epoch, or was not a "
            f"glint-track run); start a new training instead"
        )
    published: dict[str, str | None] = {n: None for n in names if n.endswith(".pth")}
    try:
        best = None
        if BEST in names:
            best, published[BEST] = _download_checkpoint(source, f"{ARTIFACT_DIR}/{BEST}", names)
        if prefer_best and best is not None:
            return ResumeSource(best, source, source)
        latest, published[LATEST] = _download_checkpoint(source, f"{ARTIFACT_DIR}/{LATEST}", names)
        return ResumeSource(latest, source, source, best, run.info.status, published, experiment.name,
                            run.data.tags.get(TAG_DATASET_DIGEST))
    except CorruptCheckpoint as e:
        alternative = _newest_intact_alternative(source, names)
        fix = f"resume from the newest intact one: {option} {alternative}" if alternative else "no intact checkpoint is left in it"
        raise GlintTrackError(f"run {source}: {e.format_message().split('; ')[0]}; {fix}") from e


def _refuse_deleted(run: Any, experiment: Any) -> None:
    """A deleted run (or one in a deleted experiment) is in MLflow's trash: continuing it would write there."""
    run_id = run.info.run_id
    if experiment.lifecycle_stage == "deleted":  # deleting an experiment deletes its runs; restoring it restores them
        what, undo = f"its experiment {experiment.name!r} is deleted", f"mlflow experiments restore --experiment-id {experiment.experiment_id}"
    elif run.info.lifecycle_stage == "deleted":
        what, undo = f"run {run_id} is deleted", f"mlflow runs restore --run-id {run_id}"
    else:
        return
    raise GlintTrackError(f"run {run_id} cannot be continued: {what}; restore it (`{undo}`) or start a new run from its "
                          f"checkpoint: --resume runs:/{run_id}/{ARTIFACT_DIR}/{LATEST}")


def _get_run(run_id: str) -> Any:
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as e:
        raise GlintTrackError(
            f"no MLflow run with ID {run_id} at {tracking_uri()}; check the ID in the MLflow UI, or set "
            f"MLFLOW_TRACKING_URI to the server (or run in the folder with the mlflow.db) that holds it"
        ) from e


def git_commit() -> str | None:
    """The commit of the glint-track source in use, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(glint_track.__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class RunTracker:
    """The MLflow run of one training: new, resumed by ID, or the one `mlflow run` already started.

    Calls made during training go through `_call`: when the tracking server is unreachable they are
    kept in a local Spool and sent, in order, once it answers again, so training never stops for it.
    """

    def __init__(self, run: mlflow.entities.Run) -> None:
        self.run_id: str = run.info.run_id
        self.experiment_id: str = run.info.experiment_id
        self.artifact_uri: str = run.info.artifact_uri
        self.client = MlflowClient()
        self.experiment_name: str = self.client.get_experiment(self.experiment_id).name
        # the run's description so far, read now: later it is written while the server may be away (spool)
        self.history: str = run.data.tags.get(TAG_HISTORY, "")
        self.summary: str = run.data.tags.get(TAG_SUMMARY, "")
        self.spool: Spool | None = None
        self.lease: RunLease | None = None  # this process's claim on the run (set by start)
        self._lock = threading.Lock()  # the writer thread and the training thread both log
        self._last_attempt = 0.0
        if (root := _local_artifact_root(self.artifact_uri)) is not None:  # uploads a killed process left unfinished
            for partial in root.rglob(".*.tmp"):
                partial.unlink(missing_ok=True)

    @classmethod
    def start(
        cls, experiment: str, run_name: str | None, continue_run_id: str | None, system_metrics: bool = False, claim: bool = True,
    ) -> RunTracker:
        """Start a new run in `experiment`, or continue run `continue_run_id`, after claiming it (one writer
        per run, see lease.py). A run a sweep made for this process (MLFLOW_RUN_ID) is used as the new run.
        A run `mlflow run` made is not trained in: MLflow stamps its own status on it when the command ends
        (overwriting KILLED), so it is ended at once, tagged and described with the run that trains, which
        goes to its experiment, or to `experiment` when that is MLflow's Default (no --experiment-name).

        With `system_metrics`, MLflow samples CPU, memory, disk, network and (with nvidia-ml-py) GPU use in a
        thread of its own and logs them as `system/…` metrics of the run. `claim=False`: a run nobody resumes
        (an evaluation) needs no claim."""
        system_metrics = system_metrics and importlib.util.find_spec("psutil") is not None
        with _local_store_errors():
            client = MlflowClient()  # a local store (./mlflow.db) is created or migrated here
            given, new = _run_made_for_us(client), continue_run_id is None
            project = given if given is not None and given.data.tags.get("mlflow.source.type") == "PROJECT" else None
            if project is not None and project.info.experiment_id != DEFAULT_EXPERIMENT_ID:
                experiment = client.get_experiment(project.info.experiment_id).name
            elif given is not None and project is None and new:
                continue_run_id = given.info.run_id  # ours to fill: a sweep child
            if continue_run_id is None:
                experiment_id = experiment_id_for(experiment, client)
                tags = resolve_tags() | (_provenance(project) if project is not None else {})
                continue_run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        lease, stale = RunLease.acquire(client, continue_run_id) if claim else (None, None)  # before anything is written
        try:
            if not new:
                _report_left_running(client.get_run(continue_run_id), stale)
            run = mlflow.start_run(run_id=continue_run_id, log_system_metrics=system_metrics)
            if run_name and not new:
                mlflow.set_tag("mlflow.runName", run_name)
            if project is not None:
                _retire(client, project, run)
        except BaseException:
            if mlflow.active_run() is not None:
                mlflow.end_run("FAILED")
            elif new:
                client.set_terminated(continue_run_id, "FAILED")
            if lease is not None:
                lease.release()
            raise
        tracker = cls(run)
        tracker.lease = lease
        return tracker

    def spool_to(self, directory: Path) -> None:
        """Keep calls that cannot reach a remote server in `directory` (local stores never spool)."""
        if _is_remote(tracking_uri()):
            self.spool = Spool.create(directory, self.run_id, tracking_uri())

    def log_config(self, config: dict[str, Any], from_epoch: int = 1) -> None:
        """Log settings as params and `train_args.json`. Params cannot change, so on a continued run a
        setting whose value differs becomes the tag `glint_track.override.<name>` = "<value> from epoch N"."""
        existing = self.client.get_run(self.run_id).data.params
        new = {k: v for k, v in config.items() if k not in existing}
        if new:
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in new.items()])
        changed = {f"{TAG_OVERRIDE}{k}": f"{v} from epoch {from_epoch}" for k, v in config.items()
                   if k in existing and existing[k] != str(v) and k not in INVOCATION}
        if changed:
            self.set_tags(changed)
        self.log_dict(config, "train_args.json")

    def add_history(self, line: str) -> None:
        """A line of the run's history (a resume and what it changed), shown in its description."""
        self.history = f"{self.history}\n{line}".strip()
        self.set_tags({TAG_HISTORY: self.history, TAG_NOTE: _description(self.summary, self.history)})

    def summarise(self, summary: str) -> None:
        """The glint result, which leads the run's description (the first thing its page shows)."""
        self.summary = summary
        self.set_tags({TAG_SUMMARY: summary, TAG_NOTE: _description(summary, self.history)})

    def log_dataset(self, data: GlintData) -> None:
        """The training file as the run's MLflow input: name, source path, digest (the first 16 hex
        digits of its SHA-256, so runs on the same file show the same one) and array shapes."""
        with warnings.catch_warnings():  # MLflow registers two equivalent local-file sources and says so
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(data.path.resolve()))
        h, w = data.image_size
        c = data.num_glints
        schema = Schema([
            TensorSpec(np.dtype(np.uint8), (-1, h, w), name="images"),
            TensorSpec(np.dtype(str(data.heatmaps.dtype).removeprefix("torch.")), (-1, c, h // 4, w // 4), name="heatmaps"),
        ])
        dataset = MetaDataset(source, name=data.path.stem, digest=data.digest[:16], schema=schema)
        inputs = [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])]
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except MlflowException as e:  # runs started together (a sweep) raced to record the same dataset:
            if "UNIQUE constraint" not in str(e):  # it exists now, and the second try links it
                raise
            self.client.log_inputs(self.run_id, datasets=inputs)

    def metric_steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def has_complete_model(self) -> bool:
        """Whether the run already holds a fully logged model. Models a killed process left half-logged
        (PENDING, or FAILED) are deleted first, so that finishing the run leaves exactly one."""
        models = self.client.search_logged_models([self.experiment_id], filter_string=f"source_run_id = '{self.run_id}'")
        for model in models:
            if model.status != LoggedModelStatus.READY:
                log.info("deleting model %s, which a stopped process left %s", model.model_id, model.status)
                self.client.delete_logged_model(model.model_id)
        return any(model.status == LoggedModelStatus.READY for model in models)

    # The methods below address the run by ID, not through MLflow's active run (which is thread-local),
    # so the background checkpoint writer can call them; each may be spooled.
    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call("tags", {"tags": {k: str(v) for k, v in tags.items()}})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """All of an epoch's metrics in one request."""
        self._call("metrics", {"metrics": {k: float(v) for k, v in metrics.items()}, "step": step, "timestamp": int(time.time() * 1000)})

    def log_artifact(self, local_path: Path, artifact_dir: str | None = None) -> bool:
        """Upload a file; False when it went to the spool instead (the server has not got it yet)."""
        return self._call("artifact", {"dir": artifact_dir, "name": local_path.name}, local_path)

    def log_image(self, image: Any, artifact_file: str) -> None:
        self._log_file(artifact_file, lambda path: image.save(path))

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self._log_file(artifact_file, lambda path: path.write_text(json.dumps(data, indent=1)))

    def delete_artifact(self, artifact_path: str) -> None:
        self._call("delete", {"path": artifact_path})

    def log_model(self, checkpoint: Path, image_size: tuple[int, int], registered_name: str | None = None) -> None:
        """The best checkpoint as a pyfunc MLflow model under `model/` (see `_log_model`)."""
        self._call("model", {"name": checkpoint.name, "image_size": list(image_size), "registered_name": registered_name}, checkpoint)

    def finish(self, status: str, wait_s: float) -> int:
        """End the run with `status` after sending what is spooled, retrying for up to `wait_s` seconds.
        Returns how many calls are still in the spool (0: the server has everything)."""
        deadline = time.monotonic() + wait_s
        while self.spool is not None and len(self.spool) and time.monotonic() < deadline:
            self._last_attempt = 0.0  # retry now
            with self._lock:
                if self._drain():
                    break
            time.sleep(min(_retry_interval(), max(0.0, deadline - time.monotonic())))
        try:
            mlflow.end_run(status=RunStatus.to_string(getattr(RunStatus, status)))  # pops the run, then tells the server
        except Exception as e:
            if self.spool is None or _reachable(tracking_uri()):
                raise
            log.debug("ending the run failed (%s); spooled", e)
            self.spool.append("end", {"status": status})
        finally:
            if self.lease is not None:
                self.lease.release()  # after the status: a resume never finds a free run still RUNNING
        return len(self.spool) if self.spool is not None else 0

    # -- sending, or spooling when the server is away ----------------------------------------------
    def _log_file(self, artifact_file: str, write: Callable[[Path], Any]) -> None:
        directory, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="glint-track-artifact-") as tmp:
            path = Path(tmp) / name
            write(path)
            self.log_artifact(path, directory or None)

    def _call(self, op: str, args: dict[str, Any], file: Path | None = None) -> bool:
        """Send a call, or spool it while the server is away; True when it was delivered now."""
        with self._lock:
            if self.spool is not None and len(self.spool) and not self._drain():
                self.spool.append(op, args, file)
                return False
            try:
                send(self, op, args, file)
            except Exception as e:
                if self.spool is None or _reachable(tracking_uri()):
                    raise self._refused(op, e) from e
                self._last_attempt = time.monotonic()
                self.spool.append(op, args, file)
                log.warning(
                    "the MLflow tracking server at %s is unreachable (%s); training goes on and metrics and checkpoints are "
                    "kept in %s until it answers again", tracking_uri(), type(e).__name__, self.spool.directory,
                )
                return False
            return True

    def _refused(self, op: str, error: Exception) -> GlintTrackError:
        """One line for a call the tracking or artifact store refused (full, read-only, …): the store is the problem."""
        if isinstance(error, GlintTrackError):
            return error
        store = f"artifact store at {self.artifact_uri}" if op in ARTIFACT_OPS else f"tracking store at {tracking_uri()}"
        what = {"artifact": "store a file", "delete": "delete a file", "model": "log the model", "end": "end the run"}.get(op, f"log {op}")
        return GlintTrackError(f"MLflow could not {what} for run {self.run_id} ({os_reason(error)[:200]}); "
                               f"free space in (or fix the permissions of) the {store}; what the run holds so far is intact")

    def _drain(self) -> bool:
        """Send the spool if a retry is due; True when it is empty afterwards."""
        assert self.spool is not None
        if time.monotonic() - self._last_attempt < _retry_interval():
            return False
        self._last_attempt = time.monotonic()
        try:
            sent = self.spool.replay(lambda op, args, file: send(self, op, args, file))
        except Exception as e:
            if _reachable(tracking_uri()):
                raise
            log.debug("tracking server still unreachable (%s)", e)
            return False
        log.info("the MLflow tracking server at %s is back: sent %d spooled calls", tracking_uri(), sent)
        return True


#: Tracking calls that write to the artifact store (the others write to the tracking store).
ARTIFACT_OPS = ("artifact", "delete", "model")


def send(tracker: RunTracker, op: str, args: dict[str, Any], file: Path | None) -> None:
    """Perform one tracking call, live or replayed from a spool."""
    client, run_id = tracker.client, tracker.run_id
    if op == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, v, args["timestamp"], args["step"]) for k, v in args["metrics"].items()])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in args["tags"].items()])
    elif op == "artifact":
        local_root = _local_artifact_root(tracker.artifact_uri)
        if local_root is not None:  # a file store: copied atomically, so a crash never leaves half a file
            copy_atomic(file, local_root / (args["dir"] or "") / args["name"])
        else:
            client.log_artifact(run_id, str(file), args["dir"])
    elif op == "delete":
        get_artifact_repository(tracker.artifact_uri).delete_artifacts(args["path"])
    elif op == "model":
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            _log_model(file, tuple(args["image_size"]), args["registered_name"])
        else:  # replayed by `glint-track sync`: the run's final status is the spooled `end` that follows
            with mlflow.start_run(run_id=run_id):
                _log_model(file, tuple(args["image_size"]), args["registered_name"])
    elif op == "end":
        client.set_terminated(run_id, args["status"])
    else:
        raise GlintTrackError(f"unknown spooled call {op!r}; this spool was written by a newer glint-track")


def sync(directory: Path) -> tuple[str, int]:
    """Send everything in a spool to its run (`glint-track sync`); returns (run ID, calls sent)."""
    spool = Spool.open(directory)
    if "MLFLOW_TRACKING_URI" not in os.environ:
        mlflow.set_tracking_uri(spool.tracking_uri)
    check_tracking_server()
    tracker = RunTracker(_get_run(spool.run_id))
    try:
        sent = spool.replay(lambda op, args, file: send(tracker, op, args, file))
    except Exception as e:
        raise GlintTrackError(
            f"sending {directory} to {tracking_uri()} stopped ({first_line(e)[:200]}); what was sent is removed "
            f"from the spool, run `glint-track sync {directory}` again"
        ) from e
    return spool.run_id, sent


def send_spool_if_pending(directory: Path) -> None:
    """Send what a killed or disconnected training left in `directory`, if anything."""
    if (directory / "spool.json").is_file() and len(Spool.open(directory)):
        run_id, sent = sync(directory)
        log.info("sent %d calls left in %s to run %s", sent, directory, run_id)


def _log_model(checkpoint: Path, image_size: tuple[int, int], registered_name: str | None) -> None:
    """A pyfunc MLflow model under `model/` that takes uint8 images N×H×W and returns glints (see
    serving.py), carrying glint-track's code so it loads anywhere."""
    h, w = image_size
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, h, w))]),
        outputs=Schema([ColSpec("long", "image"), ColSpec("string", "glint"), ColSpec("double", "x"),
                        ColSpec("double", "y"), ColSpec("double", "score"), ColSpec("boolean", "present")]),
        params=ParamSchema([ParamSpec("threshold", "double", 0.3)]),
    )
    package = Path(glint_track.__file__).parent
    mlflow.pyfunc.log_model(
        name="model",
        python_model=str(package / "pyfunc_entry.py"),
        artifacts={"checkpoint": str(checkpoint)},
        code_paths=[str(package)],
        signature=signature,
        input_example=np.zeros((2, h, w), np.uint8),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas", "h5py", "click", "tqdm", "pillow"],
        registered_model_name=registered_name,
    )


@contextmanager
def _local_store_errors() -> Iterator[None]:
    """A local tracking store that cannot be written (a full disk under mlflow.db, a read-only folder) is
    one line naming it; a remote server's errors are reported where the server is checked."""
    try:
        yield
    except (MlflowException, OSError, *_SQL_ERRORS) as e:
        if _is_remote(tracking_uri()):
            raise
        raise GlintTrackError(
            f"the MLflow tracking store at {tracking_uri()} cannot be written ({os_reason(e)[:200]}); free space there "
            f"(or fix its permissions), or set MLFLOW_TRACKING_URI to another store"
        ) from e


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _reachable(uri: str) -> bool:
    """Whether a remote tracking server answers at all (local stores always do)."""
    if not _is_remote(uri):
        return True
    try:
        return requests.get(f"{uri.rstrip('/')}/health", timeout=5).status_code < 500
    except requests.RequestException:
        return False


def _retry_interval() -> float:
    """Seconds between attempts to reach a server that went away (GLINT_TRACK_SPOOL_RETRY_S)."""
    return float(os.environ.get("GLINT_TRACK_SPOOL_RETRY_S", "30"))


def _local_artifact_root(artifact_uri: str) -> Path | None:
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return Path(artifact_uri) if parsed.scheme == "" else None


def experiment_id_for(name: str, client: MlflowClient) -> str:
    """The ID of experiment `name`, created if missing (without setting MLflow's process-wide active experiment)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except MlflowException:  # created by a run started at the same moment
            found = client.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage != "active":
        raise GlintTrackError(f"experiment {name!r} is deleted; restore it (`mlflow experiments restore`) or pass another --experiment")
    return found.experiment_id


def _description(summary: str, history: str) -> str:
    return "\n\n".join(part for part in (summary, history) if part)


def _run_made_for_us(client: MlflowClient) -> mlflow.entities.Run | None:
    """The run `mlflow run` or a sweep created for this process (MLFLOW_RUN_ID), taken out of the
    environment so that MLflow does not start it behind our back."""
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    return client.get_run(run_id) if run_id else None


def _provenance(project: mlflow.entities.Run) -> dict[str, str]:
    """What `mlflow run` recorded about the project (source, commit, entry point), for the run that trains."""
    prefixes = ("mlflow.source.", "mlflow.project.", "mlflow.gitRepoURL")
    return {k: v for k, v in project.data.tags.items() if k.startswith(prefixes)}


def _retire(client: MlflowClient, project: mlflow.entities.Run, run: mlflow.entities.Run) -> None:
    """End the run `mlflow run` made at once, pointing to the run that trains (tag and description)."""
    used, experiment = run.info.run_id, run.info.experiment_id
    client.set_tag(project.info.run_id, TAG_CONTINUED_IN, used)
    client.set_tag(project.info.run_id, TAG_NOTE, f"Made by `mlflow run`; glint-track trains in run [{used}](#/experiments/{experiment}/runs/{used}).")
    client.set_terminated(project.info.run_id, "FINISHED")
    log.info("`mlflow run` made run %s; training goes on in run %s (experiment %s), so %s is ended", project.info.run_id, used,
             client.get_experiment(experiment).name, project.info.run_id)


def _report_left_running(run: mlflow.entities.Run, stale: Any) -> None:
    """Say so when the run being continued was left RUNNING by a process that never ended it (kill -9, power loss)."""
    if run.info.status != "RUNNING":
        return
    who = f"{stale.describe()}, which is gone" if stale is not None else "a process that is gone"
    log.warning("run %s was left RUNNING by %s (killed without ending it); continuing it from its latest checkpoint",
                run.info.run_id, who)
