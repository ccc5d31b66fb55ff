"""Augmentation: the glints move with the image, leave the targets when they leave the frame or are covered, the
targets are the packer's, and the random stream is a function of (seed, epoch, rank) alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glint_track.data.augment import Augmenter, GlintTargets, Ranges, render_targets
from glint_track.data.batches import split_indices
from glint_track.data.glint_file import load_glint_file
from glint_track.errors import GlintTrackError
from glint_track.glints import ground_truth

#: Only the geometry: no patches, spots, blur, exposure or noise.
MOVE_ONLY = Ranges(patch_p=0, spots_p=0, blur_p=0, gain=0, gamma=0, contrast=0, noise=0)


@pytest.fixture(scope="module")
def eyes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glint_track.data.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("eyes") / "eyes.h5", num_samples=16, size=64, num_glints=4, seed=2)


def spots(n: int = 8, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, GlintTargets]:
    """Dark frames with one bright round spot per glint (4), its heat-maps, and where the spots are."""
    rng = np.random.default_rng(seed)
    xy = torch.from_numpy(rng.uniform(12, size - 12, (n, 4, 2))).float()
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    d2 = (xx - xy[..., 0, None, None]) ** 2 + (yy - xy[..., 1, None, None]) ** 2  # n×4×H×W
    images = torch.exp(-d2 / (2 * 1.5**2)).amax(1, keepdim=True)
    present = torch.ones(n, 4, dtype=torch.bool)
    sigma = torch.full((n, 4), 1.5)
    return images, render_targets(xy, present, sigma, (size // 4, size // 4)), GlintTargets(xy, present, sigma)


def test_targets_are_rendered_as_the_packer_renders_them(eyes: Path) -> None:
    """From the file's points and widths read off its own maps, the targets are the file's (so training with
    augmentation learns the very maps the file holds), for points from its heat-maps' peaks too (old files)."""
    data = load_glint_file(eyes)
    for points in (data.points, None):
        truth = ground_truth(points, data.present, data.heatmaps)
        targets = GlintTargets.of(truth, data.heatmaps)
        rendered = render_targets(targets.xy, targets.present, targets.sigma, data.heatmaps.shape[-2:])
        tolerance = 0.01 if points is not None else 0.05  # a peak read off a map is ~0.1 px from the point
        assert (rendered - data.heatmaps.float()).abs().max() < tolerance


def test_each_moved_glint_is_on_its_spots_pixels_and_its_target_peaks_there() -> None:
    images, maps, targets = spots()
    augment = Augmenter(targets, strength=2.0, seed=3, ranges=MOVE_ONLY)
    moved, xy, sigma = augment._move(images, targets.xy, targets.sigma)  # the geometric step, and where it put them
    assert not torch.equal(moved, images)
    yy, xx = torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij")
    checked = 0
    for i in range(len(images)):
        for c in range(4):
            x, y = xy[i, c].tolist()
            others = torch.cat([xy[i, :c], xy[i, c + 1 :]])
            top, left = round(y) - 3, round(x) - 3
            if top < 0 or left < 0 or top + 7 > 64 or left + 7 > 64 or torch.cdist(xy[i, c][None], others).min() < 8:
                continue  # cut by the frame, or another spot nearby would pull the centroid
            window = moved[i, 0, top : top + 7, left : left + 7]
            weights = (window - 0.3 * window.max()).clamp_min(0)
            cx, cy = (
                float((weights * xx).sum() / weights.sum()) + left,
                float((weights * yy).sum() / weights.sum()) + top,
            )
            assert np.hypot(cx - x, cy - y) < 0.2, (i, c, (cx, cy), (x, y))
            checked += 1
    assert checked >= 15
    augment.set_epoch(1)
    moved, moved_maps = augment(images, maps, torch.arange(len(images)))
    # the spots are the glints' own Gaussians: pooled onto the heat-map grid, the moved frame is its targets
    pooled = torch.nn.functional.avg_pool2d(moved, 4)[:, 0]
    assert (pooled - moved_maps.amax(1)).abs().max() < 0.05


