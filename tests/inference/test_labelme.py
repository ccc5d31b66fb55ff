"""Pre-labelling for labelme and the corrections measured at `pack` (issue 29): the JSON `predict --labelme-out`
writes packs back to the same points, existing annotations are never overwritten, frames are listed least
confident first, and the moves an annotator makes are recorded glint by glint, in the model's MLflow run too."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import fails_cleanly, run_cli, train_tiny
from mlflow.tracking import MlflowClient

from glint_track.inference.labelme import ring_order_holds

#: Below every score of the tiny, barely trained model: each glint is pre-labelled.
EVERY_GLINT = "0.0001"


@pytest.fixture(scope="module")
def new_frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frames the model has not seen, with the renderer's ground truth as synth's labelme JSON beside them."""
    folder = tmp_path_factory.mktemp("frames") / "truth"
    result = run_cli(
        "synth", "--out", str(folder.parent / "new.h5"), "--num-samples", "6", "--size", "32", "--num-glints", "4",
        "--seed", "9", "--labelme-dir", str(folder),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder


def images_only(frames: Path, where: Path) -> Path:
    where.mkdir()
    for png in frames.glob("*.png"):
        shutil.copy(png, where / png.name)
    return where


def test_pre_labels_pack_back_to_the_predicted_points(tiny_h5: Path, new_frames: Path, tmp_path: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    frames = images_only(new_frames, tmp_path / "frames")
    out = tmp_path / "prelabelled"
    args = ["predict", "--model", run_id, "--images", str(frames), "--threshold", EVERY_GLINT]
    result = run_cli(*args, "--labelme-out", str(out), "--out", str(tmp_path / "preds.csv"))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "synth_000000.json").read_text())
    assert record["imagePath"] == "synth_000000.png" and (out / "synth_000000.png").is_file()
    assert [s["label"] for s in record["shapes"]] == ["g1", "g2", "g3", "g4"]
    assert record["glint_track"]["model"] == run_id and record["shapes"][0]["description"].startswith("glint-track")
    packed = run_cli("pack", "--in-dir", str(out), "--out", str(tmp_path / "packed.h5"))
    assert packed.exit_code == 0, packed.output
    assert "0 of 24 points moved more than 1 px" in packed.output  # nobody corrected anything
    with h5py.File(tmp_path / "packed.h5") as f:
        stems, points = [s.decode() for s in f["stems"][()]], f["points"][()]
    rows = list(csv.DictReader(open(tmp_path / "preds.csv")))
    for row in rows:
        i, c = stems.index(Path(row["image"]).stem), int(row["glint"][1:]) - 1
        assert points[i, c] == pytest.approx([float(row["x"]), float(row["y"])], abs=1e-3)


