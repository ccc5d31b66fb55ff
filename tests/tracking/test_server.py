"""Which tracking store is in use, whether it answers, and how its failures read."""

from __future__ import annotations

import errno
import shlex
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from glint_track.errors import GlintTrackError
from glint_track.tracking import server
from glint_track.tracking.server import (
    check_tracking_server,
    experiment_id_for,
    is_remote,
    list_artifact_names,
    local_artifact_root,
    local_store_errors,
    reachable,
    server_away,
    sqlite_path,
)
from glint_track.tracking.tags import TAG_EXPERIMENT_KIND


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free again once closed: nothing listens there


def test_remote_stores_are_http_and_local_artifact_roots_are_paths(tmp_path: Path) -> None:
    assert is_remote("http://host:5000") and is_remote("https://host") and not is_remote("sqlite:///mlflow.db")
    assert local_artifact_root(f"file://{tmp_path}/1/abc/artifacts") == tmp_path / "1/abc/artifacts"
    assert local_artifact_root(str(tmp_path / "mlruns")) == tmp_path / "mlruns"
    assert local_artifact_root("s3://bucket/path") is None and local_artifact_root("mlflow-artifacts:/1/a") is None


def test_processes_creating_one_local_store_at_once_all_get_a_working_store(tmp_path: Path) -> None:
    """MLflow creates its tables on first use; unlocked, 4 processes at once failed 11 times in 32 and left 3 of 8
    stores unopenable ("table _alembic_tmp_… already exists")."""
    assert sqlite_path("sqlite:///mlflow.db") == tmp_path / "mlflow.db" and sqlite_path("http://h") is None
    opens = "from glint_track.tracking.server import open_local_store; open_local_store()"
    for store in range(2):
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/{store}.db", "PATH": "/usr/bin:/bin"}
        procs = [subprocess.Popen([sys.executable, "-c", opens], env=env, stderr=subprocess.PIPE) for _ in range(4)]
        errors = [p.communicate(timeout=300)[1].decode() for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, errors
        client = MlflowClient(f"sqlite:///{tmp_path}/{store}.db")
        assert client.get_run(client.create_run("0").info.run_id).info.status == "RUNNING"


def test_an_unreachable_server_is_one_line_naming_it_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert not reachable(uri) and reachable("sqlite:///mlflow.db")
    with pytest.raises(GlintTrackError, match="cannot reach the MLflow tracking server") as info:
        check_tracking_server()
    assert uri in info.value.message and "MLFLOW_TRACKING_URI" in info.value.message


def test_experiments_are_found_or_made_and_a_deleted_one_is_refused() -> None:
    client = MlflowClient()
    made = experiment_id_for("glints", client)
    assert experiment_id_for("glints", client) == made and client.get_experiment(made).name == "glints"
    assert client.get_experiment(made).tags[TAG_EXPERIMENT_KIND] == "custom_model_development"  # the runs table
    untagged, other = (
        client.create_experiment("by mlflow run"),
        client.create_experiment("genai", tags={TAG_EXPERIMENT_KIND: "x"}),
    )
    for name in ("by mlflow run", "genai"):
        experiment_id_for(name, client)
    assert client.get_experiment(untagged).tags[TAG_EXPERIMENT_KIND] == "custom_model_development"
    assert client.get_experiment(other).tags[TAG_EXPERIMENT_KIND] == "x"  # a kind someone chose is kept
    client.delete_experiment(made)
    with pytest.raises(GlintTrackError, match="experiment 'glints' is deleted"):
        experiment_id_for("glints", client)


def test_artifact_names_of_one_folder(tmp_path: Path) -> None:
    (tmp_path / "a.pth").write_text("a")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp_path / "a.pth"), "checkpoints")
        mlflow.log_artifact(str(tmp_path / "a.pth"))
    assert list_artifact_names(run.info.run_id, "checkpoints") == {"a.pth"}
    assert list_artifact_names(run.info.run_id, None) == {"a.pth", "checkpoints"}


def test_a_local_store_that_cannot_be_written_is_one_line_but_other_mlflow_errors_pass() -> None:
    def storage_failure() -> None:
        try:
            raise sqlite3.OperationalError("database or disk is full") from OSError(errno.ENOSPC, "No space left")
        except sqlite3.OperationalError as e:
            raise MlflowException(f"(sqlite3.OperationalError) {e}") from e

    with pytest.raises(GlintTrackError, match="cannot be written .*free space there"):
        with local_store_errors():
            storage_failure()
    with pytest.raises(MlflowException, match="no experiment named"):
        with local_store_errors():
            raise MlflowException("no experiment named 'x'")


def test_a_call_that_could_not_connect_is_an_outage_even_if_the_server_answers_a_moment_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server coming back: the spooled upload was refused a connection, /health answers just after. Taken for a
    refusal of the call, it ended a run that the spool was about to complete (seen in CI)."""
    monkeypatch.setattr(server, "reachable", lambda uri: True)  # it answers now
    try:
        try:
            raise requests.ConnectionError("[Errno 111] Connection refused")
        except requests.ConnectionError as e:
            raise MlflowException(f"API request failed with exception {e}")  # noqa: B904 (as MLflow's http_request)
    except MlflowException as e:
        could_not_connect = e
    assert server_away(could_not_connect)
    assert not server_away(MlflowException("RESOURCE_EXHAUSTED: no space left"))  # it answered and refused


def test_a_run_leaves_only_its_store_and_files_even_in_a_unicode_folder(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's default store URI percent-encodes the folder, and MLflow created that encoded folder beside the real
    one; the store's lock file was left beside mlflow.db. Neither is left now."""
    from conftest import train_tiny

    folder = tmp_path / "Ünïcode 目录"
    folder.mkdir()
    monkeypatch.chdir(folder)
    result, run_id = train_tiny(tiny_h5, "--epochs", "1")
    assert sorted(p.name for p in folder.iterdir()) == ["mlflow.db", "mlruns", "runs"]
    browse = next(line for line in result.output.splitlines() if "mlflow ui" in line)
    command = shlex.split(browse.split("Browse:")[1].split("then open")[0])  # as a shell reads the pasted line
    assert command == ["mlflow", "ui", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["Ünïcode 目录", "cache"])
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
