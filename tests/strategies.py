"""Hypothesis strategies for the three kinds of file glint-track takes from strangers, and the property
each must keep: every input ends in success or the project's one-line error (GlintTrackError), never
another exception, never memory beyond a small multiple of the real data.

Used by tests/data/test_fuzz.py (a few hundred examples per target in CI) and benchmarks/fuzz.py (10,000+).
Each strategy draws a *spec* (plain data, shown by Hypothesis when an example fails) that a writer turns
into files; the targets run the same code the CLI runs on such a file, up to where a run would start.
"""

from __future__ import annotations

import base64
import copy
import functools
import io
import json
import math
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from hypothesis import strategies as st
from PIL import Image

from glint_track.errors import GlintTrackError

SIZE = 32  # image side of the valid case: small enough for thousands of examples on 2 CPU cores
GLINTS = 2

# -- HDF5 files ---------------------------------------------------------------------------------------

NAMES = ("images", "heatmaps", "present", "points", "stems")
#: How a dataset is stored: plain data, or one of the ways HDF5 lets bytes come from elsewhere or not at all.
STORAGE = (
    "data",
    "data",
    "data",
    "data",
    "gzip",
    "soft_link",
    "external_link",
    "external_storage",
    "virtual",
    "group",
    "declared_only",
)
DTYPES = ("right", "right", "right", "uint8", "int32", "float16", "float32", "float64", ">f4", "bool", "S4", "vlen_str")
#: Value patterns: in range, or each way a value can be wrong.
VALUES = ("valid", "valid", "valid", "zeros", "nan", "inf", "negative", "above_one", "huge", "sevens")


