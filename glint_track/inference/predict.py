"""`glint-track predict`: glint coordinates for image files of any size, as CSV or JSON, with overlays."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from glint_track.engine import resolve_device
from glint_track.errors import GlintTrackError
from glint_track.figures import draw_glints
from glint_track.files import IMAGE_SUFFIXES
from glint_track.glints import DEFAULT_THRESHOLD, decode
from glint_track.model import GlintUNet
from glint_track.tracking.fetch import fetch_checkpoint


def image_files(inputs: list[str]) -> list[Path]:
    """The images named, and those directly inside the folders named, in order."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise GlintTrackError(f"{item}: no such image or folder; pass image files or folders of images")
    if not files:
        raise GlintTrackError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(inputs)}")
    return files


def predict(
    model_ref: str,
    inputs: list[str],
    out: Path,
    overlay_dir: Path | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    input_size: tuple[int, int] | None = None,
    device_name: str = "auto",
) -> list[dict]:
    """One row per image and glint: image, glint (g1…), x, y (original image pixels), score, present."""
    if out.suffix.lower() not in (".csv", ".json"):
        raise GlintTrackError(f"--out {out}: use a .csv or .json file name")
    source = fetch_checkpoint(model_ref, prefer_best=True, option="--model")
    device = resolve_device(device_name)
    model = GlintUNet.from_checkpoint(source.checkpoint, model_ref).to(device)
    trained_size = source.checkpoint.get("model_info", {}).get("image_size")
    rows: list[dict] = []
    for path in image_files(inputs):
        try:
            with Image.open(path) as img:
                gray = img.convert("L")
        except OSError as e:
            raise GlintTrackError(f"{path}: not a readable image ({e}); remove it or convert it to PNG") from e
        W0, H0 = gray.size
        H, W = input_size or tuple(trained_size or (max(16, round(H0 / 16) * 16), max(16, round(W0 / 16) * 16)))
        x = torch.from_numpy(np.asarray(gray.resize((W, H), Image.Resampling.BILINEAR), np.float32) / 255.0)
        with torch.no_grad():
            glints = decode(model(x[None, None].to(device)), threshold)
        sx, sy = W0 / W, H0 / H
        found = []
        for c in range(model.num_glints):
            gx, gy = glints.xy[0, c].tolist()
            xo, yo = (gx + 0.5) * sx - 0.5, (gy + 0.5) * sy - 0.5  # back to the original image's pixels
            present = bool(glints.present[0, c])
            rows.append(
                {
                    "image": str(path),
                    "glint": f"g{c + 1}",
                    "x": round(xo, 3),
                    "y": round(yo, 3),
                    "score": round(float(glints.score[0, c]), 4),
                    "present": present,
                }
            )
            if present:
                found.append((c, xo, yo))
        if overlay_dir is not None:
            overlay_dir.mkdir(parents=True, exist_ok=True)
            draw_glints(np.asarray(gray), found, scale=max(1.0, 256 / max(H0, W0))).save(
                overlay_dir / f"{path.stem}.png"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, indent=1))
    else:
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows
