"""Files from strangers (issue 14): the seed corpus of crafted HDF5 files, labelme folders and checkpoints
(tests/corpus, written by tests/corpus/build.py). Each ends in success or the one-line error that names
the problem; none reads outside its file, allocates what it only declares, or ends in a traceback."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY, fails_cleanly

from glint_track.cli import main
from glint_track.data.glint_file import load_glint_file
from glint_track.data.synth import write_synthetic
from glint_track.errors import GlintTrackError
from glint_track.logs import log_formatter

CORPUS = Path(__file__).parents[1] / "corpus"

H5_REFUSED = {
    "external_storage.h5": "'images' keeps its data in external file(s) /etc/passwd",
    "external_link.h5": "'images' is an external link to /images in other.h5",
    "virtual_dataset.h5": "'images' is a virtual dataset whose data comes from other.h5",
    "soft_link_loop.h5": "'images' is a soft link to /loop",
    "declares_61_gib.h5": "GiB of memory once decoded, but only",
    # which of the two depends on the memory of the machine
    "declares_more_than_stored.h5": "stores only part of it|GiB of memory once decoded",
    "never_written.h5": "'images' declares shape (4, 32, 32) but stores only part of it",
    "heatmaps_out_of_range.h5": "'heatmaps' holds values outside [0, 1] (from 5 to 5",
    "heatmaps_negative.h5": "'heatmaps' holds values outside [0, 1] (from -16",
    "points_as_strings.h5": "'points' has dtype |S4, expected floating-point",
    "points_infinite.h5": "'points' holds coordinates outside the 32×32 image or not finite in 4 samples",
    "present_as_strings.h5": "'present' has dtype |S3, expected 0/1 flags",
    "present_not_0_or_1.h5": "'present' holds values other than 0 and 1",
    "stems_as_numbers.h5": "'stems' has dtype int64, expected strings",
    "stems_declare_64_mib_each.h5": "'stems' declares names of 67,108,864 bytes each (at most 1024 are read)",
    "groups_as_floats.h5": "'groups' has dtype float32, expected strings",
    "zero_sized_images.h5": "image size 0×0 is not a positive multiple of 16",
    "images_is_a_group.h5": "'images' is a group, not a dataset",
}


@pytest.mark.parametrize("name", sorted(H5_REFUSED))
def test_crafted_hdf5_is_refused_in_one_line_without_reading_or_allocating(name: str) -> None:
    path = CORPUS / "h5" / name
    tracemalloc.start()
    try:
        with pytest.raises(GlintTrackError) as info:
            load_glint_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert any(expected in info.value.format_message() for expected in H5_REFUSED[name].split("|")), (
        info.value.format_message()
    )
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB allocated for a file refused from its metadata"
    assert "\n" not in info.value.format_message()
    result = CliRunner().invoke(main, ["inspect", str(path)])  # the CLI: exit 2, one line, no traceback
    assert result.exit_code == 2 and result.output.count("Error:") == 1 and "Traceback" not in result.output


def test_crafted_hdf5_stops_train_before_a_run_and_nothing_reaches_the_cache() -> None:
    fails_cleanly(
        ["train", "--h5", str(CORPUS / "h5" / "external_storage.h5"), *TINY],
        "keeps its data in external file(s) /etc/passwd",
    )
    assert not Path("runs").exists() and not Path("cache").exists()


def test_names_that_are_not_utf8_load_with_replacement_characters() -> None:
    data = load_glint_file(CORPUS / "h5" / "stems_not_utf8.h5")
    assert data.num_samples == 4 and all("\ufffd" in stem for stem in data.stems)
    result = CliRunner().invoke(main, ["inspect", str(CORPUS / "h5" / "stems_not_utf8.h5"), "--preview", "p.png"])
    assert result.exit_code == 0 and Path("p.png").is_file(), result.output


def test_inspect_lists_links_without_following_them(tmp_path: Path) -> None:
    path = tmp_path / "extra_link.h5"
    shutil.copy(CORPUS / "h5" / "other.h5", path)
    with h5py.File(path, "a") as f:
        f["notes"] = h5py.ExternalLink("/etc/passwd", "/x")  # not a dataset the trainer reads: listed, never opened
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0 and "an external link to /x in /etc/passwd (not followed)" in result.output, (
        result.output
    )


def test_a_damaged_cache_entry_is_rebuilt_with_a_warning(
    tiny_h5: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "c"
    images = load_glint_file(tiny_h5, cache).images.numpy().copy()  # a copy: the damage below cuts the mapped file
    entry = next(cache.iterdir())
    (entry / "images.npy").write_bytes(b"")  # what a full disk or a crash can leave
    again = load_glint_file(tiny_h5, cache)
    assert "is damaged" in caplog.text and not again.from_cache
    assert np.array_equal(again.images.numpy(), images)
    assert load_glint_file(tiny_h5, cache).from_cache  # rebuilt


def _pack(folder: Path, caplog: pytest.LogCaptureFixture) -> tuple[str, str]:
    result = CliRunner().invoke(main, ["pack", "--in-dir", str(folder), "--out", "out.h5", "--img-size", "32"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return result.output, caplog.text


# case → (samples packed, what the warning about crafted.json says)
LABELME = {
    "path_traversal": (1, "imagePath '../outside.png' is outside the input folder"),
    "absolute_path": (1, "imagePath '/etc/passwd' is outside the input folder"),
    "null": (1, "its JSON is null, not a labelme annotation"),
    "list": (1, "its JSON is a list, not a labelme annotation"),
    "shapes_not_a_list": (1, "its 'shapes' is a number, not a list"),
    "shape_not_an_object": (2, "shape 'g1' is not an object"),
    "nan_radius": (2, "has a centre or radius that is not a finite size within the image"),
    "huge_radius": (2, "has a centre or radius that is not a finite size within the image"),
    "points_not_numbers": (2, "not a centre and a rim point"),
    "point_outside_image": (2, "at (-50.0, 12.0) is outside the 32×32 image; dropped"),
    "bad_base64": (1, "its imageData is not base64"),
    "decompression_bomb": (1, "its image has more than the 67,108,864 pixels accepted"),
    "deep_json": (1, "its JSON is nested too deeply"),
    "not_utf8": (1, "not a JSON file"),
}


@pytest.mark.parametrize("case", sorted(LABELME))
def test_crafted_labelme_files_are_skipped_or_cleaned_with_a_warning(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    packed, warning = LABELME[case]
    output, log = _pack(CORPUS / "labelme" / case, caplog)
    assert f"packed {packed} samples" in output
    assert "crafted.json" in log and warning in log, log
    with h5py.File("out.h5") as f:
        assert np.isfinite(f["heatmaps"][()]).all() and f["heatmaps"][()].max() <= 1
        points = f["points"][()]
        assert ((points[..., 0] >= 0) & (points[..., 0] < 32) | np.isnan(points[..., 0])).all()


def test_a_path_traversal_never_packs_the_outside_image(caplog: pytest.LogCaptureFixture) -> None:
    _pack(CORPUS / "labelme" / "path_traversal", caplog)
    with h5py.File("out.h5") as f:
        assert [s.decode() for s in f["stems"][()]] == ["good"]


def test_sixteen_bit_images_are_scaled_not_clipped(caplog: pytest.LogCaptureFixture) -> None:
    _pack(CORPUS / "labelme" / "sixteen_bit", caplog)
    with h5py.File("out.h5") as f:
        stems = [s.decode() for s in f["stems"][()]]
        image = f["images"][stems.index("crafted")]
    assert (image == 255).mean() < 0.01 and 100 < image.mean() < 160  # a 12-bit ramp → the full 8-bit range


def test_an_embedded_image_packs() -> None:
    result = CliRunner().invoke(
        main, ["pack", "--in-dir", str(CORPUS / "labelme" / "embedded_image"), "--out", "out.h5"]
    )
    assert result.exit_code == 0 and "packed 1 samples with 1 glints" in result.output, result.output


CHECKPOINTS_REFUSED = {
    "empty.pth": "not a readable checkpoint (an empty file)",
    "truncated.pth": "not a readable checkpoint (no complete zip archive)",
    "bit_flipped.pth": "fails its CRC check, the file is damaged",
    "compressed_entries.pth": "is compressed or larger than the file",
    "legacy_format.pth": "saved in torch's format from before 1.6",
    "plain_pickle.pth": "a plain Python pickle, not a torch.save file",
    "model_state_is_a_tensor.pth": "its model_state_dict is a Tensor",
    "model_state_is_a_list.pth": "its model_state_dict is a list",
    "model_state_is_empty.pth": "its model_state_dict is empty",
    "model_larger_than_its_weights.pth": "its weights do not fit a glint UNet of 2 glints and width 20000",
    "train_args_is_a_list.pth": "its train_args is a list, not a dict",
    "train_args_wrong_types.pth": "its train_args has lr = 'fast', not float",
    "epoch_is_text.pth": "its epoch is 'abc', not a whole number",
    "epoch_negative.pth": "its epoch is -5, not a whole number ≥ 0",
    "optimizer_moments_wrong_shape.pth": "its optimizer state 'exp_avg' is a torch.float32 tensor of shape (9,)",
    "rng_wrong_types.pth": "its rng_state is not a random generator state",
    "metrics_wrong_types.pth": "its metrics is a list, not a dict",
    "trained_size_60000.pth": "its model_info says it was trained on [60000, 60000] images; a side must be a multiple",
}


@pytest.fixture(scope="module")
def two_glint_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data the corpus checkpoints (a 1-wide UNet for 2 glints) fit."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "two.h5", num_samples=16, size=32, num_glints=2, seed=3)


RESUME = ["--device", "cpu", "--batch-size", "8", "--val-split", "0.25", "--epochs", "3"]


@pytest.mark.parametrize("name", sorted(CHECKPOINTS_REFUSED))
def test_crafted_checkpoints_are_refused_before_a_run_exists(name: str, two_glint_h5: Path) -> None:
    fails_cleanly(
        ["train", "--h5", str(two_glint_h5), "--resume", str(CORPUS / "checkpoints" / name), *RESUME],
        CHECKPOINTS_REFUSED[name],
    )
    assert not Path("runs").exists() and not Path("mlruns").exists()
    assert not Path("mlflow.db").exists()  # a file refused before any store is opened (MLflow creates one on use)


@pytest.mark.parametrize("name", ["valid.pth", "with_optimizer.pth"])
def test_the_corpus_checkpoints_that_are_sound_resume(name: str, two_glint_h5: Path) -> None:
    result = CliRunner().invoke(
        main, ["train", "--h5", str(two_glint_h5), "--resume", str(CORPUS / "checkpoints" / name), *RESUME]
    )
    assert result.exit_code == 0, result.output


def test_evaluate_and_predict_refuse_crafted_checkpoints_in_one_line(two_glint_h5: Path) -> None:
    model = str(CORPUS / "checkpoints" / "model_larger_than_its_weights.pth")
    fails_cleanly(["evaluate", "--model", model, "--h5", str(two_glint_h5)], "do not fit a glint UNet")
    fails_cleanly(
        ["predict", "--model", str(CORPUS / "checkpoints" / "epoch_negative.pth"), str(two_glint_h5), "--out", "p.csv"],
        "its epoch is -5",
    )


def test_a_filter_this_installation_lacks_is_one_line(tiny_h5: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine whose h5py was built without a filter the file uses (the demo file is gzip-compressed)."""
    monkeypatch.setattr(h5py.h5z, "filter_avail", lambda code: code != h5py.h5z.FILTER_DEFLATE)
    with pytest.raises(
        GlintTrackError, match=r"'images' is compressed with HDF5 filter 1 \(deflate\), which this installation cannot"
    ):
        load_glint_file(tiny_h5)