@st.composite
def h5_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid file's description with 0–3 faults, each in one dataset (a link or foreign storage, a dtype, a
    shape, values, or the dataset missing) and sometimes one in its geometry; none in about a third of the
    files, so that accepted files are trained on too."""
    n, size, glints = (
        draw(st.sampled_from([5, 7])),
        draw(st.sampled_from([SIZE, 16])),
        draw(st.sampled_from([GLINTS, 1])),
    )
    if draw(st.integers(0, 5)) == 0:  # a geometry fault: too few samples, a size the UNet cannot take, no glints
        n, size, glints = draw(
            st.sampled_from(
                [(0, SIZE, GLINTS), (1, SIZE, GLINTS), (2, SIZE, GLINTS), (5, 24, GLINTS), (5, 0, GLINTS), (5, SIZE, 0)]
            )
        )
    valid = {"storage": "data", "dtype": "right", "shape_change": None, "values": "valid", "declared": 1000}
    datasets = {name: dict(valid) for name in NAMES if name in ("images", "heatmaps") or draw(st.booleans())}
    choices = {
        "storage": st.sampled_from(STORAGE),
        "dtype": st.sampled_from(DTYPES),
        "shape_change": st.sampled_from(["rank", "first", "last"]),
        "values": st.sampled_from(VALUES),
    }
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        name, fault = draw(st.sampled_from(NAMES)), draw(st.sampled_from(["missing", *choices]))
        if fault == "missing":
            datasets.pop(name, None)
            continue
        datasets.setdefault(name, dict(valid))[fault] = draw(choices[fault])
        datasets[name]["declared"] = draw(st.sampled_from([10**3, 10**5, 4 * 10**6]))
    text = st.text(
        st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=20
    )  # what HDF5 stores
    attrs = draw(
        st.dictionaries(
            text.filter(bool),
            st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(), text, st.binary(max_size=8)),
            max_size=3,
        )
    )
    return {"n": n, "size": size, "glints": glints, "datasets": datasets, "attrs": attrs}


def _right(name: str, n: int, size: int, glints: int) -> tuple[tuple[int, ...], str]:
    return {
        "images": ((n, size, size), "uint8"),
        "heatmaps": ((n, glints, size // 4, size // 4), "float16"),
        "present": ((n, glints), "uint8"),
        "points": ((n, glints, 2), "float32"),
        "stems": ((n,), "vlen_str"),
    }[name]


def _values(shape: tuple[int, ...], dtype: str, pattern: str, rng: np.random.Generator) -> np.ndarray:
    if dtype in ("S4", "vlen_str"):
        words = [b"\xff\xfe", b"eye", "név".encode(), b"7"]
        flat = np.array(
            [words[i % len(words)] for i in range(math.prod(shape))], dtype=object if dtype == "vlen_str" else "S4"
        )
        return flat.reshape(shape)
    base = {
        "valid": rng.random(shape),
        "zeros": np.zeros(shape),
        "nan": np.full(shape, np.nan),
        "inf": np.full(shape, np.inf),
        "negative": -rng.random(shape) * 16,
        "above_one": 1 + rng.random(shape),
        "huge": np.full(shape, 1e30),
        "sevens": np.full(shape, 7.0),
    }[pattern]
    if dtype in ("uint8", "int32", "bool"):
        base = np.nan_to_num(base * (255 if dtype == "uint8" else 1), nan=0, posinf=0, neginf=0).clip(-1e9, 1e9)
    with np.errstate(over="ignore", invalid="ignore"):
        return base.astype(dtype)


def write_h5(spec: dict[str, Any], path: Path) -> None:
    """The file a spec describes, beside an `elsewhere.h5` its links and virtual datasets point into."""
    rng = np.random.default_rng(0)
    n, size, glints = spec["n"], spec["size"], spec["glints"]
    with h5py.File(path.with_name("elsewhere.h5"), "w") as other:
        other.create_dataset("x", data=np.full((n, size, size), 201, np.uint8))
    with h5py.File(path, "w") as f:
        for name, d in spec["datasets"].items():
            shape, right_dtype = _right(name, n, size, glints)
            dtype = right_dtype if d["dtype"] == "right" else d["dtype"]
            if d["shape_change"] == "rank":
                shape = (*shape, 1)
            elif d["shape_change"] and shape:
                i = 0 if d["shape_change"] == "first" else -1
                shape = tuple(s + 1 if j == (i % len(shape)) else s for j, s in enumerate(shape))
            _write_dataset(f, name, d, shape, dtype, rng, path)
        for key, value in spec["attrs"].items():
            f.attrs[key] = np.void(value or b"\x00") if isinstance(value, bytes) else value


def _write_dataset(
    f: h5py.File, name: str, d: dict[str, Any], shape: tuple[int, ...], dtype: str, rng: np.random.Generator, path: Path
) -> None:
    storage = d["storage"]
    h5_dtype = h5py.string_dtype() if dtype == "vlen_str" else dtype
    if storage == "soft_link":
        f[name] = h5py.SoftLink(f"/{name}")  # a loop onto itself
    elif storage == "external_link":
        f[name] = h5py.ExternalLink(path.with_name("elsewhere.h5").name, "/x")
    elif storage == "group":
        f.create_group(name)
    elif storage == "external_storage":
        f.create_dataset(
            name,
            shape=shape,
            dtype="uint8",
            external=[(str(path.with_name("elsewhere.h5")), 0, max(1, math.prod(shape)))],
        )
    elif storage == "virtual":
        layout = h5py.VirtualLayout(shape=shape, dtype="uint8")
        layout[...] = h5py.VirtualSource(path.with_name("elsewhere.h5").name, "x", shape=shape)
        f.create_virtual_dataset(name, layout)
    elif storage == "declared_only" and dtype not in ("S4", "vlen_str") and shape and all(shape[1:]):
        declared = (d["declared"], *shape[1:])  # gzip-chunked, nothing written: a few kB that declare up to gigabytes
        f.create_dataset(name, shape=declared, dtype=h5_dtype, chunks=(1, *shape[1:]), compression="gzip")
    else:
        values = _values(shape, dtype, d["values"], rng)
        f.create_dataset(
            name, data=values, dtype=h5_dtype, compression="gzip" if storage == "gzip" and values.size else None
        )


def declared_bytes(path: Path) -> int:
    """What the file's datasets declare, decoded (the real data the memory bound is a multiple of)."""
    total = 0
    with h5py.File(path, "r") as f:
        for name in NAMES:
            if isinstance(f.get(name, getlink=True), h5py.HardLink) and isinstance(f[name], h5py.Dataset):
                total += f[name].size * max(4, f[name].dtype.itemsize)
    return total


