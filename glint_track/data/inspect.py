"""`glint-track inspect`: what is in a glint file, whether the trainer accepts it, and a picture of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image, ImageDraw

from glint_track.data.glint_file import GlintData, load_glint_file
from glint_track.data.h5check import describe_link
from glint_track.figures import draw_glints


def describe(path: str | Path) -> tuple[GlintData, dict[str, Any]]:
    """Validate the file (raising GlintTrackError with the fix) and summarise it."""
    data = load_glint_file(path)
    path = Path(path)
    with h5py.File(path, "r") as f:
        datasets = {name: _entry(f, name) for name in f}
    peaks = torch.cat(
        [block.amax(dim=(2, 3)).float() for block in data.heatmaps.split(4096)]
    ).numpy()  # N×C, no full-size copy
    present = data.present.numpy().astype(bool) if data.present is not None else peaks > 0.1
    summary = {
        "file": str(path),
        "size_mb": path.stat().st_size / 1e6,
        "samples": data.num_samples,
        "image_size": data.image_size,
        "glints": data.num_glints,
        "datasets": datasets,
        "attrs": data.attrs,
        "presence": present.sum(0).tolist(),
        "peak": {
            "mean": float(peaks[present].mean()) if present.any() else 0.0,
            "min": float(peaks[present].min()) if present.any() else 0.0,
            "max_absent": float(peaks[~present].max()) if (~present).any() else 0.0,
        },
        "no_glint_samples": int((~present.any(1)).sum()),
        "has_points": data.points is not None,
        "validation": "ok: the trainer accepts this file",
    }
    return data, summary


def _entry(f: h5py.File, name: str) -> dict[str, Any] | str:
    """What a top-level name in the file is, without following links out of it."""
    link = f.get(name, getlink=True)
    if not isinstance(link, h5py.HardLink):
        return describe_link(link) + " (not followed)"
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        return "a group (not read)"
    return {"shape": tuple(obj.shape), "dtype": str(obj.dtype), "chunks": obj.chunks, "compression": obj.compression}


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['file']}: {s['samples']} samples, images {s['image_size'][0]}×{s['image_size'][1]}, {s['glints']} "
        f"glints, {s['size_mb']:.1f} MB on disk",
        "datasets:",
    ]
    for name, d in s["datasets"].items():
        if isinstance(d, str):
            lines.append(f"  {name:9s} {d}")
            continue
        lines.append(
            f"  {name:9s} {str(d['shape']):22s} {d['dtype']:9s} chunks {d['chunks']}, compression "
            f"{d['compression'] or 'none'}"
        )
    lines.append("attributes: " + (", ".join(f"{k}={v}" for k, v in sorted(s["attrs"].items())) or "none"))
    lines.append("glints annotated (per channel): " + ", ".join(f"g{c + 1} {n}" for c, n in enumerate(s["presence"])))
    p = s["peak"]
    lines.append(
        f"heat-map peaks of annotated glints: mean {p['mean']:.3f}, min {p['min']:.3f}; highest where absent "
        f"{p['max_absent']:.3f}"
    )
    lines.append(f"samples with no glint: {s['no_glint_samples']}")
    lines.append(f"validation: {s['validation']}")
    return "\n".join(lines)


def glint_positions(data: GlintData, i: int, points: np.ndarray | None) -> list[tuple[int, float, float]]:
    """(channel, x, y) in image pixels: the stored points, else the heat-map peaks (×4)."""
    if points is not None:
        return [(c, float(x), float(y)) for c, (x, y) in enumerate(points[i]) if not np.isnan(x)]
    out = []
    for c, hm in enumerate(data.heatmaps[i].float().numpy()):
        if hm.max() > 0.1:
            y, x = np.unravel_index(hm.argmax(), hm.shape)
            out.append((c, (x + 0.5) * 4 - 0.5, (y + 0.5) * 4 - 0.5))
    return out


def preview(data: GlintData, out: str | Path, count: int = 16, tile: int = 256) -> Path:
    """A grid of the first `count` samples, each glint circled in its channel's colour and numbered."""
    points = data.points.numpy() if data.points is not None else None
    count = min(count, data.num_samples)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    grid = Image.new("RGB", (cols * tile, rows * tile), (0, 0, 0))
    H, W = data.image_size
    scale = tile / max(H, W)
    for i in range(count):
        img = draw_glints(data.images[i].numpy(), glint_positions(data, i, points), scale)
        ImageDraw.Draw(img).text((4, 4), data.stems[i] if data.stems else str(i), fill=(255, 255, 255))
        grid.paste(img, ((i % cols) * tile, (i // cols) * tile))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out
