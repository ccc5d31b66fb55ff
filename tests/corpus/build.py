"""Writes the seed corpus of crafted files: each one an attack or a damage seen in the wild (issue 14).

    python tests/corpus/build.py      # rewrites tests/corpus/{h5,labelme,checkpoints}

tests/data/test_untrusted.py says what glint-track must do with each; the Hypothesis strategies in
tests/strategies.py generate many more of the same kinds.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).parent
N, SIZE, GLINTS = 4, 32, 2


def _valid(f: h5py.File, n: int = N, **skip: bool) -> None:
    """A small valid glint file's datasets, except those named in `skip`."""
    rng = np.random.default_rng(0)
    heatmaps = np.zeros((n, GLINTS, SIZE // 4, SIZE // 4), np.float16)
    heatmaps[:, :, 3, 3] = 1.0
    arrays = {
        "images": rng.integers(0, 255, (n, SIZE, SIZE), dtype=np.uint8),
        "heatmaps": heatmaps,
        "present": np.ones((n, GLINTS), np.uint8),
        "points": np.full((n, GLINTS, 2), 13.5, np.float32),
    }
    for name, array in arrays.items():
        if not skip.get(name):
            f.create_dataset(name, data=array)


def build_h5(out: Path) -> None:
    out.mkdir(parents=True)
    with h5py.File(out / "other.h5", "w") as f:  # the target of the links and the virtual dataset
        _valid(f)
    with h5py.File(out / "external_storage.h5", "w") as f:  # images' bytes come from /etc/passwd
        _valid(f, images=True)
        f.create_dataset(
            "images", shape=(N, SIZE, SIZE), dtype=np.uint8, external=[("/etc/passwd", 0, N * SIZE * SIZE)]
        )
    with h5py.File(out / "external_link.h5", "w") as f:
        _valid(f, images=True)
        f["images"] = h5py.ExternalLink("other.h5", "/images")
    with h5py.File(out / "virtual_dataset.h5", "w") as f:
        _valid(f, images=True)
        layout = h5py.VirtualLayout(shape=(N, SIZE, SIZE), dtype=np.uint8)
        layout[:] = h5py.VirtualSource("other.h5", "images", shape=(N, SIZE, SIZE))
        f.create_virtual_dataset("images", layout)
    with h5py.File(out / "soft_link_loop.h5", "w") as f:
        _valid(f, images=True)
        f["images"] = h5py.SoftLink("/loop")
        f["loop"] = h5py.SoftLink("/images")
    with h5py.File(out / "declares_61_gib.h5", "w") as f:  # 4,000,000 × 128²: a few kB on disk
        f.create_dataset(
            "images", shape=(4_000_000, 128, 128), dtype=np.uint8, chunks=(1, 128, 128), compression="gzip"
        )
        f.create_dataset(
            "heatmaps",
            shape=(4_000_000, GLINTS, 32, 32),
            dtype=np.float16,
            chunks=(1, GLINTS, 32, 32),
            compression="gzip",
        )
    with h5py.File(out / "declares_more_than_stored.h5", "w") as f:  # 250,000 × 64², one chunk written
        f.create_dataset("images", shape=(250_000, 64, 64), dtype=np.uint8, chunks=(1, 64, 64), compression="gzip")
        f.create_dataset(
            "heatmaps",
            shape=(250_000, GLINTS, 16, 16),
            dtype=np.float16,
            chunks=(1, GLINTS, 16, 16),
            compression="gzip",
        )
        f["images"][0] = 1
    with h5py.File(out / "never_written.h5", "w") as f:  # contiguous datasets with no storage allocated
        f.create_dataset("images", shape=(N, SIZE, SIZE), dtype=np.uint8)
        f.create_dataset("heatmaps", shape=(N, GLINTS, SIZE // 4, SIZE // 4), dtype=np.float16)
    with h5py.File(out / "heatmaps_out_of_range.h5", "w") as f:
        _valid(f, heatmaps=True)
        f.create_dataset("heatmaps", data=np.full((N, GLINTS, SIZE // 4, SIZE // 4), 5.0, np.float16))
    with h5py.File(out / "heatmaps_negative.h5", "w") as f:
        _valid(f, heatmaps=True)
        f.create_dataset("heatmaps", data=np.full((N, GLINTS, SIZE // 4, SIZE // 4), -16.0, np.float32))
    with h5py.File(out / "points_as_strings.h5", "w") as f:
        _valid(f, points=True)
        f.create_dataset("points", data=np.full((N, GLINTS, 2), b"13.5"))
    with h5py.File(out / "points_infinite.h5", "w") as f:
        _valid(f, points=True)
        f.create_dataset("points", data=np.full((N, GLINTS, 2), np.inf, np.float32))
    with h5py.File(out / "present_as_strings.h5", "w") as f:
        _valid(f, present=True)
        f.create_dataset("present", data=np.full((N, GLINTS), b"yes"))
    with h5py.File(out / "present_not_0_or_1.h5", "w") as f:
        _valid(f, present=True)
        f.create_dataset("present", data=np.full((N, GLINTS), 7, np.int32))
    with h5py.File(out / "stems_not_utf8.h5", "w") as f:  # loads: the names are shown with replacement characters
        _valid(f)
        f.create_dataset(
            "stems",
            data=np.array([b"\xff\xfe%d" % i for i in range(N)], dtype=object),
            dtype=h5py.string_dtype("ascii"),
        )
    with h5py.File(out / "stems_as_numbers.h5", "w") as f:
        _valid(f)
        f.create_dataset("stems", data=np.arange(N))
    with h5py.File(out / "stems_declare_64_mib_each.h5", "w") as f:  # 256 MiB of names declared, none written
        _valid(f)
        f.create_dataset("stems", shape=(N,), dtype="S67108864")
    with h5py.File(out / "groups_as_floats.h5", "w") as f:
        _valid(f)
        f.create_dataset("groups", data=np.linspace(0, 1, N, dtype=np.float32))
    with h5py.File(out / "zero_sized_images.h5", "w") as f:
        f.create_dataset("images", data=np.zeros((N, 0, 0), np.uint8))
        f.create_dataset("heatmaps", data=np.zeros((N, GLINTS, 0, 0), np.float16))
    with h5py.File(out / "images_is_a_group.h5", "w") as f:
        _valid(f, images=True)
        f.create_group("images")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width × height 8-bit grey pixels and holds a few bytes of them."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _record(image_path: str | None, shapes: object, image_data: str | None = None) -> dict:
    return {
        "version": "5.4.1",
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": image_data,
        "imageHeight": SIZE,
        "imageWidth": SIZE,
    }


def _circle(label: str, centre: list, rim: list) -> dict:
    return {"label": label, "points": [centre, rim], "shape_type": "circle", "group_id": None, "flags": {}}


def build_labelme(out: Path) -> None:
    """One folder per case: the crafted JSON beside a good one, so the pack succeeds and names the bad one."""
    out.mkdir(parents=True)
    gray = np.full((SIZE, SIZE), 90, np.uint8)
    (out / "outside.png").write_bytes(_png(gray))  # what the traversal cases point at
    good = _record("good.png", [_circle("g1", [10, 12], [12, 12])])
    cases: dict[str, object] = {
        "path_traversal": _record("../outside.png", [_circle("g1", [10, 12], [12, 12])]),
        "absolute_path": _record("/etc/passwd", [_circle("g1", [10, 12], [12, 12])]),
        "null": None,
        "list": [],
        "shapes_not_a_list": _record("good.png", 5),
        "shape_not_an_object": _record("good.png", ["g1"]),
        "nan_radius": _record("good.png", [_circle("g1", [10, 12], [float("nan"), 12])]),
        "huge_radius": _record("good.png", [_circle("g1", [10, 12], [1e308, 12])]),
        "points_not_numbers": _record("good.png", [_circle("g1", ["a", "b"], [None, 12])]),
        "point_outside_image": _record("good.png", [_circle("g1", [-50, 12], [-48, 12])]),
        "bad_base64": _record(None, [], image_data="not base64!"),
        "decompression_bomb": _record("bomb.png", [_circle("g1", [10, 12], [12, 12])]),
        "sixteen_bit": _record("ir16.png", [_circle("g1", [10, 12], [12, 12])]),
    }
    for case, record in cases.items():
        folder = out / case
        folder.mkdir()
        (folder / "good.png").write_bytes(_png(gray))
        (folder / "good.json").write_text(json.dumps(good))
        (folder / "crafted.json").write_text(json.dumps(record))
    (out / "decompression_bomb" / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    ir16 = (np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 4) % 4096  # a 12-bit camera's frame
    Image.fromarray(ir16).save(out / "sixteen_bit" / "ir16.png")
    (out / "deep_json").mkdir()
    (out / "deep_json" / "crafted.json").write_text("[" * 100_000 + "]" * 100_000)
    (out / "deep_json" / "good.json").write_text(json.dumps(good))
    (out / "deep_json" / "good.png").write_bytes(_png(gray))
    (out / "not_utf8").mkdir()
    (out / "not_utf8" / "crafted.json").write_bytes(b'{"shapes": [], "imagePath": "\xff\xfe"}')
    (out / "not_utf8" / "good.json").write_text(json.dumps(good))
    (out / "not_utf8" / "good.png").write_bytes(_png(gray))
    (out / "embedded_image").mkdir()  # imageData only, as labelme saves by default: packs
    embedded = _record(None, [_circle("g1", [10, 12], [12, 12])], base64.b64encode(_png(gray)).decode())
    (out / "embedded_image" / "crafted.json").write_text(json.dumps(embedded))


def _checkpoint() -> dict:
    """A real glint-track checkpoint of a 1-wide, 2-glint UNet with Adam state (a few tens of kB)."""
    from glint_track.training.checkpointer import RNGState, TrainProgress
    from glint_track.checkpoint.format import gather
    from glint_track.model import GlintUNet

    torch.manual_seed(0)
    model = GlintUNet(GLINTS, 1)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(2, 1, SIZE, SIZE)).sum().backward()
    optimizer.step()
    parts = {"model": model, "optimizer": optimizer, "rng": RNGState(), "progress": TrainProgress("val_loss", "min")}
    return gather(parts, {"lr": 1e-3, "epochs": 2, "base_channels": 1}, save_optimizer=True)


def build_checkpoints(out: Path) -> None:
    out.mkdir(parents=True)
    full = _checkpoint()
    good = {k: v for k, v in full.items() if k != "optimizer_state_dict"}  # small files; optimizer cases add it back
    exp_avg = full["optimizer_state_dict"]["state"][0]["exp_avg"]
    variants = {
        "valid": {},
        "model_state_is_a_tensor": {"model_state_dict": torch.zeros(3)},
        "model_state_is_a_list": {"model_state_dict": [torch.zeros(3)]},
        "model_state_is_empty": {"model_state_dict": {}},
        "model_larger_than_its_weights": {
            "model_state_dict": {
                "out_conv.weight": torch.zeros(2, 64, 1, 1),
                "enc1.seq.0.weight": torch.zeros(20_000, 1, 1, 1),
            }
        },
        "train_args_is_a_list": {"train_args": ["--lr", "1e-3"]},
        "train_args_wrong_types": {"train_args": {"lr": "fast", "epochs": 2.5}},
        "epoch_is_text": {"epoch": "abc"},
        "epoch_negative": {"epoch": -5},
        "with_optimizer": {"optimizer_state_dict": full["optimizer_state_dict"]},
        "optimizer_moments_wrong_shape": {
            "optimizer_state_dict": {
                **full["optimizer_state_dict"],
                "state": {
                    **full["optimizer_state_dict"]["state"],
                    0: {"step": torch.tensor(1.0), "exp_avg": exp_avg.reshape(-1), "exp_avg_sq": exp_avg.reshape(-1)},
                },
            }
        },
        "rng_wrong_types": {"rng_state": {"torch": "seed", "numpy": 3, "python": None}},
        "metrics_wrong_types": {"metrics": ["0.1", "0.2"]},
        # predict and export would allocate images of this size: 3.6 gigapixels
        "trained_size_60000": {"model_info": {"num_glints": 2, "base_channels": 1, "image_size": [60000, 60000]}},
    }
    for name, change in variants.items():
        torch.save(good | change, out / f"{name}.pth")
    (out / "empty.pth").write_bytes(b"")
    (out / "truncated.pth").write_bytes((out / "valid.pth").read_bytes()[:2000])
    flipped = bytearray((out / "valid.pth").read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # a bit flip inside the weights: still a zip, still unpickles
    (out / "bit_flipped.pth").write_bytes(bytes(flipped))
    with (
        zipfile.ZipFile(out / "valid.pth") as src,
        zipfile.ZipFile(out / "compressed_entries.pth", "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item))
    torch.save(good, out / "legacy_format.pth", _use_new_zipfile_serialization=False)
    (out / "plain_pickle.pth").write_bytes(pickle.dumps({"epoch": 1, "note": "pickle.dump, not torch.save"}, 2))


if __name__ == "__main__":
    for name, build in (("h5", build_h5), ("labelme", build_labelme), ("checkpoints", build_checkpoints)):
        shutil.rmtree(HERE / name, ignore_errors=True)
        build(HERE / name)
    print("wrote", sum(1 for p in HERE.rglob("*") if p.is_file()), "files under", HERE)