# -- labelme folders -----------------------------------------------------------------------------------

SENTINEL = 201  # the grey level of the image outside the folder: it must never be packed
NUMBERS = st.one_of(
    st.floats(-100, 100),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0, 31.0]),
    st.integers(-(10**6), 10**6),
)
JSON_JUNK = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def shapes(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON_JUNK)
    points = draw(
        st.one_of(
            st.lists(st.lists(NUMBERS | st.text(max_size=3) | st.none(), min_size=0, max_size=3), max_size=3),
            st.lists(st.tuples(st.floats(-8, 40), st.floats(-8, 40)).map(list), min_size=2, max_size=2),
        )
    )
    return {
        "label": draw(st.sampled_from(["g1", "g2", "g3", "g9", "g0", "g01", "x1", "", "g" + "9" * 40]) | st.integers()),
        "shape_type": draw(st.sampled_from(["circle", "circle", "circle", "point", "polygon", None])),
        "points": points,
    }


IMAGE_MODES = ("L", "L", "RGB", "RGBA", "P", "1", "I;16", "I", "F", "LA")
#: Where an annotation's image may be that must not be packed (labelme folders and COCO exports alike).
UNUSABLE_WHERE = ("outside_relative", "outside_absolute", "symlink_out", "missing", "garbage", "bomb")
IMAGE_WHERE = (
    *("beside",) * 3,
    *("image_path", "image_data") * 2,  # usable images more often than each way to fail
    *UNUSABLE_WHERE,
)


@st.composite
def labelme_specs(draw: st.DrawFn) -> dict[str, Any]:
    files = []
    for _ in range(draw(st.integers(1, 3))):
        files.append(
            {
                "json": draw(st.sampled_from(["labelme"] * 6 + ["junk", "null", "deep", "not_utf8"])),
                "shapes": draw(st.one_of(st.lists(shapes(), max_size=4), JSON_JUNK))
                if draw(st.integers(0, 5))
                else draw(JSON_JUNK),
                "image": draw(st.sampled_from(IMAGE_WHERE)),
                "mode": draw(st.sampled_from(IMAGE_MODES)),
                "size": (draw(st.sampled_from([1, 7, 16, 32, 48])), draw(st.sampled_from([1, 16, 32, 40]))),
                "level": draw(st.integers(0, 200)),
            }
        )
    return {
        "files": files,
        "img_size": draw(st.sampled_from([None, (32, 32), (16, 32)])),
        "num_glints": draw(st.integers(1, 4)),
    }


def _image_bytes(mode: str, size: tuple[int, int], level: int) -> bytes:
    h, w = size
    ramp = (np.arange(h * w).reshape(h, w) * 7 + level) % 250
    array = {
        "I;16": (ramp * 16).astype(np.uint16),
        "I": (ramp * 1000).astype(np.int32),
        "F": (ramp / 250).astype(np.float32),
    }.get(mode, ramp.astype(np.uint8))
    image = (
        Image.fromarray(array) if mode in ("I;16", "I", "F") else Image.fromarray(array.astype(np.uint8)).convert(mode)
    )
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode in ("I", "F") else "PNG")
    return buffer.getvalue()


