"""Pictures for the MLflow UI: validation images with true and predicted glints, heat-map panels,
and precision/recall against the detection threshold."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from glint_track.glints import Glints

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


def validation_grid(
    images: torch.Tensor, pred: Glints, truth: Glints, match_radius: float, tile: int = 256
) -> Image.Image:
    """Each image with its annotated glints (thin white rings) and predictions, numbered and coloured:
    green found, orange swapped (nearer another glint's annotation), yellow spurious, red missed
    (drawn at the annotation)."""
    images = images.detach().float().cpu()
    n = images.shape[0]
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    H, W = images.shape[-2:]
    scale = tile / max(H, W)
    grid = Image.new("RGB", (cols * tile, rows * tile + 18), (0, 0, 0))
    p_xy, p_on = pred.xy.cpu(), pred.present.cpu()
    t_xy, t_on = truth.xy.cpu(), truth.present.cpu()
    for i in range(n):
        gray = (images[i].reshape(H, W).clamp(0, 1) * 255).byte().numpy()
        img = (
            Image.fromarray(gray).convert("RGB").resize((round(W * scale), round(H * scale)), Image.Resampling.NEAREST)
        )
        draw = ImageDraw.Draw(img)
        r = max(4.0, 2 * scale)
        for c in range(p_xy.shape[1]):
            if t_on[i, c]:
                tx, ty = ((t_xy[i, c] + 0.5) * scale).tolist()
                draw.ellipse([tx - r - 2, ty - r - 2, tx + r + 2, ty + r + 2], outline=(255, 255, 255), width=1)
            own = float(torch.linalg.vector_norm(p_xy[i, c] - t_xy[i, c])) if t_on[i, c] else float("inf")
            if p_on[i, c]:
                others = [
                    float(torch.linalg.vector_norm(p_xy[i, c] - t_xy[i, k]))
                    for k in range(p_xy.shape[1])
                    if k != c and t_on[i, k]
                ]
                if own <= match_radius:
                    colour = FOUND
                elif others and min(others) <= match_radius and min(others) < own:
                    colour = SWAPPED
                else:
                    colour = SPURIOUS
                x, y = ((p_xy[i, c] + 0.5) * scale).tolist()
            elif t_on[i, c]:
                colour = MISSED
                x, y = ((t_xy[i, c] + 0.5) * scale).tolist()
            else:
                continue
            draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=2)
            draw.text((x + r + 1, y - r - 1), str(c + 1), fill=colour)
        grid.paste(img, ((i % cols) * tile, (i // cols) * tile))
    legend = ImageDraw.Draw(grid)
    for k, (label, colour) in enumerate(
        (("found", FOUND), ("swapped", SWAPPED), ("spurious", SPURIOUS), ("missed", MISSED))
    ):
        legend.text((6 + 90 * k, rows * tile + 3), label, fill=colour)
    return grid


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
    thresholds: list[float], precision: list[float], recall: list[float], f1: list[float]
) -> Image.Image:
    """Precision, recall and F1 against the detection threshold, as a small line chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    ax.plot(thresholds, precision, label="precision")
    ax.plot(thresholds, recall, label="recall")
    ax.plot(thresholds, f1, label="F1", linewidth=2)
    ax.set_xlabel("detection threshold (peak probability)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return image


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