def test_existing_annotations_are_never_overwritten(tiny_h5: Path, new_frames: Path, tmp_path: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    frames = images_only(new_frames, tmp_path / "frames")
    out = tmp_path / "prelabelled"
    args = ["predict", "--model", run_id, "--images", str(frames), "--labelme-out", str(out)]
    assert run_cli(*args).exit_code == 0
    corrected = (out / "synth_000003.json").read_text().replace('"g1"', '"g1" ')  # an annotator's edit
    (out / "synth_000003.json").write_text(corrected)
    fails_cleanly(args, "exists (annotations may be in it); pass --overwrite")
    assert (out / "synth_000003.json").read_text() == corrected
    assert run_cli(*args, "--overwrite").exit_code == 0


def test_frames_to_review_come_least_confident_first_with_their_reasons(
    tiny_h5: Path, new_frames: Path, tmp_path: Path
) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    out = tmp_path / "prelabelled"
    frames = images_only(new_frames, tmp_path / "frames")
    result = run_cli("predict", "--model", run_id, "--images", str(frames), "--labelme-out", str(out))
    assert result.exit_code == 0 and "to_review.csv" in result.output, result.output
    review = list(csv.DictReader(open(out / "to_review.csv")))
    assert len(review) == 6 and [float(r["least_score"]) for r in review] == sorted(
        float(r["least_score"]) for r in review
    )
    for r in review:  # the untrained head scores ~0.01 everywhere: every glint is missing, none guessed
        assert r["missing"] == "4" and "missing g1" in r["reasons"]
        assert json.loads((out / r["json"]).read_text())["shapes"] == []


def test_the_ring_order_check_follows_the_leds_either_way_round() -> None:
    ring = [{"glint": f"g{k + 1}", "x": math.cos(k * math.pi / 4), "y": math.sin(k * math.pi / 4)} for k in range(8)]
    assert ring_order_holds(ring) and ring_order_holds(ring[::-1])
    swapped = [dict(ring[0], glint="g3"), ring[1], dict(ring[2], glint="g1"), *ring[3:]]
    assert not ring_order_holds(swapped)


def test_the_moves_an_annotator_makes_are_recorded_glint_by_glint_and_in_the_run(
    tiny_h5: Path, new_frames: Path, tmp_path: Path
) -> None:
    """The annotator puts every point where the renderer drew its glint, deletes one, adds one the model missed;
    pack records |prediction - truth| for each glint, the addition and the deletion, in the CSV and the run."""
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    out = tmp_path / "prelabelled"
    frames = images_only(new_frames, tmp_path / "frames")
    args = ["--images", str(frames), "--labelme-out", str(out), "--threshold", EVERY_GLINT]
    assert run_cli("predict", "--model", run_id, *args).exit_code == 0
    expected: dict[tuple[str, str], float] = {}
    for path in sorted(out.glob("*.json")):
        record = json.loads(path.read_text())
        truth = {s["label"]: s["points"][0] for s in json.loads((new_frames / path.name).read_text())["shapes"]}
        predicted = record["glint_track"]["predicted"]
        for shape in record["shapes"]:
            x, y = truth[shape["label"]]
            expected[path.name, shape["label"]] = math.dist(predicted[shape["label"]][:2], (x, y))
            shape["points"] = [[x, y], [x + 1.0, y]]
        if path.name == "synth_000001.json":  # the annotator deletes g2: the model saw a glint that is not there
            record["shapes"] = [s for s in record["shapes"] if s["label"] != "g2"]
            del expected[path.name, "g2"]
        if path.name == "synth_000002.json":  # as predict writes a glint it missed: no circle, no prediction...
            del record["glint_track"]["predicted"]["g3"], expected[path.name, "g3"]
        path.write_text(json.dumps(record))  # ...and the annotator's g3 (put at the truth above) stays: added
    report = tmp_path / "corrections.csv"
    packed = run_cli("pack", "--in-dir", str(out), "--out", str(tmp_path / "round2.h5"), "--report", str(report))
    assert packed.exit_code == 0, packed.output
    assert "1 glints added (missed by the model), 1 deleted (spurious)" in packed.output
    rows = {(r["json"], r["glint"]): r for r in csv.DictReader(open(report))}
    assert (
        rows["synth_000001.json", "g2"]["status"] == "deleted" and rows["synth_000002.json", "g3"]["status"] == "added"
    )
    for key, moved in expected.items():
        assert float(rows[key]["moved_px"]) == pytest.approx(moved, abs=1e-3), key
        assert rows[key]["status"] == ("moved" if moved > 1 else "kept")
    run = MlflowClient().get_run(run_id)
    assert run.data.metrics["field_missed"] == 1 and run.data.metrics["field_spurious"] == 1
    assert run.data.metrics["field_moved_px_mean"] == pytest.approx(np.mean(list(expected.values())), abs=1e-3)
    assert len(run.data.tags["glint_track.field.digest"]) == 64
    assert [f.path for f in MlflowClient().list_artifacts(run_id, "field")] == [
        f"field/{run.data.tags['glint_track.field.digest'][:12]}.csv"
    ]


def test_a_crafted_pre_label_record_is_skipped_with_a_warning_and_the_frame_still_packs(
    tiny_h5: Path, new_frames: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "crafted"
    shutil.copytree(new_frames, folder)
    record = json.loads((folder / "synth_000000.json").read_text())
    record["glint_track"] = {"model": "x", "predicted": {"g1": ["1e999", None, {}]}}
    (folder / "synth_000000.json").write_text(json.dumps(record))
    result = run_cli("pack", "--in-dir", str(folder), "--out", str(tmp_path / "p.h5"), "--no-log-corrections")
    assert result.exit_code == 0 and "packed 6 samples" in result.output, result.output
    assert "pre-labels are not" in result.stderr and "Traceback" not in result.output