def write_labelme(spec: dict[str, Any], folder: Path) -> None:
    """The annotation folder a spec describes, and an image outside it (grey level SENTINEL) that crafted
    imagePaths point at."""
    folder.mkdir(parents=True)
    outside = folder.parent / "outside.png"
    Image.fromarray(np.full((SIZE, SIZE), SENTINEL, np.uint8)).save(outside)
    for i, f in enumerate(spec["files"]):
        stem = f"f{i}"
        record: dict[str, Any] = {"shapes": f["shapes"], "imagePath": None, "imageData": None}
        pixels = _image_bytes(f["mode"], f["size"], f["level"])
        where = f["image"]
        if where == "beside":
            (folder / f"{stem}.png").write_bytes(pixels)
        elif where == "image_path":
            (folder / "img").mkdir(exist_ok=True)
            (folder / "img" / f"{stem}.png").write_bytes(pixels)
            record["imagePath"] = f"img/{stem}.png"
        elif where == "image_data":
            record["imageData"] = base64.b64encode(pixels).decode()
        elif where == "outside_relative":
            record["imagePath"] = "../outside.png"
        elif where == "outside_absolute":
            record["imagePath"] = str(outside)
        elif where == "symlink_out":
            (folder / f"{stem}.png").symlink_to(outside)
        elif where == "garbage":
            (folder / f"{stem}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + pixels[8:40])
        elif where == "bomb":
            record["imageData"] = base64.b64encode(_bomb_png()).decode()
        kind = f["json"]
        text = {
            "labelme": json.dumps(record),
            "junk": json.dumps(f["shapes"]),
            "null": "null",
            "deep": "[" * 50_000,
        }.get(kind)
        (folder / f"{stem}.json").write_bytes(text.encode() if text is not None else b'{"shapes": "\xff"}')


COCO_WHERE = (*("beside",) * 3, "subfolder", *UNUSABLE_WHERE)
GOOD_NAMES = (["g1", "g2", "g3"], ["g1", "g2"], ["g1", "pupil", "g2", "g3"], ["g2", "g1"])
KEYPOINT_NAMES = st.lists(st.sampled_from(["g1", "g2", "g3", "g0", "g9", "pupil", "", "g" + "9" * 40]), max_size=5)


@st.composite
def coco_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A COCO keypoints export as CVAT or Label Studio would write it, or one of the many ways it can be wrong."""
    names = draw(st.sampled_from(GOOD_NAMES)) if draw(st.integers(0, 2)) else draw(KEYPOINT_NAMES | JSON_JUNK)
    count = len(names) if isinstance(names, list) else 3
    images = []
    for _ in range(draw(st.integers(0, 3))):
        names_valid = draw(st.integers(0, 3)) > 0
        point = st.tuples(st.floats(-8, 40), st.floats(-8, 40), st.sampled_from([0, 1, 2, 2]))
        keypoints = (
            draw(st.lists(point, min_size=count, max_size=count) | st.lists(point, max_size=5))
            if names_valid
            else draw(st.lists(NUMBERS | st.text(max_size=3) | st.none(), max_size=12))
        )
        images.append(
            {
                "where": draw(st.sampled_from(COCO_WHERE)),
                "mode": draw(st.sampled_from(IMAGE_MODES)),
                "size": (draw(st.sampled_from([1, 16, 32])), draw(st.sampled_from([16, 32, 40]))),
                "level": draw(st.integers(0, 200)),
                "id": draw(st.integers(1, 3) | JSON_JUNK) if draw(st.integers(0, 5)) == 0 else None,
                "keypoints": keypoints if names_valid else draw(st.one_of(st.just(keypoints), JSON_JUNK)),
                "annotations": draw(st.integers(0, 2)),
            }
        )
    return {
        "json": draw(st.sampled_from(["coco"] * 6 + ["junk", "null", "deep", "not_utf8"])),
        "names": names,
        "images": images,
        "junk": draw(JSON_JUNK),
        "img_size": draw(st.sampled_from([None, (32, 32), (16, 32)])),
        "num_glints": draw(st.integers(1, 4)),
    }


def write_coco(spec: dict[str, Any], folder: Path) -> Path:
    """The export a spec describes (its images beside it, or not), and an image outside it (SENTINEL grey)."""
    folder.mkdir(parents=True)
    outside = folder.parent / "outside.png"
    Image.fromarray(np.full((SIZE, SIZE), SENTINEL, np.uint8)).save(outside)
    images, annotations = [], []
    for i, entry in enumerate(spec["images"]):
        name, where = f"f{i}.png", entry["where"]
        pixels = _image_bytes(entry["mode"], entry["size"], entry["level"])
        if where in ("beside", "subfolder"):
            name = f"p{i % 2}/{name}" if where == "subfolder" else name
            (folder / name).parent.mkdir(exist_ok=True)
            (folder / name).write_bytes(pixels)
        elif where == "outside_relative":
            name = "../outside.png"
        elif where == "outside_absolute":
            name = str(outside)
        elif where == "symlink_out":
            (folder / name).symlink_to(outside)
        elif where == "garbage":
            (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + pixels[8:40])
        elif where == "bomb":
            (folder / name).write_bytes(_bomb_png())
        image_id = entry["id"] if entry["id"] is not None else i + 1
        images.append({"id": image_id, "file_name": name})
        flat = (
            [v for point in entry["keypoints"] for v in point] if _triples(entry["keypoints"]) else entry["keypoints"]
        )
        annotations += [{"image_id": image_id, "category_id": 1, "keypoints": flat}] * entry["annotations"]
    record = {"images": images, "annotations": annotations, "categories": [{"id": 1, "keypoints": spec["names"]}]}
    text = {"coco": json.dumps(record), "junk": json.dumps(spec["junk"]), "null": "null", "deep": "[" * 50_000}
    path = folder / "coco.json"
    path.write_bytes(text[spec["json"]].encode() if spec["json"] in text else b'{"images": "\xff"}')
    return path


def _triples(keypoints: Any) -> bool:
    return isinstance(keypoints, list) and all(isinstance(p, tuple) for p in keypoints)


def _bomb_png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# -- checkpoints -----------------------------------------------------------------------------------------

TOP_FIELDS = (
    "epoch",
    "model_state_dict",
    "optimizer_state_dict",
    "train_args",
    "metrics",
    "best",
    "rng_state",
    "model_info",
    "format_version",
    "save_optimizer",
    "scaler_state_dict",
)
VALUE_ZOO = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.tuples(st.integers(), st.text(max_size=2)),
    st.builds(
        lambda shape, dtype: torch.zeros(shape, dtype=dtype),
        st.lists(st.integers(0, 4), max_size=3).map(tuple),
        st.sampled_from([torch.float32, torch.int64, torch.uint8, torch.bool]),
    ),
)
MUTATIONS = (
    "drop_field",
    "replace_field",
    "drop_weight",
    "reshape_weight",
    "retype_weight",
    "widen_model",
    "extra_weight",
    "moment_shape",
    "param_groups",
    "train_arg",
    "rng_part",
    "epoch",
)


@st.composite
def checkpoint_specs(draw: st.DrawFn) -> dict[str, Any]:
    mutations = draw(
        st.lists(
            st.tuples(st.sampled_from(MUTATIONS), st.sampled_from(TOP_FIELDS), VALUE_ZOO, st.integers(0, 10**6)),
            min_size=0,
            max_size=3,
        )
    )
    damage = draw(st.sampled_from([None] * 8 + ["truncate", "flip"]))
    return {"mutations": mutations, "damage": damage, "at": draw(st.floats(0, 1)), "optimizer": draw(st.booleans())}


@functools.cache
def _base_checkpoint(optimizer: bool) -> dict[str, Any]:
    """A real checkpoint of a 1-wide UNet for GLINTS glints (as training writes it)."""
    from glint_track.checkpoint.format import gather
    from glint_track.model import GlintUNet
    from glint_track.training.checkpointer import RNGState, TrainProgress

    torch.manual_seed(0)
    model = GlintUNet(GLINTS, 1)
    adam = torch.optim.Adam(model.parameters())
    model(torch.zeros(2, 1, SIZE, SIZE)).mean().backward()
    adam.step()
    progress = TrainProgress("val_loss", "min")
    progress.update(1, {"val_loss": 0.5, "train_loss": 0.6})
    parts = {"model": model, "optimizer": adam, "rng": RNGState(), "progress": progress}
    return gather(parts, {"lr": 1e-3, "epochs": 2, "base_channels": 1, "batch_size": 4}, save_optimizer=optimizer)


def base_checkpoint(optimizer: bool) -> dict[str, Any]:
    return copy.deepcopy(_base_checkpoint(optimizer))


def mutate(checkpoint: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint with the spec's mutations applied (each a no-op where it does not apply)."""
    for kind, field_name, value, k in spec["mutations"]:
        weights = checkpoint.get("model_state_dict")
        names = sorted(weights) if isinstance(weights, dict) else []
        name = names[k % len(names)] if names else None
        opt = checkpoint.get("optimizer_state_dict")
        if kind == "drop_field":
            checkpoint.pop(field_name, None)
        elif kind == "replace_field":
            checkpoint[field_name] = value
        elif name and kind == "drop_weight":
            del weights[name]
        elif name and kind == "reshape_weight" and isinstance(weights[name], torch.Tensor):
            weights[name] = weights[name].reshape(-1)[: max(1, weights[name].numel() - 1)]
        elif name and kind == "retype_weight" and isinstance(weights[name], torch.Tensor):
            weights[name] = weights[name].to(torch.int32)
        elif name and kind == "widen_model":
            weights["enc1.seq.0.weight"] = torch.zeros(1 + k % 50_000, 1, 3, 3)
        elif kind == "extra_weight" and isinstance(weights, dict):
            weights[f"extra.{k}"] = value if isinstance(value, torch.Tensor) else torch.zeros(1)
        elif kind == "moment_shape" and isinstance(opt, dict) and opt.get("state"):
            state = opt["state"][sorted(opt["state"])[k % len(opt["state"])]]
            state["exp_avg"] = value if not isinstance(value, torch.Tensor) else value.float()
        elif kind == "param_groups" and isinstance(opt, dict):
            opt["param_groups"] = value
        elif kind == "train_arg" and isinstance(checkpoint.get("train_args"), dict):
            keys = [
                "lr",
                "epochs",
                "batch_size",
                "seed",
                "loss",
                "optimizer",
                "precision",
                "base_channels",
                "val_split",
                "momentum",
                "weight_decay",
                "h5",
                "no_save_optimizer",
                "batch",
                "experiment",
                "threshold",
            ]
            checkpoint["train_args"][keys[k % len(keys)]] = value
        elif kind == "rng_part" and isinstance(checkpoint.get("rng_state"), dict):
            checkpoint["rng_state"][["torch", "numpy", "python", "cuda"][k % 4]] = value
        elif kind == "epoch":
            checkpoint["epoch"] = value
    return checkpoint


def write_checkpoint(spec: dict[str, Any], path: Path) -> None:
    torch.save(mutate(base_checkpoint(spec["optimizer"]), spec), path)
    data = bytearray(path.read_bytes())
    cut = int(spec["at"] * (len(data) - 1))
    if spec["damage"] == "truncate":
        path.write_bytes(bytes(data[:cut]))
    elif spec["damage"] == "flip":
        data[cut] ^= 0xFF
        path.write_bytes(bytes(data))


# -- the property ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    accepted: bool
    message: str  # the one-line error, or "" when accepted
    peak_bytes: int  # Python/numpy memory at its peak while the target ran (tracemalloc)


def run_target(target: Any, *args: Any, trace_memory: bool = True) -> Outcome:
    """Run a target; any exception but GlintTrackError fails the property. A GlintTrackError must be one line.
    `trace_memory` measures the peak with tracemalloc (it slows pure-Python code such as torch's unpickler)."""
    if trace_memory:
        tracemalloc.start()
    try:
        target(*args)
        outcome = Outcome(True, "", 0)
    except GlintTrackError as e:
        message = e.format_message()
        assert message and "\n" not in message, f"not a one-line error: {message!r}"
        outcome = Outcome(False, message, 0)
    finally:
        outcome_peak = tracemalloc.get_traced_memory()[1]
        if trace_memory:
            tracemalloc.stop()
    outcome.peak_bytes = outcome_peak
    return outcome


# -- the targets: what the CLI does with such a file, up to where a run would start -------------------------


def h5_target(path: Path) -> None:
    """`glint-track inspect --preview` and the first training step on the file."""
    from glint_track.data.batches import make_batches, split_indices
    from glint_track.data.inspect import describe, format_summary, preview
    from glint_track.model import GlintUNet
    from glint_track.training.losses import GlintLoss

    data, summary = describe(path)
    format_summary(summary)
    preview(data, path.with_suffix(".png"), count=4, tile=32)
    heatmaps = data.heatmaps.float()
    assert heatmaps.isfinite().all() and heatmaps.min() >= 0 and heatmaps.max() <= 1, (
        "accepted heat-maps outside [0, 1]"
    )
    train_idx, _ = split_indices(data.num_samples, 0.25, 0)
    images, targets, _ = next(
        iter(
            make_batches(
                data, train_idx, 4, shuffle=True, seed=0, device=torch.device("cpu"), num_workers=0, resident=True
            )
        )
    )
    GlintLoss("peak-bce")(GlintUNet(data.num_glints, 1)(images), targets)["loss"].backward()


def labelme_target(folder: Path, out: Path, spec: dict[str, Any]) -> None:
    """`glint-track pack`, then what it wrote: nothing from outside the folder, finite targets, points in the image."""
    from glint_track.data.pack import pack_labelme

    try:
        summary = pack_labelme(folder, out, num_glints=spec["num_glints"], img_size=spec["img_size"])
    except GlintTrackError:
        assert not out.exists(), "a refused pack left a file"
        raise
    assert summary.packed > 0
    _check_packed(out)


def coco_target(path: Path, out: Path, spec: dict[str, Any]) -> None:
    """`glint-track pack --coco`, then what it wrote, as for a labelme folder."""
    from glint_track.data.coco import pack_coco

    try:
        pack_coco(path, out, num_glints=spec["num_glints"], img_size=spec["img_size"])
    except GlintTrackError:
        assert not out.exists(), "a refused pack left a file"
        raise
    _check_packed(out)


def _check_packed(out: Path) -> None:
    with h5py.File(out, "r") as f:
        images, heatmaps, points = f["images"][()], f["heatmaps"][()], f["points"][()]
    assert len(images) > 0
    assert not any((image == SENTINEL).all() for image in images), "an image from outside the input folder was packed"
    assert np.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.max() <= 1
    H, W = images.shape[1:]
    x, y = points[..., 0], points[..., 1]
    assert (np.isnan(x) | ((x >= -0.5) & (x <= W - 0.5) & (y >= -0.5) & (y <= H - 0.5))).all(), (
        "a glint outside its image"
    )


def checkpoint_target(path: Path, data: Any) -> None:
    """`glint-track train --resume FILE` up to where its run would start, then one training step."""
    from glint_track.data.batches import make_batches
    from glint_track.engine import resolve_device
    from glint_track.training.config import TrainConfig
    from glint_track.training.epoch import TrainStep, train_epoch
    from glint_track.training.parts import training_parts
    from glint_track.training.resume import plan_resume

    cli = TrainConfig(h5=str(data.path), resume=str(path), device="cpu", epochs=10**7, batch_size=4, precision="fp32")
    plan = plan_resume(cli, frozenset({"h5", "resume", "device", "epochs", "batch_size", "precision"}))
    plan.cfg.validate()
    device = resolve_device(plan.cfg.device)
    parts, precision, loss_fn = training_parts(plan.cfg, data.num_glints, device, plan)
    batches = make_batches(
        data, np.arange(4), 4, shuffle=True, seed=plan.cfg.seed, device=device, num_workers=0, resident=True
    )
    train_epoch(TrainStep(parts["model"], loss_fn, precision, parts["optimizer"]), batches, desc="fuzz")


# -- one example of each target: write it, run it, check the memory bound (tests and benchmarks/fuzz.py) --------

MiB = 2**20


def check_h5(spec: dict[str, Any], folder: Path) -> Outcome:
    path = folder / "data.h5"
    write_h5(spec, path)
    outcome = run_target(h5_target, path)
    assert outcome.peak_bytes <= 4 * declared_bytes(path) + 16 * MiB, outcome
    return outcome


def check_labelme(spec: dict[str, Any], folder: Path) -> Outcome:
    write_labelme(spec, folder / "annotations")
    outcome = run_target(labelme_target, folder / "annotations", folder / "out.h5", spec)
    assert outcome.peak_bytes <= 32 * MiB, outcome
    return outcome


def check_coco(spec: dict[str, Any], folder: Path) -> Outcome:
    path = write_coco(spec, folder / "export")
    outcome = run_target(coco_target, path, folder / "out.h5", spec)
    assert outcome.peak_bytes <= 32 * MiB, outcome
    return outcome


def check_checkpoint(spec: dict[str, Any], folder: Path, data: Any) -> Outcome:
    write_checkpoint(spec, folder / "crafted.pth")
    return run_target(
        checkpoint_target, folder / "crafted.pth", data, trace_memory=False
    )  # torch's memory is not traced
