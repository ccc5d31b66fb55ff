"""Issue 8: a PostgreSQL-backed `mlflow server` with proxied artifacts, system metrics, and the MLflow UI
checked in a real browser. Skipped, with the reason, where PostgreSQL or Chromium cannot be started."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY, mlflow_run, train_tiny
from mlflow.tracking import MlflowClient
from servers import MlflowServer, Postgres, chromium_or_skip

from glint_track.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def frequent_system_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow samples every 10 s by default; these runs last a few seconds."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")


@pytest.fixture
def postgres():
    pg = Postgres()
    if reason := pg.unavailable():
        pytest.skip(reason)
    try:
        pg.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        pg.stop()
        pytest.skip(f"PostgreSQL could not be started here: {e}")
    yield pg
    pg.stop()


def all_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= all_artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


@pytest.mark.timeout(400)
def test_postgresql_server_train_resume_elsewhere_and_mlflow_run(
    tiny_h5: Path, tmp_path: Path, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = MlflowServer(tmp_path, backend_uri=postgres.uri)
    server.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        _, run_id = train_tiny(tiny_h5, "--epochs", "2", "--save-freq", "1")
        client = MlflowClient()
        run = client.get_run(run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: the client never touches the store
        assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)

        elsewhere = tmp_path / "another-machine"  # nothing local: the checkpoint comes from the server
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        resumed = CliRunner().invoke(main, ["train", "--resume", run_id, "--epochs", "3"])
        assert resumed.exit_code == 0, resumed.output
        assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1, 2, 3]

        project = mlflow_run("epochs=4", f"resume_run_id={run_id}")  # everything else: the run's own
        assert project.returncode == 0, project.stderr[-3000:]
        assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1, 2, 3, 4]
        assert client.get_run(run_id).info.status == "FINISHED"
        (made,) = client.search_runs(
            ["0"]
        )  # the run `mlflow run` made, ended at once, pointing to the one it continued
        assert made.data.tags["glint_track.continued_in"] == run_id

        names = all_artifacts(client, run_id)
        assert {
            "checkpoints/latest_checkpoint.pth",
            "checkpoints/latest_checkpoint.pth.sha256",
            "checkpoints/best_model.pth",
            "training.log",
            "train_args.json",
            "figures/threshold_curves.png",
            "figures/heatmaps_best.png",
        } <= names, names
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="checkpoints/latest_checkpoint.pth", dst_path=str(tmp_path / "dl")
        )
        assert torch.load(path, weights_only=True)["epoch"] == 4
        assert (tmp_path / "artifacts").is_dir() and any((tmp_path / "artifacts").rglob("latest_checkpoint.pth"))
    finally:
        server.stop()


def test_system_metrics_can_be_turned_off(tiny_h5: Path) -> None:
    _, on = train_tiny(tiny_h5, "--epochs", "2")
    _, off = train_tiny(tiny_h5, "--epochs", "2", "--no-system-metrics")
    assert any(k.startswith("system/") for k in mlflow.get_run(on).data.metrics)
    assert not any(k.startswith("system/") for k in mlflow.get_run(off).data.metrics)


@pytest.mark.timeout(400)
def test_the_run_page_in_a_real_browser(tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Params (save_optimizer too), metric names, checkpoints/latest_checkpoint.pth and a logged image, as a
    user sees them in the MLflow UI. GLINT_TRACK_SAVE_SCREENSHOTS=1 also refreshes docs/ui-run.png."""
    from playwright.sync_api import expect, sync_playwright

    chromium = chromium_or_skip()
    server = MlflowServer(tmp_path)
    server.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        _, run_id = train_tiny(tiny_h5, "--epochs", "2", "--run-name", "glint-demo")
        experiment = mlflow.get_run(run_id).info.experiment_id
        shots = REPO / "docs" if os.environ.get("GLINT_TRACK_SAVE_SCREENSHOTS") else tmp_path
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 2300})
            page.goto(f"{server.uri}/#/experiments/{experiment}/runs/{run_id}")
            for text in (
                "save_optimizer",
                "world_size",
                "train_loss",
                "val_loss",
                "val_f1",
                "images_per_s",
                "system/cpu_utilization_percentage",
            ):
                expect(page.get_by_text(text, exact=True).first).to_be_attached(timeout=30000)
            page.screenshot(path=str(shots / "ui-run.png"), full_page=True)

            page.goto(f"{server.uri}/#/experiments/{experiment}/runs/{run_id}/artifacts")
            page.get_by_text("checkpoints", exact=True).first.click()
            expect(page.get_by_text("latest_checkpoint.pth", exact=True).first).to_be_visible(timeout=30000)
            page.get_by_text("val_images", exact=True).first.click()
            page.get_by_text("epoch_001.png", exact=True).first.click()
            picture = page.locator("img[src^='blob:']").first  # the preview of the logged PNG
            expect(picture).to_be_visible(timeout=30000)
            assert picture.evaluate("img => img.naturalWidth") > 100
            page.screenshot(path=str(shots / "ui-artifacts.png"))
            browser.close()
    finally:
        server.stop()


@pytest.mark.timeout(400)
def test_basic_auth_server_wrong_password_is_one_line_and_right_one_trains(tiny_h5: Path, tmp_path: Path) -> None:
    server = MlflowServer(tmp_path, app_name="basic-auth")
    try:
        server.start(env={"MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret-Admin", "MLFLOW_FLASK_SERVER_SECRET_KEY": "glint-test"})
    except RuntimeError as e:
        pytest.skip(f"mlflow's basic-auth server could not start here: {str(e)[-300:]}")
    try:
        env = {"MLFLOW_TRACKING_URI": server.uri, "MLFLOW_TRACKING_USERNAME": "admin"}
        wrong = CliRunner().invoke(
            main,
            ["train", "--h5", str(tiny_h5), *TINY, "--epochs", "1"],
            env=env | {"MLFLOW_TRACKING_PASSWORD": "nope"},
        )
        assert wrong.exit_code == 2
        errors = [line for line in wrong.stderr.splitlines() if line.startswith("Error:")]
        assert (
            len(errors) == 1 and "refused the credentials (HTTP 401)" in errors[0] and "Traceback" not in wrong.output
        )
        right = CliRunner().invoke(
            main,
            ["train", "--h5", str(tiny_h5), *TINY, "--epochs", "1"],
            env=env | {"MLFLOW_TRACKING_PASSWORD": "s3cret-Admin"},
        )
        assert right.exit_code == 0, right.output
    finally:
        server.stop()