@pytest.mark.timeout(60)  # a FIFO read would block for ever
def test_pack_reads_only_regular_files_inside_the_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A JSON that is a link out of the folder (its embedded image would be packed), a link to a device, a FIFO
    (a read would hang): each skipped with its reason, from its metadata; the folder's own file packs."""
    folder = tmp_path / "ann"
    shutil.copytree(CORPUS / "labelme" / "embedded_image", folder)
    outside = tmp_path / "outside"
    shutil.copytree(CORPUS / "labelme" / "embedded_image", outside)
    (folder / "out_link.json").symlink_to(next(outside.glob("*.json")))
    (folder / "zero.json").symlink_to("/dev/zero")
    os.mkfifo(folder / "fifo.json")
    (folder / "news\nline.json").symlink_to("/dev/zero")  # a name that would forge a log line
    output, log = _pack(folder, caplog)
    assert "packed 1 samples" in output
    assert "out_link.json: is a link to a file outside the input folder" in log
    assert "zero.json: is a link to a file outside the input folder" in log
    assert "fifo.json: is not a regular file" in log
    shown = [log_formatter().format(record) for record in caplog.records]  # as the terminal and training.log show them
    assert any("news\\nline.json" in line for line in shown) and not any("\n" in line for line in shown)


def test_a_data_file_that_is_a_pipe_or_a_link_loop_is_named_as_such(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.h5")
    (tmp_path / "a.h5").symlink_to(tmp_path / "b.h5")
    (tmp_path / "b.h5").symlink_to(tmp_path / "a.h5")
    fails_cleanly(["inspect", str(tmp_path / "pipe.h5")], "pipe.h5: is not a regular file (a pipe or a device)")
    fails_cleanly(["train", "--h5", str(tmp_path / "a.h5"), *TINY], "a.h5: is a link that leads nowhere")


def test_a_file_with_thousands_of_bad_shapes_gets_a_few_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """300,001 duplicate shapes printed 300,001 warnings (43 s): a file gets five, then their count."""
    folder = tmp_path / "ann"
    shutil.copytree(CORPUS / "labelme" / "embedded_image", folder)
    path = next(folder.glob("*.json"))
    record = json.loads(path.read_text())
    shape = {"label": "g1", "points": [[10, 10], [11, 10]], "shape_type": "circle"}
    record["shapes"] = [shape] * 2000
    path.write_text(json.dumps(record))
    output, _ = _pack(folder, caplog)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "packed 1 samples" in output and len(warnings) == 6, warnings
    assert warnings[-1].endswith("1994 more such warnings")
