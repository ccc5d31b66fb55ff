"""gzip chunks inflated in threads: the same arrays as h5py, and anything else (other layouts, damaged or crafted
chunks) left to h5py, whose checks and errors then apply unchanged."""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from glint_track.data.chunks import DamagedChunk, read_gzip_chunks
from glint_track.data.glint_file import load_glint_file
from glint_track.data.synth import write_synthetic
from glint_track.errors import GlintTrackError

CORPUS = Path(__file__).parents[1] / "corpus" / "h5"


def test_inflated_in_threads_as_h5py_reads_them_edge_chunks_and_byte_orders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset(
            "u8", data=rng.integers(0, 255, (5, 40, 24), dtype=np.uint8), chunks=(2, 16, 16), compression="gzip"
        )
        f.create_dataset("f16be", data=rng.random((7, 3, 9)).astype(">f2"), chunks=(3, 3, 4), compression="gzip")
    with h5py.File(tmp_path / "a.h5", "r") as f:
        for name in ("u8", "f16be"):
            threaded = read_gzip_chunks(f[name], workers=3)
            assert threaded is not None and threaded.dtype == f[name].dtype
            assert np.array_equal(threaded, f[name][()]), name


def test_other_layouts_are_left_to_h5py(tmp_path: Path) -> None:
    data = np.arange(4 * 16 * 16, dtype=np.uint8).reshape(4, 16, 16)
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f.create_dataset("shuffled", data=data, chunks=(1, 16, 16), compression="gzip", shuffle=True)
        f.create_dataset("lzf", data=data, chunks=(1, 16, 16), compression="lzf")
        f.create_dataset("contiguous", data=data)
        f.create_dataset("partly_written", shape=(4, 16, 16), dtype=np.uint8, chunks=(1, 16, 16), compression="gzip")
        f["partly_written"][0] = data[0]
        f.create_dataset("one_unfiltered", data=data, chunks=(1, 16, 16), compression="gzip")
        f["one_unfiltered"].id.write_direct_chunk((2, 0, 0), data[2].tobytes(), filter_mask=1)  # gzip skipped
    with h5py.File(tmp_path / "b.h5", "r") as f:
        assert all(read_gzip_chunks(f[name]) is None for name in f)
        assert np.array_equal(f["one_unfiltered"][()], data)  # a valid file, which h5py reads


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        (b"not zlib at all", "does not inflate"),
        (zlib.compress(bytes(32 * 32 * 4)), "inflates to more than the 1024 it declares"),  # never inflated past it
        (zlib.compress(bytes(10)), "inflates to 10 bytes, not the 1024 it declares"),  # h5py pads it with garbage
        (zlib.compress(bytes(32 * 32))[:-6], "bytes, not the 1024 it declares"),  # cut off before its end
    ],
    ids=["garbage", "bomb", "short", "truncated"],
)
def test_a_damaged_or_crafted_chunk_is_refused_in_one_line(tmp_path: Path, stored: bytes, problem: str) -> None:
    path = write_synthetic(tmp_path / "s.h5", num_samples=4, size=32, num_glints=2)
    with h5py.File(path, "r+") as f:
        assert f["images"].chunks == (1, 32, 32)
        f["images"].id.write_direct_chunk((1, 0, 0), stored)
    with h5py.File(path, "r") as f, pytest.raises(DamagedChunk):
        read_gzip_chunks(f["images"])
    with pytest.raises(GlintTrackError) as info:
        load_glint_file(path)
    message = info.value.format_message()
    assert "cannot be read (chunk (1, 0, 0) of '/images' " in message and "truncated or damaged" in message
    assert problem in message and "\n" not in message


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.h5")))
def test_the_crafted_corpus_loads_or_fails_as_with_h5py_alone(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = _outcome(CORPUS / name)
    monkeypatch.setattr("glint_track.data.glint_file.read_gzip_chunks", lambda dataset: None)
    assert outcome == _outcome(CORPUS / name)


def _outcome(path: Path) -> str | tuple[bytes, bytes]:
    try:
        data = load_glint_file(path)
    except GlintTrackError as e:
        return e.format_message()
    return data.images.numpy().tobytes(), data.heatmaps.numpy().tobytes()
