"""Which MLflow tracking store is in use and whether it answers: the checks made before a run exists.

With no MLFLOW_TRACKING_URI, MLflow's embedded default is used (SQLite `mlflow.db` in the working
directory, artifacts beside it); teams point MLFLOW_TRACKING_URI at an `mlflow server`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import requests
from filelock import FileLock, Timeout
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from glint_track.errors import GlintTrackError
from glint_track.files import os_reason
from glint_track.tracking.tags import TAG_EXPERIMENT_KIND, TRAINING_KIND
from glint_track.tracking.ui import store_runs_view

try:  # the SQL stores' errors (mlflow-skinny installs may lack SQLAlchemy, and then have no SQL store)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    _SQL_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError,)
except ImportError:
    _SQL_ERRORS = ()

# MLflow's per-download progress bars would clutter our log; our own progress is shown per epoch.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow retries a failed request for minutes by default; an unreachable server is spooled instead (see
# RunTracker), so a few seconds of retries are enough to ride out a blip.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


DEFAULT_EXPERIMENT_ID = "0"  # MLflow's Default experiment
#: What an MLflow run ID looks like (what a user pastes from the UI or a training log).
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
#: How long to wait for another process creating or migrating the local store (a migration takes seconds).
STORE_LOCK_TIMEOUT_S = 600


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def open_tracking_store() -> None:
    """Open the tracking store before a run is touched: a local store is created or migrated under a lock, a
    remote server is checked to answer."""
    check_tracking_server()
    open_local_store()


def open_local_store() -> None:
    """Create or migrate a local SQLite store while holding `<db>.lock`: MLflow creates its tables on first use,
    and two processes doing that at once (a sweep's children, a training and a script reading its runs) fail
    with "table … already exists" or leave the file half-migrated for good."""
    database = sqlite_path(tracking_uri())
    if database is None:  # a server, or another kind of store
        return
    lock = _store_lock(database)
    try:
        with local_store_errors(), lock:
            MlflowClient().search_experiments(max_results=1)  # MLflow keeps the opened store for the process
    except Timeout as e:
        raise GlintTrackError(
            f"another process has held {lock.lock_file} for {STORE_LOCK_TIMEOUT_S} s while creating or migrating "
            f"the MLflow store {database}; wait for it to finish or stop it, then run again"
        ) from e


def _store_lock(database: Path) -> FileLock:
    """The lock for creating or migrating `database`, in the temporary folder and named by its path: one beside
    mlflow.db would be left in the user's folder after every run (a lock file is never deleted, as a process
    waiting on it would then hold a lock no one else sees)."""
    key = hashlib.sha256(str(database.resolve()).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"glint-track-store-{key}.lock"
    return FileLock(path, timeout=STORE_LOCK_TIMEOUT_S, mode=0o666)  # other users of a shared folder take it too


def require_local_store() -> None:
    """Before reading a run: a local store that does not exist holds no run, and asking MLflow would create an
    empty one (an `mlflow.db` left in a folder that had none)."""
    database = sqlite_path(tracking_uri())
    if database is not None and not database.exists():
        raise GlintTrackError(
            f"no MLflow store here ({database} does not exist): run in the folder you trained in, beside its "
            f"mlflow.db, or set MLFLOW_TRACKING_URI to the store that holds the run"
        )


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:` tracking URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:"):
        return None
    database = make_url(uri).database
    return Path(database).absolute() if database and database != ":memory:" else None


def check_tracking_server() -> None:
    """Fail fast, in one line, when a remote tracking server is unreachable or refuses our credentials.

    MLflow's own client retries for minutes before giving up; a user who mistyped a URI should know now.
    """
    uri = tracking_uri()
    if not is_remote(uri):
        return
    auth = None
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    try:
        r = requests.get(
            f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=auth, timeout=10
        )
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
        raise GlintTrackError(
            f"the MLflow tracking server at {uri} answered HTTP {r.status_code}; check that MLFLOW_TRACKING_URI "
            "points at an MLflow server"
        )


def get_run(run_id: str) -> Any:
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as e:
        raise GlintTrackError(
            f"no MLflow run with ID {run_id} at {tracking_uri()}; check the ID in the MLflow UI, or set "
            f"MLFLOW_TRACKING_URI to the server (or run in the folder with the mlflow.db) that holds it"
        ) from e


@contextmanager
def local_store_errors() -> Iterator[None]:
    """A local tracking store that cannot be written (a full disk under mlflow.db, a read-only folder) is
    one line naming it; a remote server's errors are reported where the server is checked."""
    try:
        yield
    except (MlflowException, OSError, *_SQL_ERRORS) as e:
        if is_remote(tracking_uri()) or not _caused_by_storage(e):
            raise
        raise GlintTrackError(
            f"the MLflow tracking store at {tracking_uri()} cannot be written ({os_reason(e)[:200]}); free space there "
            f"(or fix its permissions), or set MLFLOW_TRACKING_URI to another store"
        ) from e


def _caused_by_storage(error: BaseException) -> bool:
    """Whether an error is, or was raised while handling, a file-system or database failure (MLflow wraps
    those in MlflowException); other MLflow errors (a bad name, a missing run) are not the store's fault."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (OSError, *_SQL_ERRORS)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def reachable(uri: str) -> bool:
    """Whether a remote tracking server answers at all (local stores always do)."""
    if not is_remote(uri):
        return True
    try:
        return requests.get(f"{uri.rstrip('/')}/health", timeout=5).status_code < 500
    except requests.RequestException:
        return False


def server_away(error: BaseException) -> bool:
    """Whether a failed call failed because the remote server is away: its request could not connect or timed out
    (whatever the server says a moment later: it may be coming back just then), or the server does not answer now.
    Else the server refused the call (a full disk, a bad name): that is an error to report, not to retry."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout)):
            return True
        seen = seen.__cause__ or seen.__context__
    return not reachable(tracking_uri())


def retry_interval() -> float:
    """Seconds between attempts to reach a server that went away (GLINT_TRACK_SPOOL_RETRY_S)."""
    return float(os.environ.get("GLINT_TRACK_SPOOL_RETRY_S", "30"))


def local_artifact_root(artifact_uri: str) -> Path | None:
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return Path(artifact_uri) if parsed.scheme == "" else None


def experiment_id_for(name: str, client: MlflowClient) -> str:
    """The ID of experiment `name`, created if missing (without setting MLflow's process-wide active experiment),
    marked as a training experiment unless it already has a kind."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            created = client.create_experiment(name, tags={TAG_EXPERIMENT_KIND: TRAINING_KIND})
            store_runs_view(client, created)
            return created
        except MlflowException:  # created by a run started at the same moment
            found = client.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage != "active":
        raise GlintTrackError(
            f"experiment {name!r} is deleted; restore it (`mlflow experiments restore`) or pass another --experiment"
        )
    if TAG_EXPERIMENT_KIND not in found.tags:  # made by `mlflow run`, another tool or an older glint-track
        client.set_experiment_tag(found.experiment_id, TAG_EXPERIMENT_KIND, TRAINING_KIND)
    store_runs_view(client, found.experiment_id)
    return found.experiment_id


def list_artifact_names(run_id: str, folder: str | None) -> set[str]:
    """The names of the files directly in one artifact folder of a run."""
    return {Path(f.path).name for f in MlflowClient().list_artifacts(run_id, folder)}
