"""The UNet against the research project's classical detector, on a held-out synthetic test file.

    python benchmarks/baseline.py [--train 1024 --test 256 --size 128 --epochs 15]

Trains `glint-track train` (the default recipe) on one synthetic file and scores both detectors on another
(different seed). The classical detector does not know glint identities, so both are scored
identity-free (optimal one-to-one matching within --match-radius pixels); the UNet is also scored
with identities (a glint counts only in its own channel). The table is printed last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import make_workdir

from glint_track.data.glint_file import load_glint_file
from glint_track.data.synth import write_synthetic
from glint_track.glints import decode
from glint_track.inference.classical import ClassicalParams, detect_glints, match_identity_free, summarise
from glint_track.inference.evaluate import evaluate
from glint_track.model import GlintUNet
from glint_track.tracking.fetch import fetch_checkpoint
from glint_track.training.config import TrainConfig
from glint_track.training.loop import train


def identity_free(detections: list[np.ndarray], truth: torch.Tensor, radius: float) -> dict[str, float]:
    totals = [0, 0, 0, []]
    for found, points in zip(detections, truth.numpy()):
        tp, fp, fn, errors = match_identity_free(found, points[~np.isnan(points[:, 0])], radius)
        totals[0] += tp
        totals[1] += fp
        totals[2] += fn
        totals[3] += errors
    return summarise(*totals)


#: The classical detector's knobs searched on training images, so it is not judged by defaults made for
#: another camera: median size, top-hat size, threshold offset, smallest blob.
TUNING_GRID = {
    "denoise": (1, 3),
    "tophat": (9, 15),
    "c": (-13.0, -40.0, -70.0, -100.0, -130.0, -160.0),
    "area_min": (1, 2, 3, 5),
}


def tune_classical(images: np.ndarray, truth: torch.Tensor, radius: float) -> ClassicalParams:
    """The grid point with the best identity-free F1 on `images` (training images, not the test file)."""

    def f1(params: ClassicalParams) -> float:
        return identity_free([detect_glints(image, params) for image in images], truth, radius)["f1"]

    grid = [dict(zip(TUNING_GRID, values)) for values in itertools.product(*TUNING_GRID.values())]
    return max((replace(ClassicalParams(), **point) for point in grid), key=f1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=1024)
    ap.add_argument("--test", type=int, default=256)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--difficulty", type=float, default=0.5)
    ap.add_argument("--match-radius", type=float, default=3.0)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    workdir = make_workdir(args.workdir, "glint-baseline-")
    os.chdir(workdir)
    train_h5 = write_synthetic(workdir / "train.h5", args.train, args.size, seed=0, difficulty=args.difficulty)
    test_h5 = write_synthetic(workdir / "test.h5", args.test, args.size, seed=1000, difficulty=args.difficulty)

    result = train(TrainConfig(h5=str(train_h5), epochs=args.epochs, output_dir=str(workdir / "unet")))
    with_ids = evaluate(result.run_id, str(test_h5), match_radius=args.match_radius)

    test = load_glint_file(test_h5)
    model = GlintUNet.from_checkpoint(fetch_checkpoint(result.run_id, prefer_best=True).checkpoint, "unet")
    with torch.no_grad():
        glints = decode(model(test.images.unsqueeze(1).float() / 255.0), 0.3)
    unet_found = [xy[on].numpy() for xy, on in zip(glints.xy, glints.present)]
    train_data = load_glint_file(train_h5)
    tuned = tune_classical(train_data.images[:256].numpy(), train_data.points[:256], args.match_radius)
    unet = identity_free(unet_found, test.points, args.match_radius)
    classical, classical_tuned = (
        identity_free([detect_glints(image, p) for image in test.images.numpy()], test.points, args.match_radius)
        for p in (ClassicalParams(), tuned)
    )

    print(
        f"\n{dt.date.today()} · {os.cpu_count()} CPU cores · torch {torch.__version__} · train {args.train} / test "
        f"{args.test} "
        f"synthetic {args.size}² images (difficulty {args.difficulty}, seeds 0 / 1000) · UNet: default recipe, "
        f"{args.epochs} epochs · classical defaults: {ClassicalParams()} · tuned on 256 training images: {tuned}\n"
    )
    print("| detector | scoring | precision | recall | F1 | mean error px | median error px |")
    print("|---|---|---|---|---|---|---|")
    rows = [
        ("classical (top-hat + adaptive threshold + blobs), research defaults", "identity-free", classical),
        ("classical, tuned on training images", "identity-free", classical_tuned),
        ("glint-track UNet", "identity-free", unet),
        ("glint-track UNet", "with identities (own channel)", with_ids.overall),
    ]
    for name, scoring, m in rows:
        print(
            f"| {name} | {scoring} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | "
            f"{m['loc_err_mean']:.2f} | {m['loc_err_median']:.2f} |"
        )


if __name__ == "__main__":
    main()
