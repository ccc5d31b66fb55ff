"""Real servers for integration tests: `mlflow server` and a throwaway PostgreSQL cluster."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

LISTENING = re.compile(r"(?:Uvicorn running on|Listening at:) http://127\.0\.0\.1:(\d+)")  # uvicorn, gunicorn


class MlflowServer:
    """An `mlflow server` with proxied artifacts (`mlflow-artifacts:`) that a test can stop and start again."""

    def __init__(
        self, folder: Path, backend_uri: str | None = None, app_name: str | None = None, artifacts: Path | None = None
    ) -> None:
        self.folder = folder
        self.artifacts = artifacts or folder / "artifacts"
        self.backend_uri = backend_uri or f"sqlite:///{folder / 'server.db'}"
        self.app_name = app_name
        self.port = 0  # the first start binds a free port (no race with other processes) and keeps it
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str] | None = None) -> None:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts),
        ]
        if self.app_name:
            cmd += ["--app-name", self.app_name]
        log = self.folder / "server.log"
        start = log.stat().st_size if log.exists() else 0
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "a"),
            start_new_session=True,
            env=dict(os.environ, **(env or {})),
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.port == 0:
                bound = LISTENING.search(log.read_text(errors="replace")[start:])
                if bound is None:
                    time.sleep(0.3)
                    continue
                self.port = int(bound.group(1))
            try:
                if requests.get(f"{self.uri}/health", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server did not start: {(self.folder / 'server.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Postgres:
    """A PostgreSQL cluster of its own (initdb, trust authentication) reached through a Unix socket in its own
    folder: no TCP port to pick, so none to lose to another process.

    `unavailable()` says why one cannot be started here (then the test is skipped with that reason)."""

    def __init__(self) -> None:
        found = shutil.which("pg_ctl") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))), None)
        self.bin = Path(found).parent if found else None
        self.folder = Path(tempfile.mkdtemp(prefix="glint-pg-"))
        self.data = self.folder / "data"
        self.uri = f"postgresql://postgres@/mlflow?host={self.folder}"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.folder, "postgres")

    def unavailable(self) -> str | None:
        if self.bin is None or not (self.bin / "initdb").exists():
            return "PostgreSQL is not installed (Debian: apt-get install postgresql)"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed (pip install -e '.[test]')"
        if self.as_user and shutil.which("runuser") is None:
            return "running as root without runuser to start PostgreSQL as the postgres user"
        return None

    def _run(self, *cmd: str) -> None:
        out = subprocess.run([*self.as_user, *cmd], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-k {self.folder} -c listen_addresses=''"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.folder / "postgres.log"),
            "-w",
            "start",
        )
        self._run(
            str(self.bin / "psql") if (self.bin / "psql").exists() else "psql",
            "-h",
            str(self.folder),
            "-U",
            "postgres",
            "-c",
            "CREATE DATABASE mlflow",
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.folder, ignore_errors=True)


def chromium_or_skip() -> str:
    """The path of Chromium for Playwright; the test is skipped (with the fix) where either is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright is not installed (pip install -e '.[test]')")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    return path
