"""What a user sees of a run outside the numbers: the log lines on the terminal and in training.log, and
how the run reads in the MLflow UI (params, metrics, logged models, pictures)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import REPO, TINY, latest_checkpoint, run_cli, train_tiny
from mlflow.tracking import MlflowClient
from servers import MlflowServer, chromium_or_skip

from glint_track.figures import crop_around, grid_shape, threshold_curves, validation_grid
from glint_track.glints import Glints
from glint_track.tracking.ui import VIEW_KEY, VIEW_TAG

OUR_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ")


def test_the_terminal_and_training_log_hold_our_lines_only(tiny_h5: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="always")  # warnings would show, were they let
    cmd = [sys.executable, "-m", "glint_track", "train", "--h5", str(tiny_h5), *TINY, "--epochs", "1"]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mlflow.db").is_file()  # a fresh store: MLflow created its tables during this run
    logged = [line for line in result.stderr.splitlines() if line and not line.startswith(("Warning:", " "))]
    assert logged and all(OUR_LINE.match(line) for line in logged), result.stderr
    assert "\x1b[" not in result.stderr + result.stdout  # no colour codes in a pipe
    (log,) = (tmp_path / "runs").glob("*/training.log")
    assert all(OUR_LINE.match(line) for line in log.read_text().splitlines()), log.read_text()

    debug = subprocess.run(
        [*cmd[:3], "--debug", *cmd[3:]], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert debug.returncode == 0 and "INFO Started monitoring system metrics" in debug.stderr, debug.stderr


def test_a_resumed_run_has_one_model_its_summary_once_per_step_and_params_that_apply_first(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "2", "--monitor", "val_f1", "--monitor-mode", "max")
    time.sleep(5)  # idle between the run and its resume
    assert run_cli("train", "--resume", run_id, "--epochs", "3").exit_code == 0
    client = MlflowClient()
    run = client.get_run(run_id)
    duration_s = (run.info.end_time - run.info.start_time) / 1000  # MLflow's Duration: the idle time counts
    assert 0 < float(run.data.tags["glint_track.train_time_s"]) <= duration_s - 4
    (model,) = client.search_logged_models([run.info.experiment_id])  # the first part's model was replaced
    best_epoch = latest_checkpoint(run_id, "best_model.pth")[0]["epoch"]
    assert model.source_run_id == run_id and model.tags["glint_track.epoch"] == str(best_epoch)
    for key in [k for k in run.data.metrics if k.startswith("best_val_")]:  # the logged model's, once per step
        history = client.get_metric_history(run_id, key)
        steps = [m.step for m in history]
        assert len(steps) == len(set(steps)) and max(steps) == best_epoch, (key, steps)
        np.testing.assert_equal(run.data.metrics[key], max(history, key=lambda m: m.step).value, key)
    assert [m.step for m in client.get_metric_history(run_id, "lr")] == [1, 2, 3]  # the schedule's, each epoch once
    assert [m.step for m in client.get_metric_history(run_id, "val_f1")] == [1, 2, 3]
    params = list(run.data.params)
    assert params.index("loss") < params.index("epochs") < params.index("lr") < params.index("h5")
    assert not {"alpha", "gamma", "lam_focal", "lam_dice", "momentum", "step_size"} & set(params)  # not used by it
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/train_args.json")["lam_focal"] == 1.0  # kept, all of them


def test_a_focal_run_lists_the_knobs_focal_reads(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1", "--loss", "focal", "--optimizer", "sgd")
    params = MlflowClient().get_run(run_id).data.params
    assert {"alpha", "gamma", "momentum"} <= set(params) and not {"lam_dice", "div_mode"} & set(params)


def test_a_model_with_registered_versions_is_never_deleted_by_a_resume(tiny_h5: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1", "--register-model", "glints")
    assert run_cli("train", "--resume", run_id, "--epochs", "2").exit_code == 0
    client = MlflowClient()
    versions = client.search_model_versions("name='glints'")
    assert sorted(int(v.version) for v in versions) == [1, 2]  # the resume registered its model too
    kept = {m.model_id for m in client.search_logged_models([client.get_run(run_id).info.experiment_id])}
    assert kept == {v.source.removeprefix("models:/") for v in versions}  # each version's model is kept
    assert mlflow.pyfunc.load_model("models:/glints/1") is not None


def test_grids_have_no_empty_tile() -> None:
    for n in range(1, 17):
        cols, rows = grid_shape(n)
        assert cols * rows == n and cols >= rows, n
    assert grid_shape(8) == (4, 2)


def test_validation_pictures_crop_around_the_glints_at_a_readable_scale() -> None:
    n, size, tile = 8, 128, 320
    xy = torch.tensor([[40.0, 60.0], [52.0, 60.0], [46.0, 70.0]]).expand(n, 3, 2).clone()
    truth = Glints(xy, torch.ones(n, 3), torch.ones(n, 3, dtype=torch.bool))
    pred = Glints(xy + 0.5, torch.ones(n, 3), torch.ones(n, 3, dtype=torch.bool))
    images = torch.rand(n, 1, size, size) * 0.2 + 0.4
    grid = validation_grid(images, pred, truth, match_radius=2.0, tile=tile)
    assert grid.width == 4 * tile and grid.height > 2 * tile
    pixels = np.asarray(grid)
    tiles = [pixels[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] for r in range(2) for c in range(4)]
    assert all(t.mean() > 30 for t in tiles)  # every tile shows an image: none is left black
    x0, y0, side = crop_around(xy[0] + 0.5, size, size, margin=8.0)
    assert side <= size / 2 and x0 <= 40 and x0 + side >= 53 and y0 <= 60 and y0 + side >= 71
    assert tile / side >= 2 * tile / size  # glints at least twice as large as in the whole image


def test_the_threshold_figure_is_drawn_around_the_threshold_in_use() -> None:
    thresholds = sorted({*np.round(np.arange(0.02, 0.99, 0.02), 2).tolist(), 0.3})
    high = [0.999] * len(thresholds)
    picture = threshold_curves(thresholds, high, high, high, in_use=0.3)
    assert picture.width > 400 and picture.height > 300


def test_the_printed_links_open_the_training_view_with_glint_columns(tiny_h5: Path) -> None:
    result, run_id = train_tiny(tiny_h5, "--epochs", "2")
    client = MlflowClient()
    run = client.get_run(run_id)
    view = json.loads(client.get_experiment(run.info.experiment_id).tags[VIEW_TAG])
    assert view["selectedColumns"][:2] == ["metrics.`val_f1`", "metrics.`val_loc_err_mean`"]
    assert run.data.tags["glint_track.epochs"] == "2"  # what the table's epochs column shows
    table = f"/#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    assert table in result.output and f"/runs/{run_id}?workflowType=machine_learning" in result.output


def test_two_runs_compared_in_the_ui_differ_in_the_params_that_differ_and_no_other(tiny_h5: Path) -> None:
    runs = [MlflowClient().get_run(train_tiny(tiny_h5, "--epochs", "1", "--lr", lr)[1]) for lr in ("1e-3", "2e-3")]
    a, b = (r.data.params for r in runs)
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == {"lr"}  # not who trained it, nor where
    assert all(r.data.tags["glint_track.local_copy"] == f"runs/{r.info.run_id}" for r in runs)


@pytest.mark.timeout(400)
def test_the_mlflow_ui_in_a_real_browser(tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The printed link opens the training view's runs table with the glint columns in sight in a common window
    (not MLflow 3's GenAI overview); a resumed run's page charts its best_val_* metrics. With
    GLINT_TRACK_SAVE_SCREENSHOTS=1 it refreshes docs/ui-runs.png and docs/ui-metrics.png."""
    from playwright.sync_api import expect, sync_playwright

    chromium = chromium_or_skip()
    server = MlflowServer(tmp_path)
    server.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        _, other = train_tiny(tiny_h5, "--epochs", "2", "--run-name", "lr-2e-3", "--lr", "2e-3")
        result, run_id = train_tiny(tiny_h5, "--epochs", "2", "--run-name", "glint-demo")
        resumed = run_cli("train", "--resume", run_id, "--epochs", "3")
        assert resumed.exit_code == 0, resumed.output
        link = next(line.split()[-1] for line in resumed.output.splitlines() if line.strip().startswith("Runs:"))
        shots = REPO / "docs" if os.environ.get("GLINT_TRACK_SAVE_SCREENSHOTS") else tmp_path
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})  # a common window
            page.goto(link)
            expect(page.get_by_text("glint-demo", exact=True).first).to_be_visible(timeout=30000)
            close = page.get_by_role("button", name="Close")
            if close.count():  # MLflow's assistant panel: out of the way of the table (its columns load as shown)
                close.first.click()
            expect(page.get_by_test_id("sort-header-val_f1")).to_be_attached(timeout=30000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shots / "ui-runs.png"))
            for column in ("val_f1", "val_loc_err_mean", "val_loss"):  # in sight, not only in the page
                expect(page.get_by_test_id(f"sort-header-{column}")).to_be_in_viewport()
            assert page.get_by_text("Token Usage").count() == 0  # not the GenAI overview

            experiment = mlflow.get_run(run_id).info.experiment_id
            page.set_viewport_size({"width": 1600, "height": 2600})  # every chart drawn, none lazily left out
            page.goto(
                f"{server.uri}/#/experiments/{experiment}/runs/{run_id}/model-metrics?workflowType=machine_learning"
            )
            expect(page.get_by_text("best_val_f1", exact=True).first).to_be_visible(timeout=30000)
            page.wait_for_timeout(3000)
            metrics = mlflow.get_run(run_id).data.metrics
            page.screenshot(path=str(shots / "ui-metrics.png"), clip={"x": 0, "y": 0, "width": 1600, "height": 1300})
            for key in [k for k, v in metrics.items() if k.startswith("best_val_") and np.isfinite(v)]:
                expect(page.get_by_text(key, exact=True).first).to_be_attached()
            constant_lr = [m.step for m in MlflowClient().get_metric_history(run_id, "lr")] == [0]
            assert page.locator(".barlayer").count() == constant_lr  # a value of the whole run: a bar, not a trend
            browser.close()
    finally:
        server.stop()
    assert other != run_id
