"""labelme → HDF5 packing, and `inspect`, against hand-written annotations and the synthetic generator."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY
from mlflow.tracking import MlflowClient
from PIL import Image

from glint_track.cli import main
from glint_track.data.synth import write_synthetic


def reference_heatmap(size: int, hm: int, glints: list[tuple[float, float, float]]) -> np.ndarray:
    """SEED.md's definition, computed the slow way: full-resolution Gaussians, max, block mean, clip."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    full = np.zeros((size, size))
    for x, y, r in glints:
        sigma = max(1.5, r * 1.2)
        g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
        g[(xx - x) ** 2 + (yy - y) ** 2 > (3 * sigma) ** 2] = 0
        full = np.maximum(full, g)
    f = size // hm
    return np.clip(full.reshape(hm, f, hm, f).mean(axis=(1, 3)), 0, 1)


def circle(label: str, cx: float, cy: float, r: float) -> dict:
    return {"label": label, "points": [[cx, cy], [cx + r * 0.6, cy + r * 0.8]], "shape_type": "circle"}


@pytest.fixture
def labelme_dir(tmp_path: Path) -> Path:
    d = tmp_path / "annotations"
    d.mkdir()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8))
    img.save(d / "a.png")
    (d / "a.json").write_text(
        json.dumps(
            {
                "imagePath": "a.png",
                "shapes": [
                    circle("g1", 10.25, 12.5, 2.0),
                    circle("g3", 20.0, 7.75, 1.0),
                    circle("g9", 5.0, 5.0, 1.0),  # outside g1..g4: skipped with a warning
                    {"label": "pupil", "points": [[1, 1], [3, 3]], "shape_type": "polygon"},  # not a circle
                ],
            }
        )
    )
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    (d / "b.json").write_text(
        json.dumps(
            {
                "imagePath": "gone.png",
                "imageData": base64.b64encode(buf.getvalue()).decode(),
                "shapes": [circle("g2", 16.0, 16.0, 3.0)],
            }
        )
    )
    (d / "c.json").write_text(json.dumps({"imagePath": "missing.png", "shapes": [circle("g1", 1, 1, 1)]}))  # no image
    (d / "d.json").write_text("{not json")
    return d


def test_pack_hand_written_annotations(labelme_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "packed.h5"
    result = CliRunner().invoke(main, ["pack", "--in-dir", str(labelme_dir), "--out", str(out), "--num-glints", "4"])
    assert result.exit_code == 0, result.output
    assert "packed 2 samples with 3 glints" in result.output and "skipped 2 file(s)" in result.output
    warnings = caplog.text
    assert (
        "c.json" in warnings and "d.json" in warnings and "'g9' is outside 1..4" in warnings and "'pupil'" in warnings
    )
    with h5py.File(out) as f:
        assert [s.decode() for s in f["stems"][...]] == ["a", "b"]
        assert (
            f["images"].shape == (2, 32, 32)
            and f["heatmaps"].shape == (2, 4, 8, 8)
            and f["heatmaps"].dtype == np.float16
        )
        points, radii, present = f["points"][...], f["radii"][...], f["present"][...]
        np.testing.assert_allclose(points[0, 0], [10.25, 12.5], atol=0.01)
        np.testing.assert_allclose(points[0, 2], [20.0, 7.75], atol=0.01)
        np.testing.assert_allclose(radii[0, [0, 2]], [2.0, 1.0], atol=1e-5)
        assert present.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0]] and np.isnan(points[0, 1]).all()
        expected = reference_heatmap(32, 8, [(10.25, 12.5, 2.0)])
        np.testing.assert_allclose(f["heatmaps"][0, 0].astype(np.float64), expected, atol=2e-3)
        np.testing.assert_allclose(
            f["heatmaps"][1, 1].astype(np.float64), reference_heatmap(32, 8, [(16.0, 16.0, 3.0)]), atol=2e-3
        )
        assert f.attrs["num_classes"] == 4 and f.attrs["sigma_scale"] == 1.2 and f.attrs["img_h"] == 32


def test_pack_nothing_usable_writes_nothing(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "x.json").write_text("[")
    out = tmp_path / "out.h5"
    result = CliRunner().invoke(main, ["pack", "--in-dir", str(d), "--out", str(out)])
    assert result.exit_code == 2 and "Error:" in result.output
    assert not out.exists() and list(tmp_path.glob(".out.h5.*")) == []


def test_synth_labelme_round_trip_packs_identically_and_trains(tmp_path: Path) -> None:
    runner = CliRunner()
    assert (
        runner.invoke(
            main,
            [
                "synth",
                "--out",
                "s.h5",
                "--num-samples",
                "24",
                "--size",
                "32",
                "--num-glints",
                "4",
                "--labelme-dir",
                "lm",
            ],
        ).exit_code
        == 0
    )
    result = runner.invoke(
        main, ["pack", "--in-dir", "lm", "--out", "p.h5", "--num-glints", "4", "--compression", "lzf"]
    )
    assert result.exit_code == 0, result.output
    with h5py.File("s.h5") as s, h5py.File("p.h5") as p:
        assert (s["images"][...] == p["images"][...]).all()
        np.testing.assert_allclose(p["points"][...], s["points"][...], atol=0.01)
        assert np.abs(p["heatmaps"][...].astype(float) - s["heatmaps"][...].astype(float)).max() < 0.05
        assert p["images"].compression == "lzf"
    result = runner.invoke(main, ["train", "--h5", "p.h5", *TINY, "--epochs", "1"])
    assert result.exit_code == 0, result.output


