"""The HDF5 reader: old layouts load, the split is fixed by the seed, and every bad file gets a one-line fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from glint_track.data.batches import make_batches, split_indices
from glint_track.data.glint_file import load_glint_file
from glint_track.data.heatmaps import glints_of, render_heatmaps
from glint_track.errors import GlintTrackError


def write_h5(path: Path, n: int = 6, size: int = 32, channels: int = 3, hm: int | None = None, **overrides) -> Path:
    hm = size // 4 if hm is None else hm
    arrays = {
        "images": np.random.default_rng(0).integers(0, 255, (n, size, size), dtype=np.uint8),
        "heatmaps": np.zeros((n, channels, hm, hm), np.float16),
    }
    arrays.update(overrides)
    with h5py.File(path, "w") as f:
        for name, arr in arrays.items():
            if arr is not None:
                f.create_dataset(name, data=arr)
    return path


def test_synthetic_file_loads_with_its_channel_count(tiny_h5: Path) -> None:
    data = load_glint_file(tiny_h5)
    assert data.num_samples == 32 and data.num_glints == 4 and data.image_size == (32, 32)
    assert data.heatmaps.shape == (32, 4, 8, 8)
    assert data.present is not None and data.stems[0] == "synth_000000"
    assert data.attrs["num_classes"] == 4 and len(data.digest) == 64
    # every present glint has a heat-map peak, every absent one has none
    peaks = data.heatmaps.float().amax(dim=(2, 3)) > 0.1
    assert (peaks == data.present.bool()).all()


def test_old_file_without_optional_parts_and_float32_heatmaps(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "old.h5", heatmaps=np.full((6, 8, 8, 8), 0.5, np.float32))
    data = load_glint_file(path)
    assert data.present is None and data.stems is None and data.attrs == {}
    assert data.num_glints == 8 and data.heatmaps.dtype.is_floating_point


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"images": None}, "dataset 'images' is missing"),
        ({"heatmaps": None}, "dataset 'heatmaps' is missing"),
        ({"images": np.zeros((6, 32, 32, 1), np.uint8)}, "expected N×H×W"),
        ({"heatmaps": np.zeros((6, 8, 8), np.float16)}, "expected N×C×h×w"),
        ({"images": np.zeros((6, 32, 32), np.float32)}, "expected uint8"),
        ({"heatmaps": np.zeros((6, 3, 8, 8), np.int32)}, "expected float16 or float32"),
        ({"heatmaps": np.zeros((5, 3, 8, 8), np.float16)}, "'images' has 6 samples but 'heatmaps' has 5"),
        ({"heatmaps": np.zeros((6, 3, 16, 16), np.float16)}, "heat-maps are 16×16 but images are 32×32"),
        (
            {"images": np.zeros((0, 32, 32), np.uint8), "heatmaps": np.zeros((0, 3, 8, 8), np.float16)},
            "holds no samples",
        ),
        ({"heatmaps": np.full((6, 3, 8, 8), np.nan, np.float16)}, "NaN or infinite values in 6 samples"),
        ({"present": np.zeros((6, 2), np.uint8)}, "'present' has shape"),
        ({"heatmaps": np.zeros((6, 3, 8, 8), np.float16)}, "no glint is annotated in any sample"),
    ],
)
def test_bad_layouts_name_the_problem_and_the_fix(tmp_path: Path, overrides: dict, message: str) -> None:
    path = write_h5(tmp_path / "bad.h5", **overrides)
    with pytest.raises(GlintTrackError, match=message) as info:
        load_glint_file(path)
    text = info.value.format_message()
    assert "\n" not in text and str(path) in text and ";" in text  # one line: problem; fix


def test_missing_not_hdf5_and_truncated_files(tmp_path: Path, tiny_h5: Path) -> None:
    with pytest.raises(GlintTrackError, match="no such file.*glint-track synth"):
        load_glint_file(tmp_path / "nope.h5")
    (tmp_path / "notes.h5").write_text("not hdf5")
    with pytest.raises(GlintTrackError, match="is not an HDF5 file"):
        load_glint_file(tmp_path / "notes.h5")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(tiny_h5.read_bytes()[: tiny_h5.stat().st_size // 2])
    with pytest.raises(GlintTrackError, match="truncated|not an HDF5"):
        load_glint_file(truncated)


def test_a_file_another_process_is_writing_is_reported_locked_not_damaged(tiny_h5: Path) -> None:
    holder = "import h5py, sys; f = h5py.File(sys.argv[1], 'a'); print('open', flush=True); sys.stdin.read()"
    with subprocess.Popen(
        [sys.executable, "-c", holder, str(tiny_h5)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as writer:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(GlintTrackError, match="is locked: another program has it open for writing.*then run again"):
            load_glint_file(tiny_h5)
        writer.stdin.close()
    assert load_glint_file(tiny_h5).num_samples > 0  # the same file, once the writer let go


def test_split_is_deterministic_disjoint_and_complete() -> None:
    train_a, val_a = split_indices(100, 0.2, seed=7)
    train_b, val_b = split_indices(100, 0.2, seed=7)
    assert (train_a == train_b).all() and (val_a == val_b).all()
    assert len(val_a) == 20 and not set(train_a) & set(val_a) and len(set(train_a) | set(val_a)) == 100
    assert not np.array_equal(split_indices(100, 0.2, seed=8)[1], val_a)
    with pytest.raises(GlintTrackError, match="val-split"):
        split_indices(3, 0.1, seed=0)


@pytest.mark.parametrize("resident", [True, False])
def test_batches_are_scaled_and_reshuffled_per_epoch_identically_by_both_loaders(tiny_h5: Path, resident: bool) -> None:
    data = load_glint_file(tiny_h5)
    indices = np.arange(4, 32)
    batches = make_batches(
        data, indices, 8, shuffle=True, seed=3, device=torch.device("cpu"), num_workers=0, resident=resident
    )
    assert len(batches) == 4
    assert len(batches) == 4
    images, heatmaps, index = next(iter(batches))
    assert index.shape == (8,) and set(index.tolist()) <= set(indices.tolist())
    assert images.shape == (8, 1, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert heatmaps.dtype == torch.float32 and heatmaps.shape == (8, 4, 8, 8)
    batches.set_epoch(1)
    first = [h for _, h, _ in batches]
    assert all(torch.equal(a, b) for a, b in zip(first, [h for _, h, _ in batches]))  # same epoch, same order
    batches.set_epoch(2)
    assert not torch.equal(first[0], next(iter(batches))[1])
    # the order depends only on (seed, epoch): both loaders serve the same batches
    other = make_batches(
        data, indices, 8, shuffle=True, seed=3, device=torch.device("cpu"), num_workers=0, resident=not resident
    )
    other.set_epoch(1)
    assert all(torch.equal(a, h) for a, (_, h, _) in zip(first, other))


def test_heatmap_matches_the_packer_definition() -> None:
    points = np.array([[12.0, 20.0], [np.nan, np.nan]], np.float32)
    maps = render_heatmaps(glints_of(points, np.array([1.0, 1.0])), 2, (32, 32), (8, 8))
    assert maps.shape == (2, 8, 8) and maps[1].max() == 0
    assert np.unravel_index(maps[0].argmax(), (8, 8)) == (5, 3)  # (y, x) // 4
    assert 0 < maps[0].max() <= 1


def test_cache_is_shared_memory_mapped_and_reused(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    cache = tmp_path / "cache"
    first = load_glint_file(tiny_h5, cache)
    assert not first.from_cache and (cache / first.digest / "images.npy").is_file()
    assert list(cache.glob(".*")) == []  # no temp folder left behind
    maps = Path("/proc/self/maps").read_text()  # the arrays are the cache files, mapped, not copies
    assert str(cache / first.digest / "images.npy") in maps and str(cache / first.digest / "heatmaps.npy") in maps
    # a second process maps the same files and never decodes the HDF5 arrays
    code = (
        "import sys, glint_track.data.glint_file as d\n"
        "d._decode = lambda p: sys.exit('decoded again')\n"
        f"x = d.load_glint_file({str(tiny_h5)!r}, __import__('pathlib').Path({str(cache)!r}))\n"
        "print(x.from_cache, x.digest, int(x.heatmaps.float().sum() > 0))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out == ["True", first.digest, "1"]
    plain = load_glint_file(tiny_h5)
    assert torch.equal(plain.images, first.images) and torch.equal(plain.heatmaps, first.heatmaps)


def test_unwritable_cache_only_warns(tiny_h5: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    data = load_glint_file(tiny_h5, blocker / "cache")
    assert data.num_samples == 32 and not data.from_cache and "continuing without the cache" in caplog.text


def test_four_processes_released_together_build_the_cache_once_and_all_read_it(tmp_path: Path) -> None:
    """A real race: four processes wait at a barrier (a file), then load the same file into one empty cache
    at the same moment. Each gets the right arrays, one complete entry remains, no temp folder is left."""
    import subprocess
    import sys
    import time

    from glint_track.data.synth import write_synthetic

    h5 = write_synthetic(tmp_path / "race.h5", num_samples=256, size=64, num_glints=4, seed=4)  # ~10 MB to write
    cache, go = tmp_path / "cache", tmp_path / "go"
    code = (
        "import sys, time, pathlib, glint_track.data.glint_file as d\n"
        f"go = pathlib.Path({str(go)!r})\n"
        "while not go.exists(): time.sleep(0.001)\n"
        f"x = d.load_glint_file({str(h5)!r}, pathlib.Path({str(cache)!r}))\n"
        "print(x.digest, float(x.images.double().sum()), float(x.heatmaps.double().sum()))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    time.sleep(8)  # every process imported torch and waits at the barrier
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    plain = load_glint_file(h5)
    expected = f"{plain.digest} {float(plain.images.double().sum())} {float(plain.heatmaps.double().sum())}"
    assert [out.strip() for out, _ in outputs] == [expected] * 4
    assert [p.name for p in cache.iterdir()] == [plain.digest]  # one entry, no temp folder left
    assert load_glint_file(h5, cache).from_cache
