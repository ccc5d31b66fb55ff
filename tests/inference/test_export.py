"""ONNX export and the two predict backends: the graph gives PyTorch's heat-maps and glints at any batch and size,
predict writes the same rows either way (images and videos), and a run's export travels in its MLflow model."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import fails_cleanly, read_only, run_cli, train_tiny
from mlflow.tracking import MlflowClient
from PIL import Image

from glint_track.data.synth import example_frames
from glint_track.inference.export import OUTPUTS, DeployedGlints
from glint_track.inference.predict import window_corner
from glint_track.model import GlintUNet


@pytest.fixture
def model_file(tmp_path: Path) -> tuple[Path, GlintUNet]:
    """A 4-glint model with a random head: distinct peaks, some of them 'present'."""
    torch.manual_seed(0)
    model = GlintUNet(4, 4)
    torch.nn.init.normal_(model.out_conv.weight, std=50.0)  # an untrained model's features are tiny
    torch.nn.init.constant_(model.out_conv.bias, -2.0)
    path = tmp_path / "model.pth"
    torch.save({"model_state_dict": model.state_dict(), "model_info": {"image_size": [32, 32]}}, path)
    return path, model.eval()


def exported(model: Path, out: Path, *args: str) -> str:
    result = run_cli("export", "--model", str(model), "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_onnx_graph_gives_pytorchs_heatmaps_and_glints_at_any_batch_and_size(
    model_file: tuple[Path, GlintUNet], tmp_path: Path
) -> None:
    path, model = model_file
    output = exported(path, tmp_path / "glints.onnx")
    assert "wrote" in output and output.count("ONNX Runtime vs PyTorch on") == 2, output
    graph = onnx.load(tmp_path / "glints.onnx")
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["glint_track.glints"] == "g1,g2,g3,g4" and meta["glint_track.trained_size"] == "32x32"
    assert [i.type.tensor_type.elem_type for i in graph.graph.input] == [onnx.TensorProto.UINT8]
    session = onnxruntime.InferenceSession(str(tmp_path / "glints.onnx"), providers=["CPUExecutionProvider"])
    presence = []
    for shape in [(1, 32, 32), (3, 48, 64), (2, 64, 32)]:  # sizes it was not traced at
        frames = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
        ours = session.run(list(OUTPUTS), {"images": frames})
        with torch.no_grad():
            ref = [t.numpy() for t in DeployedGlints(model, 0.3)(torch.from_numpy(frames))]
        assert [o.shape for o in ours] == [r.shape for r in ref]
        assert np.abs(ours[0] - ref[0]).max() < 1e-5  # probabilities
        assert np.abs(ours[1] - ref[1]).max() < 1e-3  # every glint's position, present or not (px)
        assert np.array_equal(ours[3], ref[3])
        presence += ref[3].ravel().tolist()
    assert 0 < np.mean(presence) < 1  # both present and absent glints were compared


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_writes_the_same_rows_with_either_backend_for_images_and_videos(
    model_file: tuple[Path, GlintUNet], tmp_path: Path
) -> None:
    import av

    path, _ = model_file
    frames = example_frames(5, (32, 32), 4, seed=3)
    (tmp_path / "frames").mkdir()
    for i, image in enumerate(frames[:2]):
        Image.fromarray(np.kron(image, np.ones((2, 2), np.uint8))).save(tmp_path / "frames" / f"f{i}.png")  # 64²
    with av.open(str(tmp_path / "clip.mkv"), "w") as video:  # lossless, so the frames are what was encoded
        stream = video.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "gray"
        for image in frames:
            video.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="gray")))
        video.mux(stream.encode())
    exported(path, tmp_path / "glints.onnx")
    runs = {
        "torch": ["--model", str(path)],
        "onnx": ["--model", str(tmp_path / "glints.onnx"), "--backend", "onnx"],
    }
    for backend, model in runs.items():
        result = run_cli(
            "predict", *model, str(tmp_path / "frames"), str(tmp_path / "clip.mkv"), "--out", f"{backend}.csv"
        )
        assert result.exit_code == 0 and "in 7 frames" in result.output, result.output
    torch_rows, onnx_rows = _rows(Path("torch.csv")), _rows(Path("onnx.csv"))
    assert len(torch_rows) == 7 * 4 and [r["image"] for r in torch_rows][-1].endswith("clip.mkv#4")
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        assert (a["image"], a["glint"], a["present"]) == (b["image"], b["glint"], b["present"])
        assert abs(float(a["x"]) - float(b["x"])) < 2e-3 and abs(float(a["y"]) - float(b["y"])) < 2e-3
    first = [r for r in torch_rows if r["image"].endswith("f0.png")]
    assert max(float(r["x"]) for r in first) > 32  # the 64² image's own pixels, not the model's 32²


def test_a_runs_export_travels_in_its_mlflow_model_and_predict_onnx_uses_it(tiny_h5: Path, tmp_path: Path) -> None:
    _, run_id = train_tiny(tiny_h5, "--epochs", "1")
    output = exported(run_id, tmp_path / "glints.onnx")
    model_id = output.split("added to MLflow model ")[1].split()[0]
    client = MlflowClient()
    assert client.get_logged_model(model_id).source_run_id == run_id
    assert "model.onnx" in {a.path for a in client.list_logged_model_artifacts(model_id)}
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(example_frames(1, (32, 32), 4)[0]).save(frames / "f0.png")
    result = run_cli("--debug", "predict", "--model", run_id, "--backend", "onnx", str(frames), "--out", "p.csv")
    assert result.exit_code == 0 and "exporting it now" not in result.output, result.output
    (tmp_path / "out").mkdir()
    with read_only(tmp_path):  # the store's folder: the file could not be added, so it is not exported at all
        fails_cleanly(["export", "--model", run_id, "--out", "out/g.onnx"], "or pass --no-attach to write the .onnx")
        assert not (tmp_path / "out" / "g.onnx").exists()
        assert "wrote out/g.onnx" in exported(run_id, Path("out/g.onnx"), "--no-attach")


def test_export_and_backend_mistakes_are_one_line_each(model_file: tuple[Path, GlintUNet], tmp_path: Path) -> None:
    path, _ = model_file
    fails_cleanly(["export", "--model", str(path), "--out", "glints.txt"], "use a file name ending in .onnx")
    (tmp_path / "m.onnx").write_bytes(b"not onnx")
    Image.fromarray(example_frames(1, (32, 32), 4)[0]).save(tmp_path / "f0.png")
    predict = ["predict", "--out", "p.csv", "--model"]
    fails_cleanly([*predict, str(tmp_path / "m.onnx"), str(tmp_path / "f0.png")], "--backend onnx")
    onnx_file = [*predict, str(tmp_path / "m.onnx"), "--backend", "onnx", str(tmp_path / "f0.png")]
    fails_cleanly(onnx_file, "not a glint-track ONNX model")
    (tmp_path / "broken.mp4").write_bytes(bytes(64))
    fails_cleanly([*predict, str(path), str(tmp_path / "broken.mp4")], "not a readable video")
    assert not Path("p.csv").exists()


def test_predict_window_starts_each_sequence_on_the_whole_frame_and_stays_in_frame_pixels(
    model_file: tuple[Path, GlintUNet], tmp_path: Path
) -> None:
    path, _ = model_file
    (tmp_path / "seq").mkdir()
    for i, image in enumerate(example_frames(4, (64, 64), 4, seed=5)):  # resized to the model's 32²
        Image.fromarray(image).save(tmp_path / "seq" / f"f{i}.png")
    outputs = {}
    for name, extra in {"whole": [], "window": ["--window", "16"], "wide": ["--window", "32"]}.items():
        result = run_cli("predict", "--model", str(path), str(tmp_path / "seq"), "--out", f"{name}.csv", *extra)
        assert result.exit_code == 0, result.output
        outputs[name] = _rows(Path(f"{name}.csv"))
    assert outputs["wide"] == outputs["whole"]  # a window as large as the input is the whole frame
    assert outputs["window"][:4] == outputs["whole"][:4]  # the first frame of a sequence: no window yet
    assert len(outputs["window"]) == 16
    present = [r for r in outputs["window"] if r["present"] == "True"]
    assert present and all(-0.5 <= float(r[k]) <= 63.5 for r in present for k in ("x", "y"))  # the frame's pixels
    fails_cleanly(["predict", "--model", str(path), str(tmp_path / "seq"), "--out", "p.csv", "--window", "40"], "16")


def test_a_window_on_the_16_pixel_grid_sees_what_the_whole_frame_sees(model_file: tuple[Path, GlintUNet]) -> None:
    assert window_corner((40.0, 50.0), 32, (128, 96)) == (32, 32)  # nearest to centring, on the grid
    assert window_corner((2.0, 500.0), 32, (128, 96)) == (96, 0)  # inside the frame
    _, model = model_file
    frame = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        whole = model(frame)

    def mismatch(top: int, left: int) -> float:  # a 64² window's logits vs the whole frame's, middle 8² cells
        with torch.no_grad():
            part = model(frame[..., top : top + 64, left : left + 64])
        t, s = top // 4, left // 4
        return float((part[..., 4:12, 4:12] - whole[..., t + 4 : t + 12, s + 4 : s + 12]).abs().mean())

    # The UNet pools by 16: on that grid the window pools the frame's pixels as the whole frame does, and what
    # differs comes only from beyond its edges (measured 6e-4 of the largest logit); 4 px off, 14× more.
    assert mismatch(32, 48) < 1e-3 * float(whole.abs().max())
    assert mismatch(36, 52) > 5 * mismatch(32, 48)


def test_an_export_that_does_not_reproduce_pytorch_is_not_written(
    model_file: tuple[Path, GlintUNet], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from glint_track.inference import export as export_module

    real = export_module.check_onnx

    def off_by_half_a_pixel(path: Path, model: GlintUNet, batches: list[np.ndarray]) -> list:
        checks = real(path, model, batches)
        checks[-1].xy_diff_px = 0.5
        return checks

    monkeypatch.setattr(export_module, "check_onnx", off_by_half_a_pixel)
    path, _ = model_file
    fails_cleanly(["export", "--model", str(path), "--out", str(tmp_path / "g.onnx")], "does not reproduce PyTorch")
    assert not (tmp_path / "g.onnx").exists() and not list(tmp_path.glob(".*"))


def test_export_on_the_command_line_prints_its_own_lines_only(model_file: tuple[Path, GlintUNet]) -> None:
    """Importing torch resets the ONNX exporter's logger, whose warnings (torchvision's operators skipped) would
    otherwise come twice, in two formats, before ours."""
    path, _ = model_file
    cmd = [sys.executable, "-m", "glint_track", "export", "--model", str(path), "--out", "g.onnx"]
    env = {k: v for k, v in os.environ.items() if k != "TORCH_LOGS"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert lines[0].startswith("wrote g.onnx") and all(line.startswith("  ONNX Runtime vs") for line in lines[1:])