def test_participants_become_groups_and_validation_holds_whole_ones_out(tmp_path: Path) -> None:
    """synth --participants writes one labelme sub-folder per person; pack records them as groups; train holds whole
    people out (auto), logs each one's metrics and says so at the end; --split-by frame and a file without groups
    split frames as before."""
    runner = CliRunner()
    args = ["synth", "--out", "s.h5", "--num-samples", "40", "--size", "32", "--num-glints", "4", "--participants", "5"]
    result = runner.invoke(main, [*args, "--labelme-dir", "lm"])
    assert result.exit_code == 0 and "of 5 participants" in result.output, result.output
    assert sorted(p.name for p in Path("lm").iterdir()) == ["p01", "p02", "p03", "p04", "p05"]
    result = runner.invoke(main, ["pack", "--in-dir", "lm", "--recursive", "--out", "p.h5", "--num-glints", "4"])
    assert result.exit_code == 0 and "packed 40 samples from 5 groups" in result.output, result.output
    with h5py.File("s.h5") as s, h5py.File("p.h5") as p:
        assert [g.decode() for g in p["groups"][...]] == [g.decode() for g in s["groups"][...]]
        assert sorted(set(p["groups"].asstr()[...])) == ["p01", "p02", "p03", "p04", "p05"]

    result = runner.invoke(main, ["train", "--h5", "p.h5", *TINY, "--epochs", "1", "--val-split", "0.4"])
    assert result.exit_code == 0, result.output
    run_id = result.output.split("Run ")[1].split()[0]
    assert "24 train / 16 val images (held out: 2 of 5 groups)" in result.output  # 5 people of 8 frames each
    assert ", validated on 2 groups it never trained on: val F1" in result.output
    run = MlflowClient().get_run(run_id)
    assert run.data.params["split_by"] == "group" and run.data.params["augment"] == "True"
    held_out = sorted({k.split("/")[1] for k in run.data.metrics if k.startswith("val_group/")})
    assert len(held_out) == 2 and {f"val_group/{g}/f1" for g in held_out} <= set(run.data.metrics)
    for g in held_out:
        assert f"  {g}: F1 " in result.output

    for typed in (["--split-by", "frame"], []):
        h5 = "p.h5" if typed else "plain.h5"
        if not typed:
            runner.invoke(main, ["synth", "--out", h5, "--num-samples", "24", "--size", "32", "--num-glints", "4"])
        result = runner.invoke(main, ["train", "--h5", h5, *TINY, "--epochs", "1", *typed])
        assert result.exit_code == 0 and "held out" not in result.output and "validated on" not in result.output
    result = runner.invoke(main, ["train", "--h5", "plain.h5", *TINY, "--epochs", "1", "--split-by", "group"])
    assert result.exit_code == 2 and "--split-by group: plain.h5 has no groups" in result.stderr


def test_inspect_summary_and_preview(tiny_h5: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["inspect", str(tiny_h5), "--preview", str(tmp_path / "grid.png"), "--count", "4"]
    )
    assert result.exit_code == 0, result.output
    for text in (
        "32 samples, images 32×32, 4 glints",
        "heatmaps",
        "compression gzip",
        "num_classes=4",
        "g1 ",
        "validation: ok",
    ):
        assert text in result.output, text
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (512, 512) and grid.mode == "RGB"
        pixels = np.asarray(grid).reshape(-1, 3)
    assert ((pixels == (255, 64, 64)).all(axis=1)).any()  # g1 drawn in its colour


def test_inspect_rejects_non_hdf5_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.h5").write_text("nope")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "x.h5")])
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0 and "is not an HDF5 file" in result.stderr


def test_pack_output_appears_only_when_complete(
    labelme_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "packed.h5"
    write_synthetic(out, num_samples=2, size=32, num_glints=4)  # an earlier output, which a new pack may replace
    previous = out.read_bytes()
    real = h5py.Group.create_dataset
    calls = []

    def failing_create_dataset(self, name, *args, **kwargs):
        calls.append(name)
        if name == "points":  # images and heat-maps are already written when the disk "fills up"
            raise OSError(28, "No space left on device")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create_dataset)
    result = CliRunner().invoke(main, ["pack", "--in-dir", str(labelme_dir), "--out", str(out), "--num-glints", "4"])
    assert result.exit_code == 2 and "images" in calls
    assert "could not be written" in result.stderr and "No space left" in result.stderr
    assert out.read_bytes() == previous  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".packed")] == []  # no temp file left