def test_a_glint_moved_out_of_the_frame_or_covered_is_absent() -> None:
    images, maps, targets = spots(n=32)
    far = Augmenter(targets, strength=1.0, seed=1, ranges=replace(MOVE_ONLY, shift=0.6))
    _, far_maps = far(images, maps, torch.arange(32))
    moved = far_maps.amax((-1, -2)) > 0.1
    assert 0 < moved.sum() < 32 * 4  # some left the frame, and their maps are empty, not cut-off Gaussians
    covered = Augmenter(
        targets, strength=1.0, seed=1, ranges=replace(MOVE_ONLY, rotate_deg=0, scale=0, shift=0, patch_p=1)
    )
    patched, patched_maps = covered(images, maps, torch.arange(32))
    absent = patched_maps.amax((-1, -2)) == 0
    assert absent.any()  # some glints were covered

    def peak(frames: torch.Tensor, i: int, c: int) -> float:  # the brightest pixel around glint c of frame i
        x, y = targets.xy[i, c].round().long().tolist()
        return float(frames[i, 0, y - 1 : y + 2, x - 1 : x + 2].max())

    for i, c in zip(*torch.nonzero(absent, as_tuple=True)):
        assert peak(patched, i, c) < 0.9 * peak(images, i, c), (i, c)  # gone from the image too
    for i, c in zip(*torch.nonzero(~absent, as_tuple=True)):
        assert peak(patched, i, c) > 0.5 * peak(images, i, c), (i, c)  # a present glint is still there


def test_the_draw_is_a_function_of_seed_epoch_and_rank() -> None:
    images, maps, targets = spots()
    index = torch.arange(len(images))

    def draw(seed: int, epoch: int, rank: int = 0) -> torch.Tensor:
        augment = Augmenter(targets, 1.0, seed, rank)
        augment(images, maps, index)  # whatever came before in another epoch does not matter
        augment.set_epoch(epoch)
        return torch.cat([augment(images, maps, index)[0] for _ in range(2)])

    assert torch.equal(draw(1, 3), draw(1, 3))  # a resumed epoch is drawn as it was
    assert not torch.equal(draw(1, 3), draw(1, 4))
    assert not torch.equal(draw(1, 3), draw(2, 3))
    assert not torch.equal(draw(1, 3, rank=0), draw(1, 3, rank=1))  # DDP ranks draw differently


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from("abcdefgh"), min_size=4, max_size=200),
    st.floats(0.05, 0.6),
    st.integers(0, 2**31),
)
def test_a_group_split_never_puts_a_group_on_both_sides(groups: list[str], val_split: float, seed: int) -> None:
    if len(set(groups)) < 2:
        return
    try:
        train, val = split_indices(len(groups), val_split, seed, groups)
    except GlintTrackError as e:  # too few training samples left: refused with the fix
        assert "training needs at least" in str(e)
        return
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in val})
    assert len(train) + len(val) == len(groups) and len(val) >= 1
    again = split_indices(len(groups), val_split, seed, groups)  # the same on every start and resume
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)


@pytest.mark.parametrize("chunk", [0, 10**9])  # batch by batch (a CPU), or all at once (a GPU's chunks)
def test_augmented_batches_are_the_same_batches_in_the_same_order(eyes: Path, chunk: int) -> None:
    from glint_track.data.batches import AugmentedBatches, make_batches

    data = load_glint_file(eyes)
    loading = {"seed": 4, "device": torch.device("cpu"), "num_workers": 0, "resident": True}
    plain = make_batches(data, np.arange(13), 4, shuffle=True, passes=2, **loading)
    targets = GlintTargets.of(ground_truth(data.points, data.present, data.heatmaps), data.heatmaps)
    augmented = AugmentedBatches(
        make_batches(data, np.arange(13), 4, shuffle=True, passes=2, **loading), Augmenter(targets, 1.0, 4)
    )
    augmented.chunk = chunk
    for batches in (plain, augmented):
        batches.set_epoch(3)
    pairs = list(zip(plain, augmented, strict=True))
    assert len(pairs) == len(augmented) == 7  # 13 frames twice: 6 batches of 4 and one of 2
    for (images, maps, index), (moved, moved_maps, same) in pairs:
        assert torch.equal(index, same) and moved.shape == images.shape and moved_maps.shape == maps.shape
        assert not torch.equal(moved, images)
