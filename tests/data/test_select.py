"""`glint-track select`: frames spread over appearance, no near-copies, nothing already labelled, files written
where an annotator starts, inputs never written over."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from conftest import fails_cleanly, run_cli
from PIL import Image

from glint_track.data.frames import Frame
from glint_track.data.select import NEAR_COPY, distances, sample, thumbnail
from glint_track.inference.doubt import jumps
from glint_track.model import GlintUNet

SIZE = 32


def appearance(kind: int, rng: np.random.Generator) -> np.ndarray:
    """A 32² frame of one of six looks (a bright disc somewhere, or a gradient), with a little sensor noise."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if kind < 4:
        cy, cx = [(8, 8), (8, 24), (24, 8), (24, 24)][kind]
        base = 40 + 180 * (((yy - cy) ** 2 + (xx - cx) ** 2) < 30)
    else:
        base = 20 + 6 * (xx if kind == 4 else yy)
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


def folder_of(path: Path, kinds: list[int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.mkdir()
    for i, kind in enumerate(kinds):
        Image.fromarray(appearance(kind, rng)).save(path / f"f{i:03d}_k{kind}.png")
    return path


def kinds_in(folder: Path) -> list[int]:
    return sorted(int(p.stem.split("_k")[1][0]) for p in folder.glob("*.png"))


def test_the_chosen_frames_cover_every_look_not_the_commonest(tmp_path: Path) -> None:
    """150 frames of one look and 6 of each of five others: six frames picked at random are mostly the first look
    (5 or more of 6 in most draws); select takes one of each."""
    frames = folder_of(tmp_path / "frames", [0] * 150 + [k for k in range(1, 6) for _ in range(6)])
    result = run_cli("select", str(frames), "--out", "pick", "-k", "6")
    assert result.exit_code == 0, result.output
    assert kinds_in(Path("pick")) == [0, 1, 2, 3, 4, 5], result.output
    with open("pick/selected.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["file"] for r in rows} == {p.name for p in Path("pick").glob("*.png")}
    assert all(Path(r["source"]).parent == frames for r in rows)


def test_near_copies_are_chosen_once_and_labelled_frames_never(tmp_path: Path) -> None:
    frames = folder_of(tmp_path / "frames", [0] * 40 + [1] * 40 + [2] * 3)
    result = run_cli("select", str(frames), "--out", "first", "-k", "8")
    assert result.exit_code == 0 and kinds_in(Path("first")) == [0, 1, 2], result.output  # three looks, once each
    assert "only 3 frames differ enough" in result.output
    more = folder_of(tmp_path / "more", [3] * 5 + [0] * 5, seed=1)  # new frames, some like those labelled
    result = run_cli("select", str(frames), str(more), "--out", "second", "-k", "8", "--labelled", "first")
    assert result.exit_code == 0, result.output
    assert kinds_in(Path("second")) == [3], result.output  # only the look not labelled yet


def test_frames_of_an_hdf5_file_become_pngs_and_images_keep_their_bit_depth(tmp_path: Path, tiny_h5: Path) -> None:
    result = run_cli("select", str(tiny_h5), "--out", "from_h5", "-k", "4")
    assert result.exit_code == 0, result.output
    written = sorted(Path("from_h5").glob("tiny_*.png"))
    assert len(written) == 4 and Image.open(written[0]).size == (32, 32)
    (tmp_path / "deep").mkdir()
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)).save(tmp_path / "deep" / "a.png")
    assert run_cli("select", str(tmp_path / "deep"), "--out", "deep_pick", "-k", "1").exit_code == 0
    assert Image.open("deep_pick/a.png").mode.startswith("I")  # copied, not reduced to 8 bits


def test_the_output_never_lands_on_an_input_or_on_frames_chosen_before(tmp_path: Path) -> None:
    frames = folder_of(tmp_path / "frames", [0, 1, 2])
    fails_cleanly(["select", str(frames), "--out", str(frames), "-k", "2"], "which would be written over")
    assert run_cli("select", str(frames), "--out", "pick", "-k", "2").exit_code == 0
    fails_cleanly(
        ["select", str(frames), "--out", "pick", "-k", "2"], "already holds images or labelme files; name a new folder"
    )
    fails_cleanly(["select", str(frames), "--out", "x", "--labelled", "pick", "--labelled", str(frames)], "nothing")


def test_the_sample_is_uniform_over_the_stream_and_bounded_by_its_size() -> None:
    rng = np.random.default_rng(0)
    stream = (Frame(str(i), rng.integers(0, 255, (8, 8), dtype=np.uint8), "s") for i in range(5000))
    drawn = sample(stream, 200, seed=3, labelled=np.zeros((0, 256), np.float32))
    assert drawn.thumbs.shape == (200, 256) and drawn.seen == 5000 and len(set(drawn.positions)) == 200
    assert abs(np.mean(drawn.positions) - 2500) < 400  # the whole stream, not its start (std of the mean ~100)


def test_sensor_noise_is_a_near_copy_and_another_look_is_not() -> None:
    rng = np.random.default_rng(0)
    a, b, c = (thumbnail(appearance(k, rng))[None] for k in (0, 0, 1))
    assert distances(a, b)[0, 0] < NEAR_COPY < distances(a, c)[0, 0]


def _rows(points: list[tuple[float, float]]) -> list[dict[str, object]]:
    return [
        {"image": "f", "glint": f"g{i + 1}", "x": x, "y": y, "score": 0.9, "present": True}
        for i, (x, y) in enumerate(points)
    ]


def test_a_glint_that_leaves_the_others_jumps_and_a_saccade_does_not() -> None:
    ring = [(10.0, 10.0), (20.0, 10.0), (20.0, 20.0), (10.0, 20.0)]
    steady = [(x + 0.4, y) for x, y in ring]
    assert jumps(_rows(ring), _rows(steady)) == []
    one_off = [*steady[:2], (28.0, 20.0), steady[3]]
    assert jumps(_rows(ring), _rows(one_off)) == ["g3 jumped 8.0 px while the others moved 0.4"]
    saccade = [(x + 8.0, y) for x, y in ring]  # the eye moved: every glint with it
    assert jumps(_rows(ring), _rows(saccade)) == []


def test_with_a_model_half_the_frames_are_its_doubts_written_with_pre_labels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GlintUNet(4, 4)
    torch.nn.init.normal_(model.out_conv.weight, std=50.0)  # peaks everywhere: frames it doubts, for its reasons
    torch.nn.init.constant_(model.out_conv.bias, -2.0)
    torch.save({"model_state_dict": model.state_dict(), "model_info": {"image_size": [SIZE, SIZE]}}, "m.pth")
    frames = folder_of(tmp_path / "frames", [k for k in range(6) for _ in range(5)])
    result = run_cli("select", str(frames), "--out", "pick", "-k", "6", "--model", "m.pth")
    assert result.exit_code == 0, result.output
    with open("pick/selected.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    doubted = [r for r in rows if r["reason"].startswith("model: ")]
    assert len(rows) == 6 and 1 <= len(doubted) <= 3, rows
    for row in rows:  # each image beside its pre-labels, as labelme opens them and pack reads them
        assert (Path("pick") / row["file"]).is_file() and (Path("pick") / row["file"]).with_suffix(".json").is_file()
    assert Path("pick/to_review.csv").is_file()
    assert run_cli("pack", "--in-dir", "pick", "--out", "p.h5", "--num-glints", "4").exit_code == 0
