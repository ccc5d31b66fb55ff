"""The run on rank 0, opened beside the first epoch instead of before it.

Importing MLflow, opening its store (a new local mlflow.db is created and migrated), creating the run and logging
what describes it take seconds of interpreter time that no training step needs. They run in a thread started
once the data and the model are known to be good (bad input never leaves a run behind) and the first training
step is launched (the thread would otherwise hold the GIL that step's hundreds of launches and its CUDA-graph
capture each take back), while the first epoch trains: the run is needed only when that epoch's checkpoint is
saved. What fails while opening stops the training at its next step, with its one-line error. The run's
training.log still has every line from the start.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from glint_track.data.glint_file import GlintData
from glint_track.training.config import TrainConfig
from glint_track.training.distributed import Distributed
from glint_track.training.resume import ResumePlan
from glint_track.training.run_log import RunLogHandler

if TYPE_CHECKING:
    from glint_track.training.tracked_run import TrackedRun

log = logging.getLogger(__name__)


class RunOpening:
    """Opens the run in a thread of its own; the training thread checks on it between steps and takes it, made
    MLflow's active run there, when it first needs it."""

    def __init__(self) -> None:
        self.log_handler = RunLogHandler()  # keeps the lines logged until the run's folder exists
        package_log = logging.getLogger("glint_track")
        package_log.addHandler(self.log_handler)
        if package_log.getEffectiveLevel() > logging.INFO:  # the run's log artifact always has the epoch lines
            package_log.setLevel(logging.INFO)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glint-track-open")
        self._opening: Callable[[], TrackedRun] | None = None  # what opens the run, once prepared
        self._future: Future[TrackedRun] | None = None
        self.run: TrackedRun | None = None  # once taken by the training thread
        self._raised = False  # the opening's error has reached the training thread

    def prepare(
        self,
        cfg: TrainConfig,
        plan: ResumePlan | None,
        data: GlintData,
        ddp: Distributed,
        device: torch.device,
        best_epoch: int | None,
        announce: Callable[[TrackedRun], None],
    ) -> None:
        """What the run is opened with: it also finishes what a process killed while saving left undone (`best_epoch`:
        the restored progress's), and `announce(run)` logs the run's first line once it exists. It is opened in the
        background from the first `check` (after the first step) or when `take` first needs it."""
        self._opening = functools.partial(self._open, (cfg, plan, data, ddp, device, best_epoch, announce))

    def _begin(self) -> None:
        if self._future is None:
            assert self._opening is not None, "prepare() first"
            self._future = self._pool.submit(self._opening)
            self._pool.submit(self._warm_up)  # after the run is handed over: nobody waits for it

    def _open(self, prepared: tuple) -> TrackedRun:
        """In the opening thread: what `prepare` was given, opened."""
        cfg, plan, data, ddp, device, best_epoch, announce = prepared
        from glint_track.tracking.server import open_tracking_store  # imports MLflow: here, not before the first step
        from glint_track.training.tracked_run import TrackedRun

        open_tracking_store()
        run = TrackedRun.open(cfg, plan, data, ddp, device, self.log_handler)
        try:
            run.complete_resumed(best_epoch)
            announce(run)
        except BaseException:
            run.close("FAILED")
            raise
        return run

    def _warm_up(self) -> None:
        assert self._future is not None
        if self._future.exception() is not None:
            return
        try:
            self._future.result().warm_up_the_end()
        except Exception as e:  # only a head start: the end imports what it needs anyway
            log.debug("warming up the end of the run failed (%s)", e)

    def check(self) -> None:
        """Between steps: begin opening the run; raise at once what failed while opening; take it once it is open."""
        if self.run is not None or self._opening is None:
            return
        self._begin()
        if self._future.done():
            self.take()

    def take(self) -> TrackedRun:
        """The open run, waiting for it if need be, made MLflow's active run in the calling (training) thread."""
        if self.run is None:
            self._begin()
            try:
                self.run = self._future.result()
            except BaseException:
                self._raised = True
                raise
            self.run.activate()
        return self.run

    def close(self, status: str) -> Path | None:
        """End the run with `status`, waiting for one still opening (no run is left RUNNING); returns the spool
        folder if the tracking server has not received everything."""
        run = self.run
        if run is None and self._future is not None and not self._raised:
            try:
                run = self._future.result()
            except BaseException as e:  # the training stopped or failed first: its error is the one raised
                log.warning("opening the MLflow run failed too (%s)", getattr(e, "message", None) or e)
        self._pool.shutdown(wait=True)
        if run is None:
            logging.getLogger("glint_track").removeHandler(self.log_handler)
            self.log_handler.close()
            return None
        return run.close(status)
