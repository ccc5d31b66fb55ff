"""One writer per run: a training claims its MLflow run before writing to it, and keeps the claim alive.

A claim is the param `glint_track.writer.N`. Params cannot change, so when two processes claim the same N
at once the tracking store keeps one and refuses the other: the compare-and-set that tags lack (SQLite,
PostgreSQL and `mlflow server` all enforce it). A run this process has just created needs no contest (no
one else can know its ID yet): its first claim is the tag `glint_track.writer.1`, so that runs compared
in the UI differ in their settings only, not in who trained them. The tag `glint_track.writer` says who
holds the run and when it last showed a sign of life (a heartbeat every TTL/4). The next claimant takes
over a claim whose process is gone: on the same host at once (its pid is dead), from another host once
the heartbeat is older than the TTL (GLINT_TRACK_LEASE_TTL_S, 120 s). The `glint_track.writer.N` params
and tag stay as the run's record of who trained each part.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from glint_track.errors import GlintTrackError

log = logging.getLogger(__name__)

TAG = "glint_track.writer"
PARAM_PREFIX = "glint_track.writer."


def ttl_s() -> float:
    return float(os.environ.get("GLINT_TRACK_LEASE_TTL_S", "120"))


@dataclass
class Holder:
    """Who holds a run: host, pid, claim number, and the time of the last heartbeat."""

    host: str
    pid: int
    claim: int
    heartbeat: float

    @classmethod
    def parse(cls, text: str | None) -> Holder | None:
        try:
            fields = json.loads(text or "")
            return cls(str(fields["host"]), int(fields["pid"]), int(fields["claim"]), float(fields["heartbeat"]))
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (last heartbeat {max(0.0, time.time() - self.heartbeat):.0f} s ago)"

    def alive(self) -> bool:
        if time.time() - self.heartbeat > ttl_s():
            return False
        return _pid_alive(self.pid) if self.host == socket.gethostname() else True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def refuse_if_held(run: Run) -> Holder | None:
    """Refuse in one line a run that a live process trains (its checkpoints are being replaced as they are read);
    returns the holder it names, alive or not, if any."""
    holder = Holder.parse(run.data.tags.get(TAG))
    if holder is not None and holder.alive():
        raise GlintTrackError(
            f"run {run.info.run_id} is being trained by {holder.describe()}; wait for it to finish or stop it "
            f"(kill {holder.pid} on {holder.host}); a claim left by a killed process expires {ttl_s():.0f} s after "
            "its last heartbeat"
        )
    return holder


def end_abandoned_runs(client: MlflowClient, experiment_id: str, keep: str | None = None) -> list[str]:
    """Mark KILLED the runs of an experiment left RUNNING by a glint-track process that is gone (its claim stale: kill
    -9, a lost node), so the runs table shows what happened; returns their IDs. Runs without a claim (another tool's)
    and `keep` (the run about to be continued) are left alone."""
    ended = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=200):
        holder = Holder.parse(run.data.tags.get(TAG))
        if run.info.run_id == keep or holder is None or holder.alive():
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        client.set_tag(run.info.run_id, TAG, "")  # the claim of a process that is gone
        log.warning(
            "run %s was left RUNNING by %s, which is gone (killed without ending it): marked KILLED; resume it with "
            "--resume %s",
            run.info.run_id,
            holder.describe(),
            run.info.run_id,
        )
        ended.append(run.info.run_id)
    return ended


class RunLease:
    """This process's claim on a run, renewed by a daemon thread until `release()`."""

    def __init__(self, client: MlflowClient, run_id: str, holder: Holder) -> None:
        self.client, self.run_id, self.holder = client, run_id, holder
        self.lost = False  # another process took the run over (this one looked dead): stop writing to it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="glint-track-lease", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls, client: MlflowClient, run_id: str, *, new: bool = False) -> tuple[RunLease, Holder | None]:
        """Claim the run (`new`: one this process created); returns the lease and the stale holder it took
        over, if any (to report). Refuses in one line while another live process holds it."""
        run = client.get_run(run_id)
        previous = refuse_if_held(run)
        claims = [
            int(k[len(PARAM_PREFIX) :])
            for k in [*run.data.params, *run.data.tags]
            if k.startswith(PARAM_PREFIX) and k[len(PARAM_PREFIX) :].isdigit()
        ]
        holder = Holder(socket.gethostname(), os.getpid(), max(claims, default=0) + 1, time.time())
        record = client.set_tag if new else client.log_param
        try:
            record(run_id, f"{PARAM_PREFIX}{holder.claim}", f"{holder.host} pid {holder.pid}")
        except MlflowException as e:
            if "Changing param values is not allowed" not in str(e):
                raise
            raise GlintTrackError(
                f"run {run_id} was claimed at the same moment by another process "
                f"({client.get_run(run_id).data.params.get(f'{PARAM_PREFIX}{holder.claim}')}); only one process may "
                "train a run"
            ) from e
        client.set_tag(run_id, TAG, json.dumps(asdict(holder)))
        return cls(client, run_id, holder), previous

    def _beat(self) -> None:
        while not self._stop.wait(ttl_s() / 4):
            try:
                current = Holder.parse(self.client.get_run(self.run_id).data.tags.get(TAG))
                if current is not None and current.claim != self.holder.claim:
                    self.lost = True
                    log.error(
                        "run %s was taken over by %s; this process stops writing to it", self.run_id, current.describe()
                    )
                    return
                self.holder.heartbeat = time.time()
                self.client.set_tag(self.run_id, TAG, json.dumps(asdict(self.holder)))
            except Exception as e:  # the tracking server is away: the spool deals with the run's data
                log.debug("lease heartbeat for run %s failed: %s", self.run_id, e)

    def release(self) -> None:
        """End the claim: the run is free for the next resume."""
        self._stop.set()
        self._thread.join()
        if self.lost:
            return
        try:
            self.client.delete_tag(self.run_id, TAG)
        except Exception as e:  # unreachable server: the claim expires by itself
            log.debug("releasing the lease on run %s failed: %s", self.run_id, e)
