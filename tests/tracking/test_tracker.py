"""RunTracker: the run's params and description, and calls spooled while the server is away."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from glint_track.tracking import tracker as tracker_module
from glint_track.tracking.tags import TAG_NOTE, TAG_OVERRIDE
from glint_track.tracking.tracker import RunTracker
from glint_track.training.parts import seed_everything


def test_a_continued_run_keeps_its_params_and_tags_what_changed() -> None:
    tracker = RunTracker.start("exp", "first", None, claim=False)
    tracker.log_config({"lr": 0.001, "epochs": 5, "resume": None})
    tracker.finish("KILLED", wait_s=0)
    tracker = RunTracker.start("exp", None, tracker.run_id, claim=False)
    tracker.log_config({"lr": 0.0005, "epochs": 5, "resume": tracker.run_id}, from_epoch=4, invocation={"resume"})
    tracker.finish("FINISHED", wait_s=0)
    run = mlflow.get_run(tracker.run_id)
    assert run.data.params == {"lr": "0.001", "epochs": "5", "resume": "None"}
    overrides = {k: v for k, v in run.data.tags.items() if k.startswith(TAG_OVERRIDE)}
    assert overrides == {f"{TAG_OVERRIDE}lr": "0.0005 from epoch 4"}


def test_the_description_leads_with_the_result_and_keeps_the_history() -> None:
    tracker = RunTracker.start("exp", None, None, claim=False)
    tracker.add_history("Resumed at epoch 4 with --lr 0.0005.")
    tracker.summarise("**Glints: val F1 0.990**")
    tracker.add_history("Resumed at epoch 9 with --epochs 12.")
    tracker.finish("FINISHED", wait_s=0)
    note = mlflow.get_run(tracker.run_id).data.tags[TAG_NOTE]
    assert (
        note == "**Glints: val F1 0.990**\n\nResumed at epoch 4 with --lr 0.0005.\nResumed at epoch 9 with --epochs 12."
    )


def test_calls_the_server_cannot_take_are_spooled_and_sent_in_order_when_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLINT_TRACK_SPOOL_RETRY_S", "0")
    tracker = RunTracker.start("exp", None, None, claim=False)
    tracker.spool = tracker_module.Spool.create(tmp_path / "spool", tracker.run_id, "http://server")
    real_send, away = tracker_module.send, [True]

    def send(*args: object) -> None:
        if away[0]:
            raise ConnectionError("server away")
        real_send(*args)

    monkeypatch.setattr(tracker_module, "send", send)
    for epoch in (1, 2, 3):
        tracker.log_metrics({"val_loss": 1.0 / epoch}, epoch)
    assert len(tracker.spool) == 3 and not MlflowClient().get_metric_history(tracker.run_id, "val_loss")
    away[0] = False
    assert tracker.finish("FINISHED", wait_s=5) == 0
    history = MlflowClient().get_metric_history(tracker.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert mlflow.get_run(tracker.run_id).info.status == "FINISHED"


def test_a_store_that_refuses_a_call_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = RunTracker.start("exp", None, None, claim=False)
    monkeypatch.setattr(
        tracker_module, "send", lambda *args: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    )
    with pytest.raises(
        tracker_module.GlintTrackError, match="could not store a file .*No space left on device.*artifact store"
    ):
        tracker.log_dict({"a": 1}, "train_args.json")
    tracker.finish("FAILED", wait_s=0)


def test_models_a_stopped_process_left_half_logged_are_deleted() -> None:
    tracker = RunTracker.start("exp", None, None, claim=False)
    client = MlflowClient()
    pending = client.create_logged_model(tracker.experiment_id, name="model", source_run_id=tracker.run_id)
    assert pending.status == LoggedModelStatus.PENDING
    assert not tracker.has_model_of(1)
    left = client.search_logged_models([tracker.experiment_id], filter_string=f"source_run_id = '{tracker.run_id}'")
    assert left == []
    tracker.finish("FINISHED", wait_s=0)


def test_runs_trained_with_the_same_seed_get_different_names() -> None:
    names = []
    for _ in range(3):
        seed_everything(0)  # what training does before its run is opened
        tracker = RunTracker.start("exp", None, None, claim=False)
        names.append(mlflow.get_run(tracker.run_id).info.run_name)
        tracker.finish("FINISHED", wait_s=0)
    assert len(set(names)) == 3 and all(name.count("-") == 2 for name in names)
    named = RunTracker.start("exp", "mine", None, claim=False)
    assert mlflow.get_run(named.run_id).info.run_name == "mine"
    named.finish("FINISHED", wait_s=0)
