"""The MLflow run of one training or evaluation: starting or continuing it (with its claim, see lease.py),
its params, metrics, artifacts and model, and a spool for the calls a remote server did not answer."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import random
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.name_utils import _GENERATOR_NOUNS, _GENERATOR_PREDICATES

import glint_track
from glint_track.data.glint_file import GlintData
from glint_track.errors import GlintTrackError
from glint_track.files import os_reason
from glint_track.tracking.datasets import log_parent_data, log_training_data
from glint_track.tracking.lease import RunLease, end_abandoned_runs
from glint_track.tracking.logged_model import model_of
from glint_track.tracking.project import provenance, report_left_running, retire, run_made_for_us
from glint_track.tracking.send import ARTIFACT_OPS, send
from glint_track.tracking.server import (
    DEFAULT_EXPERIMENT_ID,
    experiment_id_for,
    is_remote,
    local_artifact_root,
    local_store_errors,
    retry_interval,
    server_away,
    tracking_uri,
)
from glint_track.tracking.spool import Spool
from glint_track.tracking.tags import TAG_HISTORY, TAG_NOTE, TAG_OVERRIDE, TAG_SUMMARY, TAG_TRAIN_TIME

log = logging.getLogger(__name__)
# MLflow's per-download progress bars would clutter our log; our own progress is shown per epoch.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow retries a failed request for minutes by default; an unreachable server is spooled instead (see
# RunTracker), so a few seconds of retries are enough to ride out a blip.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def fresh_run_name() -> str:
    """A name in MLflow's style (`bright-owl-42`) drawn from the OS's entropy. MLflow draws its names from Python's
    global generator, which training seeds: every run with the same seed would be called the same."""
    draw = random.SystemRandom()
    return f"{draw.choice(_GENERATOR_PREDICATES)}-{draw.choice(_GENERATOR_NOUNS)}-{draw.randint(0, 999)}".lower()


def git_commit() -> str | None:
    """The commit of the glint-track source in use, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(glint_track.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
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
        self.tracking_uri = tracking_uri()
        self.experiment_name: str = self.client.get_experiment(self.experiment_id).name
        # the run's description so far, read now: later it is written while the server may be away (spool)
        self.history: str = run.data.tags.get(TAG_HISTORY, "")
        self.summary: str = run.data.tags.get(TAG_SUMMARY, "")
        self.train_time_s: float = _seconds(run.data.tags.get(TAG_TRAIN_TIME))  # earlier processes' share
        self.spool: Spool | None = None
        self.lease: RunLease | None = None  # this process's claim on the run (set by start)
        self._lock = threading.Lock()  # the writer thread and the training thread both log
        self._last_attempt = 0.0
        if (root := local_artifact_root(self.artifact_uri)) is not None:  # uploads a killed process left unfinished
            for partial in root.rglob(".*.tmp"):
                partial.unlink(missing_ok=True)

    @classmethod
    def start(
        cls,
        experiment: str,
        run_name: str | None,
        continue_run_id: str | None,
        claim: bool = True,
        still_current: Callable[[MlflowClient, str], None] | None = None,
    ) -> RunTracker:
        """Start a new run in `experiment`, or continue run `continue_run_id`, after claiming it (one writer
        per run, see lease.py). A run a sweep made for this process (MLFLOW_RUN_ID) is used as the new run.
        A run `mlflow run` made is not trained in: MLflow stamps its own status on it when the command ends
        (overwriting KILLED), so it is ended at once, tagged and described with the run that trains, which
        goes to its experiment, or to `experiment` when that is MLflow's Default (no --experiment-name).

        Only MLflow's client is used, so any thread may start a run (training opens its run beside the first
        epoch); `activate` then makes it the active run of the thread that logs the model. `claim=False`: a run
        nobody resumes (an evaluation) needs no claim. `still_current(client, run_id)` runs once the claim is held,
        before the run is touched: it raises when what the caller planned from is out of date (another process
        trained meanwhile)."""
        with local_store_errors():
            client = MlflowClient()  # a local store (./mlflow.db) is created or migrated here
            given, new = run_made_for_us(client), continue_run_id is None
            project = given if given is not None and given.data.tags.get("mlflow.source.type") == "PROJECT" else None
            if project is not None and project.info.experiment_id != DEFAULT_EXPERIMENT_ID:
                experiment = client.get_experiment(project.info.experiment_id).name
            elif given is not None and project is None and new:
                continue_run_id = given.info.run_id  # ours to fill: a sweep child
            if continue_run_id is None:
                experiment_id = experiment_id_for(experiment, client)
                end_abandoned_runs(client, experiment_id)  # what a killed process left RUNNING, shown as it is
                tags = resolve_tags() | (provenance(project) if project is not None else {})
                continue_run_id = client.create_run(
                    experiment_id, run_name=run_name or fresh_run_name(), tags=tags
                ).info.run_id
        lease, stale = (
            RunLease.acquire(client, continue_run_id, new=new) if claim else (None, None)
        )  # before anything is written
        try:
            if not new:
                if still_current is not None:
                    still_current(client, continue_run_id)
                report_left_running(client.get_run(continue_run_id), stale)
                client.update_run(continue_run_id, status="RUNNING", name=run_name)
            run = client.get_run(continue_run_id)
            if project is not None:
                retire(client, project, run)
        except BaseException:
            if new:
                client.set_terminated(continue_run_id, "FAILED")
            if lease is not None:
                lease.release()
            raise
        tracker = cls(run)
        tracker.lease = lease
        return tracker

    def activate(self, system_metrics: bool) -> None:
        """Make the run MLflow's active run in the calling thread (MLflow keeps one per thread), which logs the
        model and ends the run; with `system_metrics`, MLflow samples CPU, memory, disk, network and (with
        nvidia-ml-py) GPU use in a thread of its own and logs them as `system/…` metrics of the run."""
        system_metrics = system_metrics and importlib.util.find_spec("psutil") is not None
        with local_store_errors():
            mlflow.start_run(run_id=self.run_id, log_system_metrics=system_metrics)

    def spool_to(self, directory: Path) -> None:
        """Keep calls that cannot reach a remote server in `directory` (local stores never spool)."""
        if is_remote(tracking_uri()):
            self.spool = Spool.create(directory, self.run_id, tracking_uri())

    def log_config(
        self,
        config: dict[str, Any],
        from_epoch: int = 1,
        invocation: Collection[str] = (),
        everything: dict[str, Any] | None = None,
    ) -> None:
        """Log settings as params, in their order, and `everything` (default: the same) as `train_args.json`.
        Params cannot change, so on a continued run a setting whose value differs becomes the tag
        `glint_track.override.<name>` = "<value> from epoch N", except the `invocation` settings (how this
        process was started, not what it trains)."""
        existing = self.client.get_run(self.run_id).data.params
        new = {k: v for k, v in config.items() if k not in existing}
        if new:
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in new.items()])
        changed = {
            f"{TAG_OVERRIDE}{k}": f"{v} from epoch {from_epoch}"
            for k, v in config.items()
            if k in existing and existing[k] != str(v) and k not in invocation
        }
        if changed:
            self.set_tags(changed)
        self.log_dict(config if everything is None else everything, "train_args.json")

    def add_history(self, line: str) -> None:
        """A line of the run's history (a resume and what it changed), shown in its description."""
        self.history = f"{self.history}\n{line}".strip()
        self.set_tags({TAG_HISTORY: self.history, TAG_NOTE: _description(self.summary, self.history)})

    def summarise(self, summary: str) -> None:
        """The glint result, which leads the run's description (the first thing its page shows)."""
        self.summary = summary
        self.set_tags({TAG_SUMMARY: summary, TAG_NOTE: _description(summary, self.history)})

    def log_dataset(self, data: GlintData) -> None:
        """The training file as the run's MLflow input (see datasets.py)."""
        log_training_data(self.client, self.run_id, data)

    def log_parent_datasets(self, parent_run_id: str) -> None:
        """A fine-tuning's inputs also show what the model it started from learnt from."""
        log_parent_data(self.client, self.run_id, parent_run_id)

    def log_summary(self, values: dict[str, float], step: int = 0) -> None:
        """Values of the run as a whole (not of an epoch), where the UI draws each as one bar while it has one
        point: at step 0, or at the epoch they belong to (a resume whose model is a later epoch's adds its point
        there, never a second value at the same step); only those that differ from what the run holds, so a
        resume that changed nothing adds no point."""
        try:
            held = self.client.get_run(self.run_id).data.metrics
        except Exception as e:  # the server is away: log them all (spooled)
            log.debug("reading the run's metrics failed (%s)", e)
            held = {}
        changed = {k: v for k, v in values.items() if k not in held or not _same(held[k], v)}
        if changed:
            self.log_metrics(changed, step=step)

    def metric_steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def has_model_of(self, epoch: int) -> bool:
        """Whether the run already holds a fully logged model of the checkpoint of `epoch` (see model_of)."""
        return model_of(self.client, self.experiment_id, self.run_id, epoch)

    # The methods below address the run by ID, not through MLflow's active run (which is thread-local),
    # so the background checkpoint writer can call them; each may be spooled.
    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call("tags", {"tags": {k: str(v) for k, v in tags.items()}})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """All of an epoch's metrics in one request."""
        self._call(
            "metrics",
            {"metrics": {k: float(v) for k, v in metrics.items()}, "step": step, "timestamp": int(time.time() * 1000)},
        )

    def log_artifact(self, local_path: Path, artifact_dir: str | None = None) -> bool:
        """Upload a file; False when it went to the spool instead (the server has not got it yet)."""
        return self._call("artifact", {"dir": artifact_dir, "name": local_path.name}, local_path)

    def log_image(self, image: Any, artifact_file: str) -> None:
        self._log_file(artifact_file, lambda path: image.save(path))

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self._log_file(artifact_file, lambda path: path.write_text(json.dumps(data, indent=1)))

    def delete_artifact(self, artifact_path: str) -> None:
        self._call("delete", {"path": artifact_path})

    def log_model(
        self, checkpoint: Path, epoch: int, image_size: tuple[int, int], registered_name: str | None = None
    ) -> None:
        """The checkpoint of `epoch` as the run's pyfunc MLflow model under `model/` (see `log_pyfunc_model`),
        replacing the one an earlier part of the run logged: a run has one model, whatever its resumes."""
        self._call(
            "model",
            {
                "name": checkpoint.name,
                "epoch": epoch,
                "image_size": list(image_size),
                "registered_name": registered_name,
            },
            checkpoint,
        )

    def finish(self, status: str, wait_s: float) -> int:
        """End the run with `status` after sending what is spooled, retrying for up to `wait_s` seconds.
        Returns how many calls are still in the spool (0: the server has everything)."""
        deadline = time.monotonic() + wait_s
        while self.spool is not None and len(self.spool) and time.monotonic() < deadline:
            self._last_attempt = 0.0  # retry now
            with self._lock:
                if self._drain():
                    break
            time.sleep(min(retry_interval(), max(0.0, deadline - time.monotonic())))
        try:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == self.run_id:  # also stops the system-metrics sampler
                mlflow.end_run(status=RunStatus.to_string(getattr(RunStatus, status)))  # pops it, then tells the server
            else:  # never activated (an evaluation, a run that failed while opening)
                self.client.set_terminated(self.run_id, status)
        except Exception as e:
            if self.spool is None or not server_away(e):
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
                if self.spool is None or not server_away(e):
                    raise self._refused(op, e) from e
                self._last_attempt = time.monotonic()
                self.spool.append(op, args, file)
                log.warning(
                    "the MLflow tracking server at %s is unreachable (%s); training goes on and metrics and "
                    "checkpoints are "
                    "kept in %s until it answers again",
                    tracking_uri(),
                    type(e).__name__,
                    self.spool.directory,
                )
                return False
            return True

    def _refused(self, op: str, error: Exception) -> GlintTrackError:
        """One line for a call the tracking or artifact store refused (full, read-only, …): the store is the problem."""
        if isinstance(error, GlintTrackError):
            return error
        store = (
            f"artifact store at {self.artifact_uri}" if op in ARTIFACT_OPS else f"tracking store at {tracking_uri()}"
        )
        what = {
            "artifact": "store a file",
            "delete": "delete a file",
            "model": "log the model",
            "end": "end the run",
        }.get(op, f"log {op}")
        return GlintTrackError(
            f"MLflow could not {what} for run {self.run_id} ({os_reason(error)[:200]}); "
            f"free space in (or fix the permissions of) the {store}; what the run holds so far is intact"
        )

    def _drain(self) -> bool:
        """Send the spool if a retry is due; True when it is empty afterwards."""
        assert self.spool is not None
        if time.monotonic() - self._last_attempt < retry_interval():
            return False
        self._last_attempt = time.monotonic()
        try:
            sent = self.spool.replay(lambda op, args, file: send(self, op, args, file))
        except Exception as e:
            if not server_away(e):
                raise
            log.debug("tracking server still unreachable (%s)", e)
            return False
        log.info("the MLflow tracking server at %s is back: sent %d spooled calls", tracking_uri(), sent)
        return True


def _seconds(text: str | None) -> float:
    try:
        return max(0.0, float(text or 0))
    except ValueError:  # a tag someone edited by hand
        return 0.0


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _description(summary: str, history: str) -> str:
    return "\n\n".join(part for part in (summary, history) if part)
