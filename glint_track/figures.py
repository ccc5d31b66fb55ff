"""Pictures for the MLflow UI: validation images with true and predicted glints, heat-map panels,
and precision/recall against the detection threshold."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from glint_track.glints import Glints

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: One colour per glint channel (g1 … g8, then repeating), readable on a grey eye image.
COLOURS = [
    (255, 64, 64),
    (255, 160, 0),
    (240, 230, 40),
    (60, 220, 60),
    (0, 200, 255),
    (70, 110, 255),
    (190, 80, 255),
    (255, 80, 200),
]
FOUND, MISSED, SWAPPED, SPURIOUS = (60, 220, 60), (255, 60, 60), (255, 160, 0), (240, 230, 40)


def grid_shape(n: int) -> tuple[int, int]:
    """(columns, rows) that hold `n` tiles with none left empty, as near 2:1 as the divisors of n allow."""
    cols = min((d for d in range(1, n + 1) if n % d == 0 and d * d >= n), key=lambda d: abs(d - np.sqrt(2 * n)))
    return cols, n // cols


def crop_around(points: torch.Tensor, height: int, width: int, margin: float) -> tuple[float, float, float]:
    """A square (x0, y0, side) around `points` (K×2, x y) with `margin` pixels beyond them, at least a third of
    the image, inside it where the image allows; the whole image when there are no points."""
    side_min = max(height, width) / 3
    if points.numel() == 0:
        return 0.0, 0.0, float(max(height, width))
    lo, hi = points.min(0).values - margin, points.max(0).values + margin
    side = float(max((hi - lo).max(), side_min))
    centre = (lo + hi) / 2
    x0 = float(centre[0]) - side / 2
    y0 = float(centre[1]) - side / 2
    x0 = min(max(x0, 0.0), max(width - side, 0.0))
    y0 = min(max(y0, 0.0), max(height - side, 0.0))
    return x0, y0, side


def _verdict(i: int, c: int, pred: Glints, truth: Glints, match_radius: float) -> tuple[tuple[int, ...], torch.Tensor]:
    """The colour of glint `c` of image `i` and where to draw it (the prediction, or a missed annotation)."""
    p_xy, t_xy, t_on = pred.xy[i], truth.xy[i], truth.present[i]
    if not pred.present[i, c]:
        return MISSED, t_xy[c]
    own = float(torch.linalg.vector_norm(p_xy[c] - t_xy[c])) if t_on[c] else float("inf")
    if own <= match_radius:
        return FOUND, p_xy[c]
    others = [float(torch.linalg.vector_norm(p_xy[c] - t_xy[k])) for k in range(len(t_xy)) if k != c and t_on[k]]
    return (SWAPPED if others and min(others) <= match_radius and min(others) < own else SPURIOUS), p_xy[c]


def validation_grid(
    images: torch.Tensor, pred: Glints, truth: Glints, match_radius: float, tile: int = 320
) -> Image.Image:
    """Each image cropped around its glints: annotations as white rings of the match radius (a prediction
    inside counts as found), predictions numbered and coloured: green found, orange swapped (nearer another
    glint's annotation), yellow spurious, red missed (drawn at the annotation). No tile is left empty."""
    images = images.detach().float().cpu()
    pred = Glints(pred.xy.cpu(), pred.score.cpu(), pred.present.cpu())
    truth = Glints(truth.xy.cpu(), truth.score.cpu(), truth.present.cpu())
    n = images.shape[0]
    cols, rows = grid_shape(n)
    font, legend_h = ImageFont.load_default(size=max(14, tile // 18)), max(24, tile // 12)
    grid = Image.new("RGB", (cols * tile, rows * tile + legend_h), (0, 0, 0))
    for i in range(n):
        img = _tile(images[i], i, pred, truth, match_radius, tile, font)
        grid.paste(img, ((i % cols) * tile, (i // cols) * tile))
    legend = ImageDraw.Draw(grid)
    labels = (("found", FOUND), ("swapped", SWAPPED), ("spurious", SPURIOUS), ("missed", MISSED))
    for k, (label, colour) in enumerate(labels):
        legend.text((8 + k * 7 * font.size, rows * tile + 4), label, fill=colour, font=font)
    legend.text(
        (8 + 4 * 7 * font.size, rows * tile + 4),
        "white ring: annotation ± match radius",
        fill=(255, 255, 255),
        font=font,
    )
    return grid


def _tile(
    image: torch.Tensor,
    i: int,
    pred: Glints,
    truth: Glints,
    match_radius: float,
    tile: int,
    font: ImageFont.FreeTypeFont,
) -> Image.Image:
    """Image `i` of the grid, cropped around its glints and scaled to `tile` pixels, with its glints drawn."""
    H, W = image.shape[-2:]
    shown = torch.cat([truth.xy[i][truth.present[i]], pred.xy[i][pred.present[i]]]) + 0.5
    x0, y0, side = crop_around(shown, H, W, margin=4 * match_radius)
    gray = Image.fromarray((image.reshape(H, W).clamp(0, 1) * 255).byte().numpy())
    img = gray.crop((round(x0), round(y0), round(x0 + side), round(y0 + side))).convert("RGB")
    scale = tile / img.width
    img = img.resize((tile, tile), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    ring, dot = match_radius * scale, max(3.0, scale / 2)
    origin = torch.tensor([round(x0), round(y0)], dtype=torch.float32)
    for c in range(truth.xy.shape[1]):
        if truth.present[i, c]:
            tx, ty = ((truth.xy[i, c] + 0.5 - origin) * scale).tolist()
            draw.ellipse([tx - ring, ty - ring, tx + ring, ty + ring], outline=(255, 255, 255), width=1)
    for c in range(truth.xy.shape[1]):
        if not (pred.present[i, c] or truth.present[i, c]):
            continue
        colour, xy = _verdict(i, c, pred, truth, match_radius)
        x, y = ((xy + 0.5 - origin) * scale).tolist()
        draw.ellipse([x - dot, y - dot, x + dot, y + dot], outline=colour, width=2)
        label_at = (x + dot + 2, y - dot - font.size)
        draw.text(label_at, str(c + 1), fill=colour, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return img


def heatmap_panel(images: torch.Tensor, logits: torch.Tensor, tile: int = 128) -> Image.Image:
    """One row per image: the image, then each glint channel's predicted probability map (like the
    research viewer), tinted in the channel's colour and scaled to its own maximum, which is printed."""
    images, probs = images.detach().float().cpu(), torch.sigmoid(logits.detach().float().cpu())
    n, c = probs.shape[:2]
    panel = Image.new("RGB", ((c + 1) * tile, n * tile), (0, 0, 0))
    for i in range(n):
        gray = (images[i, 0].clamp(0, 1) * 255).byte().numpy()
        panel.paste(Image.fromarray(gray).convert("RGB").resize((tile, tile)), (0, i * tile))
        for k in range(c):
            peak = float(probs[i, k].max())
            p = (probs[i, k].numpy() / max(peak, 1e-6))[..., None] * np.array(COLOURS[k % len(COLOURS)], np.float32)
            img = Image.fromarray(p.clip(0, 255).astype(np.uint8)).resize((tile, tile), Image.Resampling.NEAREST)
            ImageDraw.Draw(img).text((3, 2), f"g{k + 1} max {peak:.2f}", fill=(255, 255, 255))
            panel.paste(img, ((k + 1) * tile, i * tile))
    return panel


def threshold_curves(
    thresholds: list[float], precision: list[float], recall: list[float], f1: list[float], in_use: float
) -> Image.Image:
    """Precision, recall and F1 against the detection threshold, the threshold in use marked with its values
    and the thresholds where F1 is at its best shaded; the y axis spans what the curves cover (a good model's are all
    near 1, where a 0…1 axis would show flat lines)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for values, label, width in ((precision, "precision", 1.5), (recall, "recall", 1.5), (f1, "F1", 2.5)):
        ax.plot(thresholds, values, label=label, linewidth=width)
    low = min(min(precision), min(recall), min(f1))
    bottom = max(0.0, low - 0.1 * (1.02 - low))
    ax.set_ylim(bottom, 1 + 0.03 * (1 - bottom))
    used = thresholds.index(in_use)
    near_best = [t for t, v in zip(thresholds, f1) if v >= max(f1) - 0.001]  # a plateau, more often than a peak
    ax.axvline(in_use, color="black", linestyle="--", linewidth=1)
    ax.annotate(
        f"in use {in_use:g}: P {precision[used]:.3f}  R {recall[used]:.3f}  F1 {f1[used]:.3f}",
        (in_use, ax.get_ylim()[0]),
        xytext=(4, 6),
        textcoords="offset points",
        fontsize=8,
    )
    ax.axvspan(min(near_best), max(near_best), color="green", alpha=0.08, linewidth=0)
    ax.set_title(
        f"F1 within 0.001 of its best ({max(f1):.3f}) for thresholds {min(near_best):g}–{max(near_best):g} (shaded)",
        fontsize=9,
    )
    ax.set_xlabel("detection threshold (peak probability)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", fontsize=8)
    fig.tight_layout()
    return _image_of(fig)


def draw_glints(gray: np.ndarray, glints: list[tuple[int, float, float]], scale: float = 1.0) -> Image.Image:
    """An RGB copy of a grayscale image, scaled, with each (channel, x, y) circled in its colour and numbered."""
    H, W = gray.shape
    img = Image.fromarray(gray).convert("RGB")
    if scale != 1.0:
        img = img.resize((round(W * scale), round(H * scale)), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    for c, x, y in glints:
        cx, cy, r = (x + 0.5) * scale, (y + 0.5) * scale, max(4.0, 2 * scale)
        colour = COLOURS[c % len(COLOURS)]
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=2)
        draw.text((cx + r + 1, cy - r - 1), str(c + 1), fill=colour)
    return img


def sweep_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], metrics: tuple[str, ...]) -> Image.Image:
    """One panel per metric with one line per sweep child (`curves`: child label → metric → (epoch, value)),
    so the parent run shows at a glance which settings learn fastest and end best."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _pyplot().subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), dpi=110, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, series in curves.items():
            points = sorted(series.get(metric, []))
            if points:
                ax.plot(*zip(*points), marker="o", markersize=2.5, linewidth=1.2, label=label[:40])
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) - 1) // 4), 1, 1))
    return _image_of(fig)


def warm_up() -> None:
    """Import matplotlib now, beside training, not when the end of a run draws its first chart (~0.5 s)."""
    _pyplot()


def _pyplot() -> ModuleType:
    """matplotlib.pyplot, drawing off-screen; imported when a chart is drawn (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _image_of(fig: Figure) -> Image.Image:
    """The figure as an RGB picture; the figure is closed."""
    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    _pyplot().close(fig)
    return image
