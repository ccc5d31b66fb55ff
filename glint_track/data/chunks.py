"""A gzip-compressed HDF5 dataset read with every core: h5py decompresses one chunk at a time under its global lock,
while here its chunks are fetched as stored and inflated in threads (zlib lets go of the GIL). A first run on a
file waits for this (a 4,096-image file decoded in ~6 s on one core, see docs/benchmarks.md).

Only the plain layout glint files have (pack and synth write it: gzip alone, every chunk written) is read this way;
anything else is left to h5py. Each chunk must inflate to exactly the size its dataset declares (HDF5 stores edge
chunks whole): h5py hands back a short chunk padded with whatever memory held, so a damaged chunk is refused here
instead. Nothing is allocated beyond the dataset's size (h5check bounds it first), and a chunk is never inflated
past its declared size.
"""

from __future__ import annotations

import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np


class DamagedChunk(OSError):
    """A chunk that does not inflate to what its dataset declares: the file is damaged or crafted."""


def read_gzip_chunks(dataset: h5py.Dataset, workers: int | None = None) -> np.ndarray | None:
    """The whole dataset, or None where it is not a plainly gzip-chunked one (h5py reads it then); DamagedChunk
    (an OSError, as h5py's read errors are) where a chunk is not what the dataset declares."""
    if not hasattr(os, "pread") or not _plain_gzip(dataset):  # os.pread: not on Windows
        return None
    chunks = _chunk_index(dataset)
    if chunks is None:
        return None
    out = np.empty(dataset.shape, dataset.dtype)
    workers = workers or min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    fd = os.open(dataset.file.filename, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="inflate") as pool:
            shares = [chunks[i :: workers * 4] for i in range(workers * 4)]
            name, chunk = dataset.name, dataset.chunks  # asked here: the threads make no h5py call
            for _ in pool.map(lambda share: _inflate(fd, share, out, chunk, name), shares):
                pass  # a damaged chunk raises here
            return out
    finally:
        os.close(fd)


def _chunk_index(dataset: h5py.Dataset) -> list[tuple[tuple[int, ...], int, int]] | None:
    """(offset in the dataset, byte offset in the file, stored size) of each chunk; None when some were never
    written (they read as the fill value) or stored without their filter (HDF5 skips an optional filter that
    fails): h5py knows how to read those. Chunks off the grid, twice on it or outside the file are refused."""
    shape, chunk = dataset.shape, dataset.chunks
    if not hasattr(dataset.id, "chunk_iter"):  # HDF5 before 1.12.3: one lookup per chunk costs more than it saves
        return None
    found: list = []
    dataset.id.chunk_iter(found.append)
    if len(found) != math.prod(math.ceil(s / c) for s, c in zip(shape, chunk)) or any(i.filter_mask for i in found):
        return None
    size = os.path.getsize(dataset.file.filename)
    index, seen = [], set()
    for info in found:
        offset = tuple(info.chunk_offset)
        if offset in seen or any(o % c or o >= s for o, c, s in zip(offset, chunk, shape)):
            raise DamagedChunk(f"the chunk index of {dataset.name!r} lists chunk {offset} twice or off its grid")
        if info.byte_offset is None or info.byte_offset + info.size > size:
            raise DamagedChunk(f"chunk {offset} of {dataset.name!r} lies beyond the end of the file")
        seen.add(offset)
        index.append((offset, info.byte_offset, info.size))
    return index


def _inflate(
    fd: int, share: list[tuple[tuple[int, ...], int, int]], out: np.ndarray, chunk: tuple[int, ...], name: str
) -> None:
    """Read and inflate these chunks of dataset `name` into `out`; DamagedChunk at the first that is not exactly a
    whole chunk."""
    chunk_bytes = math.prod(chunk) * out.dtype.itemsize
    for offset, at, stored in share:
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(os.pread(fd, stored, at), chunk_bytes)
        except zlib.error as e:
            raise DamagedChunk(f"chunk {offset} of {name!r} does not inflate ({e})") from e
        if len(raw) != chunk_bytes or not inflater.eof or inflater.unconsumed_tail:
            size = "more than" if len(raw) == chunk_bytes else f"{len(raw)} bytes, not"
            raise DamagedChunk(f"chunk {offset} of {name!r} inflates to {size} the {chunk_bytes} it declares")
        block = np.frombuffer(raw, out.dtype).reshape(chunk)
        inside = tuple(slice(0, min(c, s - o)) for c, s, o in zip(chunk, out.shape, offset))
        out[tuple(slice(o, o + part.stop) for o, part in zip(offset, inside))] = block[inside]


def _plain_gzip(dataset: h5py.Dataset) -> bool:
    """Chunked, gzip alone (no shuffle, checksum or scale-offset), fixed-size numbers."""
    return (
        dataset.chunks is not None
        and dataset.compression == "gzip"
        and dataset.id.get_create_plist().get_nfilters() == 1
        and dataset.dtype.kind in "uif"
    )
