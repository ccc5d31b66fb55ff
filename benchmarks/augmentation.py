"""What augmenting a training batch costs beside the step it feeds: glint-track's augmenter against kornia's
AugmentationSequential doing comparable work (affine with keypoints, blur, motion blur, gamma, brightness, contrast,
noise, erasing), both on the training device.

    python benchmarks/augmentation.py [--size 256] [--batch 16] [--device auto] [--steps 50]

The step is the default training step (forward, peak-bce loss, backward, Adam) of the default UNet, eager (on a GPU
glint-track replays it from a CUDA graph, so its share of the time is smaller still there). kornia is skipped when
it is not installed (`pip install kornia`). Times are medians of --steps calls, after 5 untimed ones; a table last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from glint_track.data.augment import Augmenter, GlintTargets, render_targets  # noqa: E402
from glint_track.data.batches import AUGMENT_CHUNK_PIXELS  # noqa: E402
from glint_track.engine import Precision, resolve_device  # noqa: E402
from glint_track.model import GlintUNet  # noqa: E402
from glint_track.training.epoch import TrainStep  # noqa: E402
from glint_track.training.losses import GlintLoss  # noqa: E402


def timed(fn, steps: int, device: torch.device) -> float:
    """Median milliseconds of `fn()` over `steps` calls (synchronised), after 5 warm-up calls."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def kornia_pipeline(size: int):
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.RandomAffine(degrees=12, translate=(0.08, 0.08), scale=(0.87, 1.15), p=1.0),
        K.RandomErasing(scale=(0.01, 0.1), p=0.4),
        K.RandomGaussianBlur((9, 9), (0.1, 1.2 * size / 128), p=0.6),
        K.RandomMotionBlur(7, 35.0, 0.5, p=0.6),
        K.RandomGamma((0.7, 1.4), p=1.0),
        K.RandomBrightness((0.7, 1.3), p=1.0),
        K.RandomContrast((0.75, 1.25), p=1.0),
        K.RandomGaussianNoise(std=0.03, p=1.0),
        data_keys=["input", "keypoints"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    device = resolve_device(args.device)
    n, size, glints = args.batch, args.size, 8
    torch.manual_seed(0)
    images = torch.rand(n, 1, size, size, device=device)
    xy = torch.rand(n, glints, 2, device=device) * (size * 0.6) + size * 0.2
    present = torch.ones(n, glints, dtype=torch.bool, device=device)
    sigma = torch.full((n, glints), 1.5 * size / 128, device=device)
    maps = render_targets(xy, present, sigma, (size // 4, size // 4))
    index = torch.arange(n, device=device)
    augmenter = Augmenter(GlintTargets(xy, present, sigma), 1.0, seed=0)

    model = GlintUNet(glints, 16).to(device).to(memory_format=torch.channels_last)
    precision = Precision.resolve("auto", device, channels_last=True)
    fused = True if device.type == "cuda" else None
    step = TrainStep(model, GlintLoss("peak-bce"), precision, torch.optim.Adam(model.parameters(), 1e-3, fused=fused))
    chunk = AUGMENT_CHUNK_PIXELS // (size * size)  # what training augments in one call on a GPU
    repeat = (chunk + n - 1) // n
    big = [t.repeat(repeat, *[1] * (t.dim() - 1))[:chunk] for t in (images, maps, torch.arange(n, device=device))]
    rows = {
        "training step (eager)": timed(lambda: step(images, maps), args.steps, device),
        "glint-track augmenter, one batch": timed(lambda: augmenter(images, maps, index), args.steps, device),
        f"glint-track augmenter, {chunk} frames at once (as training calls it on a GPU), per batch": timed(
            lambda: augmenter(*big), max(3, args.steps // 5), device
        )
        * n
        / chunk,
    }
    try:
        pipeline = kornia_pipeline(size).to(device)
    except ImportError:
        print("kornia is not installed: its row is left out")
    else:

        def kornia_batch() -> None:
            moved, points = pipeline(images, xy)
            render_targets(points, present, sigma, (size // 4, size // 4))

        rows["kornia AugmentationSequential (+ the same target rendering)"] = timed(kornia_batch, args.steps, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{dt.date.today()}, {where}, torch {torch.__version__}, batch {n} of {size}², {precision.name}")
    print("| what | ms per batch | × the step |\n|---|---|---|")
    base = rows["training step (eager)"]
    for name, ms in rows.items():
        print(f"| {name} | {ms:.2f} | {ms / base:.2f} |")


if __name__ == "__main__":
    main()
