"""The picture beside docs/synthetic-data.md: what `glint-track synth` draws at three difficulties.

Rows: --difficulty 0, 0.5, 1; columns: consecutive samples of seed 0, 256×256, as the camera records them
(no annotation). Run: python benchmarks/synth_grid.py --out docs/synthetic-grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from glint_track.data.eye_render import render_sample

DIFFICULTIES = (0.0, 0.5, 1.0)


def grid(columns: int, size: int, num_glints: int, seed: int) -> Image.Image:
    label_w, gap = 70, 4
    sheet = Image.new("L", (label_w + columns * (size + gap), len(DIFFICULTIES) * (size + gap)), 255)
    draw = ImageDraw.Draw(sheet)
    for row, difficulty in enumerate(DIFFICULTIES):
        top = row * (size + gap)
        draw.text((6, top + size // 2 - 6), f"difficulty\n{difficulty:g}", fill=0)
        for col in range(columns):
            image, _, _ = render_sample(np.random.default_rng([seed, row, col]), size, num_glints, difficulty)
            sheet.paste(Image.fromarray(image), (label_w + col * (size + gap), top))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/synthetic-grid.png"))
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--num-glints", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    grid(args.columns, args.size, args.num_glints, args.seed).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
