"""What a glint HDF5 file must be before any of its data is read.

A data file may come from anyone, and HDF5 lets a file take its bytes from elsewhere (external storage,
external links, virtual datasets), declare sizes it does not store and need filters this installation
lacks. Everything here looks at metadata only, so a crafted file is refused before a byte of it is read
or an array is allocated; each problem is one GlintTrackError that names the dataset and the fix.
(The HDF5 library's own parser is trusted: see docs/reliability.md, "Threat model".)
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import psutil

from glint_track.constants import OUTPUT_STRIDE, SIZE_MULTIPLE
from glint_track.errors import GlintTrackError

#: The datasets the trainer reads; anything else in the file is left alone (and never resolved).
REQUIRED = ("images", "heatmaps")
OPTIONAL = ("present", "points", "stems", "groups")
#: Text datasets (a name per sample) and the longest name each may declare, in bytes: names are short, and a
#: fixed-length string type of gigabytes would be allocated once per sample.
TEXT = ("stems", "groups")
MAX_NAME_BYTES = 1024
HEATMAP_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
REPACK = "re-pack it with `glint-track pack` or `glint-track synth`"
#: Decoding may use at most this share of the memory available now (the rest is for the model and batches).
MEMORY_SHARE = 0.8


def fail(path: Path, problem: str, fix: str) -> GlintTrackError:
    return GlintTrackError(f"{path}: {problem}; {fix}")


def _name(text: str | bytes) -> str:
    """A name from the file, as one line of at most 80 characters (names can hold anything, newlines too)."""
    text = " ".join((text.decode(errors="replace") if isinstance(text, bytes) else str(text)).split())
    return text if len(text) <= 80 else text[:77] + "..."


def open_datasets(path: Path, f: h5py.File) -> dict[str, h5py.Dataset]:
    """The trainer's datasets in `f`, each checked to be a plain dataset whose bytes are in this file."""
    found = {}
    for name in REQUIRED + OPTIONAL:
        link = f.get(name, getlink=True)  # the link itself: nothing is followed yet
        if link is None:
            if name in REQUIRED:
                names = [_name(n) for n in sorted(f.keys())[:8]] + (["…"] if len(f) > 8 else [])
                raise fail(path, f"dataset '{name}' is missing (found: {', '.join(names) or 'nothing'})", REPACK)
            continue
        if not isinstance(link, h5py.HardLink):
            raise fail(
                path,
                f"'{name}' is {describe_link(link)}, not data stored in the file",
                "a glint file holds its own data: copy it in with `h5repack`, or " + REPACK,
            )
        dataset = f[name]
        if not isinstance(dataset, h5py.Dataset):
            raise fail(path, f"'{name}' is a group, not a dataset", REPACK)
        _check_storage(path, name, dataset)
        found[name] = dataset
    return found


def describe_link(link: h5py.SoftLink | h5py.ExternalLink) -> str:
    if isinstance(link, h5py.ExternalLink):
        return f"an external link to {_name(link.path)} in {_name(link.filename)}"
    return f"a soft link to {_name(link.path)}"


def _check_storage(path: Path, name: str, dataset: h5py.Dataset) -> None:
    """The dataset's bytes come from this file, through filters this installation has."""
    if dataset.is_virtual:
        sources = sorted({_name(source.file_name) for source in dataset.virtual_sources()})
        raise fail(
            path,
            f"'{name}' is a virtual dataset whose data comes from {', '.join(sources)}",
            "glint files hold their own data: " + REPACK,
        )
    if dataset.external:
        files = ", ".join(_name(entry[0]) for entry in dataset.external[:4])
        raise fail(
            path, f"'{name}' keeps its data in external file(s) {files}", "glint files hold their own data: " + REPACK
        )
    plist = dataset.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code, _, _, filter_name = plist.get_filter(i)
        if not h5py.h5z.filter_avail(code):
            raise fail(
                path,
                f"'{name}' is compressed with HDF5 filter {code} ({_name(filter_name)}), "
                f"which this installation cannot read",
                "re-pack it with gzip compression (`glint-track pack --compression gzip`)",
            )


def check_stored(path: Path, datasets: dict[str, h5py.Dataset]) -> None:
    """Every fixed-size dataset stores as much as its shape declares: a file of a few kB that declares
    gigabytes (unwritten chunks read as zeros) is crafted or truncated, and refused before it is read."""
    for name, dataset in datasets.items():
        if dataset.dtype.kind != "O" and dataset.size:  # variable-length strings live in the file's heap
            _check_allocated(path, name, dataset)


def _check_allocated(path: Path, name: str, dataset: h5py.Dataset) -> None:
    if dataset.chunks:
        needed = math.prod(math.ceil(s / c) for s, c in zip(dataset.shape, dataset.chunks))
        stored = dataset.id.get_num_chunks()
    else:
        needed, stored = dataset.nbytes, dataset.id.get_storage_size()
    if stored < needed:
        raise fail(
            path,
            f"'{name}' declares shape {dataset.shape} but stores only part of it ({stored} of {needed} "
            f"{'chunks' if dataset.chunks else 'bytes'})",
            "the file is truncated or was not written by a packer: " + REPACK,
        )


def check_layout(path: Path, datasets: dict[str, h5py.Dataset]) -> None:
    """Names, ranks, dtypes and sizes, from the metadata alone."""
    _check_required(path, datasets["images"], datasets["heatmaps"])
    _check_sizes(path, datasets["images"].shape, datasets["heatmaps"].shape)
    _check_optional(path, datasets)


def _check_required(path: Path, images: h5py.Dataset, heatmaps: h5py.Dataset) -> None:
    """Ranks, dtypes and sample counts of the two datasets every file has."""
    if images.ndim != 3:
        raise fail(path, f"'images' has shape {images.shape}, expected N×H×W (3 dimensions)", REPACK)
    if heatmaps.ndim != 4:
        raise fail(path, f"'heatmaps' has shape {heatmaps.shape}, expected N×C×h×w (4 dimensions)", REPACK)
    if images.dtype != np.uint8:
        raise fail(path, f"'images' has dtype {images.dtype}, expected uint8 (0-255 grayscale)", REPACK)
    if heatmaps.dtype.newbyteorder("=") not in HEATMAP_DTYPES:
        raise fail(path, f"'heatmaps' has dtype {heatmaps.dtype}, expected float16 or float32", REPACK)
    n, n_hm = images.shape[0], heatmaps.shape[0]
    if n != n_hm:
        raise fail(path, f"'images' has {n} samples but 'heatmaps' has {n_hm}", "the file is inconsistent: " + REPACK)
    if n == 0:
        raise fail(path, "the file holds no samples", "pack at least a few annotated images into it")
    channels = heatmaps.shape[1]
    if channels == 0:
        raise fail(path, "'heatmaps' has 0 glint channels", REPACK)


def _check_sizes(path: Path, image_shape: tuple[int, ...], heatmap_shape: tuple[int, ...]) -> None:
    """Image sizes the UNet takes, and heat-maps of exactly 1/OUTPUT_STRIDE of them."""
    H, W = image_shape[1:]
    h, w = heatmap_shape[2:]
    if min(H, W) < SIZE_MULTIPLE or H % SIZE_MULTIPLE or W % SIZE_MULTIPLE:
        raise fail(
            path,
            f"image size {H}×{W} is not a positive multiple of {SIZE_MULTIPLE}, which the UNet's 4 poolings need",
            f"re-pack at a size divisible by {SIZE_MULTIPLE}",
        )
    if (h, w) != (H // OUTPUT_STRIDE, W // OUTPUT_STRIDE):
        raise fail(
            path,
            f"heat-maps are {h}×{w} but images are {H}×{W}; the model needs heat-maps of exactly "
            f"1/{OUTPUT_STRIDE} the image size ({H // OUTPUT_STRIDE}×{W // OUTPUT_STRIDE})",
            f"re-pack with --hm-size {H // OUTPUT_STRIDE}x{W // OUTPUT_STRIDE}",
        )


def _check_optional(path: Path, datasets: dict[str, h5py.Dataset]) -> None:
    """Shapes and dtypes of `present`, `points` and `stems`, where the file has them."""
    n, channels = datasets["heatmaps"].shape[:2]
    expected = {"present": (n, channels), "stems": (n,), "groups": (n,), "points": (n, channels, 2)}
    for name, shape in expected.items():
        if name in datasets and tuple(datasets[name].shape) != shape:
            raise fail(path, f"'{name}' has shape {datasets[name].shape}, expected {shape}", REPACK)
    kinds = {"present": ("b", "u", "i"), "points": ("f",)}
    for name, allowed in kinds.items():
        if name in datasets and datasets[name].dtype.kind not in allowed:
            what = "0/1 flags (uint8 or bool)" if name == "present" else "floating-point x, y"
            raise fail(path, f"'{name}' has dtype {datasets[name].dtype}, expected {what}", REPACK)
    for name in TEXT:
        if name in datasets:
            _check_text(path, name, datasets[name])


def _check_text(path: Path, name: str, dataset: h5py.Dataset) -> None:
    """A name per sample: strings (`groups` may hold integers, e.g. participant numbers), none longer than
    MAX_NAME_BYTES as declared."""
    dtype = dataset.dtype
    numbers = name == "groups" and dtype.kind in ("i", "u")
    if h5py.check_string_dtype(dtype) is None and not numbers:
        raise fail(path, f"'{name}' has dtype {dtype}, expected strings", REPACK)
    if dtype.kind != "O" and dtype.itemsize > MAX_NAME_BYTES:
        raise fail(
            path,
            f"'{name}' declares names of {dtype.itemsize:,} bytes each (at most {MAX_NAME_BYTES} are read)",
            "names are short: " + REPACK,
        )


def decoded_bytes(datasets: dict[str, h5py.Dataset]) -> int:
    """Memory the decoded arrays take (as load_glint_file keeps them: points as float32, present as uint8)."""
    itemsize = {"points": 4, "present": 1}
    return sum(ds.size * itemsize.get(name, ds.dtype.itemsize) for name, ds in datasets.items() if name not in TEXT)


def check_memory(path: Path, datasets: dict[str, h5py.Dataset]) -> None:
    """The declared arrays fit in the memory available now (decided before anything is allocated)."""
    needed, available = decoded_bytes(datasets), psutil.virtual_memory().available
    if needed > MEMORY_SHARE * available:
        n = datasets["images"].shape[0]
        raise fail(
            path,
            f"its {n:,} samples need {needed / 2**30:.1f} GiB of memory once decoded, but only "
            f"{available / 2**30:.1f} GiB is available",
            "use a machine with more memory or split the file",
        )
