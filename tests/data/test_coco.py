"""COCO keypoints in (`pack --coco`) and out (`predict --coco-out`): CVAT's and Label Studio's export read with
its visibility flags, the file's images only inside its folder, and predict → COCO → pack giving back the points."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import fails_cleanly, run_cli
from PIL import Image

from glint_track.data.synth import example_frames
from glint_track.model import GlintUNet


def coco_file(folder: Path, images: list[dict], annotations: list[dict], names: list[str]) -> Path:
    path = folder / "person_keypoints_default.json"
    categories = [{"id": 1, "name": "eye", "keypoints": names, "skeleton": []}, {"id": 2, "name": "box"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def frame(folder: Path, name: str, seed: int = 0) -> None:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(example_frames(1, (32, 48), 3, seed=seed)[0]).save(folder / name)


def test_a_cvat_export_is_packed_with_its_visibility_flags_and_participants(tmp_path: Path) -> None:
    for i, name in enumerate(["p01/a.png", "p01/b.png", "p02/c.png", "p02/unlabelled.png"]):
        frame(tmp_path, name, seed=i)
    images = [{"id": i + 1, "file_name": n} for i, n in enumerate(["p01/a.png", "p01/b.png", "p02/c.png"])]
    images.append({"id": 9, "file_name": "p02/unlabelled.png"})
    names = ["g1", "pupil", "g2", "g3"]
    annotations = [
        {"image_id": 1, "category_id": 1, "keypoints": [3, 4, 2, 20, 20, 2, 10.5, 12.25, 2, 7, 7, 1]},  # g3 hidden
        {"image_id": 2, "category_id": 1, "keypoints": [0, 0, 0, 0, 0, 0, 40, 30, 2, 90, 5, 2]},  # g3 off the image
        {"image_id": 3, "category_id": 1, "keypoints": [1, 2, 2, 0, 0, 0, 5, 6, 2, 7, 8, 2]},
        {"image_id": 3, "category_id": 2, "bbox": [0, 0, 4, 4]},  # another kind of annotation
    ]
    coco = coco_file(tmp_path, images, annotations, names)
    result = run_cli("pack", "--coco", str(coco), "--out", "lab.h5", "--num-glints", "3")
    assert result.exit_code == 0, result.output
    assert "packed 3 samples from 2 groups" in result.output and "skipped 1 file" in result.output
    assert "g3 at (90, 5) is outside the 48×32 image; dropped" in result.stderr
    with h5py.File("lab.h5") as f:
        points, stems = f["points"][:], [s.decode() for s in f["stems"][:]]
        assert [g.decode() for g in f["groups"][:]] == ["p01", "p01", "p02"] and f.attrs["coco_file"] == str(coco)
    assert stems == ["a", "b", "c"]
    np.testing.assert_array_equal(points[0], [[3, 4], [10.5, 12.25], [np.nan, np.nan]])
    np.testing.assert_array_equal(points[1], [[np.nan, np.nan], [40, 30], [np.nan, np.nan]])
    np.testing.assert_array_equal(points[2], [[1, 2], [5, 6], [7, 8]])


def test_a_coco_file_reads_nothing_outside_its_folder_and_bad_files_are_one_line(tmp_path: Path) -> None:
    frame(tmp_path, "outside.png")
    (tmp_path / "export").mkdir()
    frame(tmp_path / "export", "in.png")
    images = [{"id": 1, "file_name": "../outside.png"}, {"id": 2, "file_name": "in.png"}]
    annotations = [
        {"image_id": 1, "category_id": 1, "keypoints": [3, 4, 2]},
        {"image_id": 2, "category_id": 1, "keypoints": [3, 4]},  # one value short
    ]
    coco = coco_file(tmp_path / "export", images, annotations, ["g1"])
    line = fails_cleanly(["pack", "--coco", str(coco), "--out", "x.h5", "--num-glints", "1"], "could be packed")
    assert not Path("x.h5").exists(), line
    result = run_cli("pack", "--coco", str(coco), "--out", "x.h5", "--num-glints", "1")
    assert "outside the input folder" in result.stderr and "not 3 for each of the 1 named" in result.stderr
    coco_file(tmp_path / "export", images, annotations, ["LED1"])
    fails_cleanly(["pack", "--coco", str(coco), "--out", "x.h5"], "no keypoint named g1…g8 in the COCO categories")
    coco.write_text("[1, 2")
    fails_cleanly(["pack", "--coco", str(coco), "--out", "x.h5"], "not a JSON file")
    coco.write_text("[]")
    fails_cleanly(["pack", "--coco", str(coco), "--out", "x.h5"], "not a COCO file")
    fails_cleanly(["pack", "--coco", str(coco), "--in-dir", ".", "--out", "x.h5"], "one of them")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A 3-glint model with a random head: distinct peaks, some of them 'present'."""
    torch.manual_seed(0)
    model = GlintUNet(3, 4)
    torch.nn.init.normal_(model.out_conv.weight, std=50.0)
    torch.nn.init.constant_(model.out_conv.bias, -2.0)
    path = tmp_path / "model.pth"
    torch.save({"model_state_dict": model.state_dict(), "model_info": {"image_size": [32, 48]}}, path)
    return path


def test_predicted_glints_go_through_coco_and_come_back_from_pack(model_file: Path, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    for i in range(4):
        frame(frames, f"f{i}.png", seed=i)
    coco = frames / "prelabels.json"
    args = ["predict", "--model", str(model_file), str(frames), "--out", "p.csv", "--coco-out", str(coco)]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    listed = json.loads(coco.read_text())
    assert [i["file_name"] for i in listed["images"]] == [f"f{i}.png" for i in range(4)]
    with open("p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert 0 < sum(r["present"] == "True" for r in rows) < len(rows)  # both kinds of glint go through
    assert run_cli("pack", "--coco", str(coco), "--out", "back.h5", "--num-glints", "3").exit_code == 0
    with h5py.File("back.h5") as f:
        points = f["points"][:]
    for r in rows:
        i, c = int(Path(r["image"]).stem[1:]), int(r["glint"][1:]) - 1
        expected = [float(r["x"]), float(r["y"])] if r["present"] == "True" else [np.nan, np.nan]
        np.testing.assert_allclose(points[i, c], expected, atol=1e-3)
    assert run_cli(*args[:-4], "--coco-out", str(coco)).exit_code == 0  # its own file: replaced
    fails_cleanly([*args[:-4], "--coco-out", str(frames / "f0.png")], "use a .json file name")
    (tmp_path / "theirs.json").write_text("{}")
    fails_cleanly([*args[:-4], "--coco-out", str(tmp_path / "theirs.json")], "is not a COCO file glint-track")
