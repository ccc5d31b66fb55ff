"""Augmentation on the training device: each training batch redrawn as another camera, eye and moment could have
recorded it, with its glints moved along and their heat-maps made again from the moved points.

A lab labels tens of frames from a handful of people; the model must then hold on new people, squints, glasses and
blur. So every batch is, per frame: moved, scaled and turned a little (headset fit, distance to the eye); partly
covered by a patch (a lid, lashes, a strand of hair); given a few unlabelled bright spots (reflections of the LEDs in
spectacles); blurred (defocus, motion); and re-exposed (gain, gamma, contrast) with sensor noise. A glint that leaves
the frame or lies under a patch is absent from the targets, not a wrong place. Nothing is mirrored: a mirror swaps
the LEDs round the ring, so glint g1 would become another LED's.

Why our own code rather than kornia's AugmentationSequential or torchvision.transforms.v2: both draw their random
parameters on the host and launch a chain of small kernels per transform; here the whole batch is a handful of
batched tensor operations drawn from one generator on the training device, so a GPU step is not kept waiting (the
step itself is one CUDA graph; benchmarks/augmentation.py measures the two), and the draw is reproducible from
(seed, epoch, rank) alone: a resumed run sees exactly the batches an uninterrupted one would have. Heat-maps are
rendered from the moved points exactly as the packer renders them (a Gaussian per glint, area-averaged onto the
heat-map grid), not warped at a quarter of the resolution, which would blur the sub-pixel targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from glint_track.constants import OUTPUT_STRIDE
from glint_track.glints import Glints

#: Size the ranges below are given at (pixels of the shorter image side): blur, spots and patches scale with it.
REFERENCE_SIZE = 128
#: The heat-maps' Gaussian width below which a glint's width is not trusted (a glint cut by the image edge).
MIN_SIGMA = 0.5


@dataclass(frozen=True)
class Ranges:
    """How far each augmentation goes at strength 1 (it scales them; 0 is none). Chosen to span what near-eye
    trackers record across people and sessions, not one data set (docs/benchmarks.md, label efficiency)."""

    rotate_deg: float = 12.0  # headset worn a little turned
    scale: float = 0.15  # ± of the eye's size: distance to the camera 28-40 mm
    shift: float = 0.08  # ± of the image side: the eye elsewhere in the frame
    patch_p: float = 0.4  # a frame gets an occluding patch
    spots_p: float = 0.4  # a frame gets 1-4 unlabelled bright spots
    blur_p: float = 0.6  # a frame is blurred
    defocus_px: float = 1.2  # Gaussian sigma, at REFERENCE_SIZE
    motion_px: float = 3.0  # length of a straight smear, at REFERENCE_SIZE
    gain: float = 0.3  # ± multiplicative
    gamma: float = 0.35  # ± of log(gamma)
    contrast: float = 0.25  # ± about the frame's mean
    noise: float = 0.03  # the largest read-noise sigma (1 = full scale)


@dataclass
class GlintTargets:
    """Every training sample's glints as the heat-maps are rendered from them: centre (N×C×2, input pixels),
    present (N×C) and Gaussian sigma (N×C, input pixels), on the training device."""

    xy: torch.Tensor
    present: torch.Tensor
    sigma: torch.Tensor

    @classmethod
    def of(cls, truth: Glints, heatmaps: torch.Tensor) -> GlintTargets:
        """From the annotated centres (the file's points, or its heat-maps' peaks) and the heat-maps themselves:
        an area-averaged Gaussian of sigma s holds 2πs² / stride² in all, so each glint's width is read from its
        map's total without knowing the radius or the packer's settings."""
        total = torch.cat([part.float().sum((-1, -2)) for part in heatmaps.split(1024)])  # no full-size float copy
        sigma = (total * OUTPUT_STRIDE**2 / (2 * math.pi)).sqrt().clamp_min(MIN_SIGMA)
        return cls(truth.xy.float(), truth.present.bool(), sigma.to(truth.xy.device))

    def to(self, device: torch.device) -> GlintTargets:
        return GlintTargets(self.xy.to(device), self.present.to(device), self.sigma.to(device))


def render_targets(
    xy: torch.Tensor, present: torch.Tensor, sigma: torch.Tensor, heatmap_hw: tuple[int, int]
) -> torch.Tensor:
    """N×C×h×w heat-maps of glints at `xy` (input pixels; pixel i's centre at i): each a Gaussian of its `sigma`,
    averaged over the stride×stride input pixels of each heat-map pixel (the packer's area resize), absent ones 0.
    A Gaussian is separable, so each map is the outer product of its averaged row and column profiles."""
    h, w = heatmap_hw
    sub = torch.arange(OUTPUT_STRIDE, device=xy.device, dtype=torch.float32)

    def profile(centre: torch.Tensor, cells: int) -> torch.Tensor:  # N×C×cells
        pixels = (torch.arange(cells, device=xy.device, dtype=torch.float32)[:, None] * OUTPUT_STRIDE + sub).flatten()
        d = pixels - centre[..., None]
        g = torch.exp(-0.5 * (d / sigma[..., None]) ** 2) * (d.abs() <= 3 * sigma[..., None])
        return g.view(*centre.shape, cells, OUTPUT_STRIDE).mean(-1)

    maps = profile(xy[..., 1], h)[..., :, None] * profile(xy[..., 0], w)[..., None, :]
    return (maps * present[..., None, None]).clamp_(0.0, 1.0)


class Augmenter:
    """Draws each training batch anew (see the module's docstring); `set_epoch` seeds its generator from
    (seed, epoch, rank), so a resumed epoch, and each DDP rank's share of it, is drawn the same every time."""

    def __init__(
        self,
        targets: GlintTargets,
        strength: float,
        seed: int,
        rank: int = 0,
        ranges: Ranges | None = None,
        frames: float = 1.0,
    ) -> None:
        """`frames`: the share of frames redrawn (the others are trained on as recorded)."""
        self.targets, self.full_strength, self.seed, self.rank, self.frames = targets, strength, seed, rank, frames
        self.strength = strength
        self.ranges = ranges or Ranges()
        self.device = targets.xy.device
        self.generator = torch.Generator(self.device)
        self.set_epoch(1)

    def set_epoch(self, epoch: int, share: float = 1.0) -> None:
        """Seed the epoch's draw; `share` of the full strength applies in it (the schedule tapers it at the end)."""
        state = np.random.SeedSequence([self.seed, epoch, self.rank, 0x61756700]).generate_state(1, np.uint64)[0]
        self.generator.manual_seed(int(state) & (2**63 - 1))
        self.strength = self.full_strength * share

    def __call__(
        self, images: torch.Tensor, heatmaps: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented images (N×1×H×W in [0, 1]) and the targets rendered for them (N×C×h×w); `index` picks each
        sample's glints."""
        n, _, height, width = images.shape
        chosen = self._uniform(n, signed=False) < self.frames
        xy, present, sigma = (t[index] for t in (self.targets.xy, self.targets.present, self.targets.sigma))
        out, xy, sigma = self._move(images, xy, sigma)
        inside = (xy[..., 0] >= 0) & (xy[..., 0] <= width - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= height - 1)
        out, covered = self._patch(out, xy)
        present = present & inside & ~covered
        out = self._expose(self._blur(self._spots(out)))
        maps = render_targets(xy, present, sigma, tuple(heatmaps.shape[-2:])).to(heatmaps.dtype)
        if self.frames >= 1:
            return out, maps
        keep = chosen[:, None, None, None]
        return torch.where(keep, out, images), torch.where(keep, maps, heatmaps)

    # each draw: per frame, uniform in [-1, 1) (or [0, 1)) times the range at this strength
    def _uniform(self, *shape: int, signed: bool = True) -> torch.Tensor:
        u = torch.rand(*shape, generator=self.generator, device=self.device)
        return 2 * u - 1 if signed else u

    def _chance(self, p: float, n: int) -> torch.Tensor:
        return self._uniform(n, signed=False) < min(1.0, p * self.strength)

    def _scale_px(self, images: torch.Tensor) -> float:
        return min(images.shape[-2:]) / REFERENCE_SIZE

    def _move(
        self, images: torch.Tensor, xy: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotate, scale and shift each frame about its centre; the glints and their widths go along."""
        n, _, h, w = images.shape
        k, r = self.strength, self.ranges
        angle = self._uniform(n) * math.radians(r.rotate_deg) * k
        scale = torch.exp(self._uniform(n) * math.log1p(r.scale * k))
        shift = self._uniform(n, 2) * r.shift * k * torch.tensor([w, h], device=self.device, dtype=torch.float32)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        forward = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # N×2×2, input → out
        centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=self.device)
        moved = torch.einsum("nij,ncj->nci", forward, xy - centre) + centre + shift[:, None]
        # grid_sample reads, for every output pixel, the input pixel the inverse transform takes it to: in its
        # normalised coordinates (pixel p = S·n + centre, S = size/2) that is S⁻¹·A·S·n − S⁻¹·A·shift, A = inverse
        half = torch.tensor([w / 2, h / 2], device=self.device)
        inverse = forward.transpose(1, 2) / (scale**2)[:, None, None]  # a scaled rotation's inverse, no linalg call
        inverse = inverse * half[None, None, :] / half[None, :, None]  # S⁻¹ A S
        offset = -torch.einsum("nij,nj->ni", inverse, shift / half)
        theta = torch.cat([inverse, offset[..., None]], -1)
        grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return images, moved, sigma * scale[:, None]

    def _patch(self, images: torch.Tensor, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An elliptical patch of flat grey (lid, lashes, hair) on some frames; which glints it covers."""
        n, _, h, w = images.shape
        size = min(h, w)
        on = self._chance(self.ranges.patch_p, n)
        centre = self._uniform(n, 2, signed=False) * torch.tensor([w, h], device=self.device, dtype=torch.float32)
        long = (0.05 + 0.3 * self._uniform(n, signed=False)) * size
        short = long * (0.1 + 0.9 * self._uniform(n, signed=False))
        angle = self._uniform(n) * math.pi
        level = 0.7 * self._uniform(n, signed=False)

        def inside(px: torch.Tensor) -> torch.Tensor:  # px N×P×2 → N×P, 1 inside the ellipse, soft over ~1 px
            d = px - centre[:, None]
            c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
            u, v = d[..., 0] * c + d[..., 1] * s, -d[..., 0] * s + d[..., 1] * c
            radius = torch.sqrt((u / long[:, None]) ** 2 + (v / short[:, None]) ** 2)
            return ((1 - radius) * short[:, None]).clamp(0, 1) * on[:, None]

        ys, xs = torch.meshgrid(
            torch.arange(h, device=self.device, dtype=torch.float32),
            torch.arange(w, device=self.device, dtype=torch.float32),
            indexing="ij",
        )
        mask = inside(torch.stack([xs, ys], -1).view(1, h * w, 2).expand(n, -1, -1)).view(n, 1, h, w)
        images = images * (1 - mask) + level[:, None, None, None] * mask
        return images, inside(xy) > 0.5

    def _spots(self, images: torch.Tensor) -> torch.Tensor:
        """Up to 4 small unlabelled bright spots on some frames: reflections of the LEDs in spectacles, light added
        to the frame."""
        n, _, h, w = images.shape
        count = 4
        on = self._chance(self.ranges.spots_p, n)[:, None] & (self._uniform(n, count, signed=False) < 0.6)
        centre = self._uniform(n, count, 2, signed=False) * torch.tensor([w, h], device=self.device)
        sigma = (0.5 + 1.0 * self._uniform(n, count, signed=False)) * self._scale_px(images)
        level = (0.5 + 0.7 * self._uniform(n, count, signed=False)) * on
        ys = torch.arange(h, device=self.device, dtype=torch.float32)
        xs = torch.arange(w, device=self.device, dtype=torch.float32)
        gy = torch.exp(-0.5 * ((ys - centre[..., 1:2]) / sigma[..., None]) ** 2)  # N×count×H
        gx = torch.exp(-0.5 * ((xs - centre[..., 0:1]) / sigma[..., None]) ** 2)  # N×count×W
        light = torch.einsum("nk,nky,nkx->nyx", level, gy, gx)
        return images + light[:, None]

    def _blur(self, images: torch.Tensor) -> torch.Tensor:
        """Defocus (a Gaussian) and motion (a straight smear) on some frames, one kernel per frame."""
        n, _, h, w = images.shape
        k, r, px = self.strength, self.ranges, self._scale_px(images)
        on = self._chance(r.blur_p, n)
        defocus = (0.05 + self._uniform(n, signed=False) * r.defocus_px * k * px) * on
        length = self._uniform(n, signed=False) * r.motion_px * k * px * on
        angle = self._uniform(n) * math.pi
        radius = math.ceil(3 * (0.05 + r.defocus_px * k * px) + r.motion_px * k * px / 2)
        taps = torch.arange(-radius, radius + 1, device=self.device, dtype=torch.float32)
        ty, tx = torch.meshgrid(taps, taps, indexing="ij")
        along = torch.linspace(-0.5, 0.5, 9, device=self.device)  # points of the smear
        cx = (along[None] * length[:, None] * torch.cos(angle)[:, None])[..., None, None]  # N×9×1×1
        cy = (along[None] * length[:, None] * torch.sin(angle)[:, None])[..., None, None]
        d2 = (tx - cx) ** 2 + (ty - cy) ** 2
        kernel = torch.exp(-0.5 * d2 / defocus[:, None, None, None].clamp_min(0.3) ** 2).sum(1)  # N×K×K
        kernel = kernel / kernel.sum((-1, -2), keepdim=True)
        padded = F.pad(images.transpose(0, 1), (radius,) * 4, mode="replicate")  # 1×N×H×W: a kernel per frame
        blurred = F.conv2d(padded, kernel[:, None], groups=n).transpose(0, 1)
        return torch.where(on[:, None, None, None], blurred, images)

    def _expose(self, images: torch.Tensor) -> torch.Tensor:
        """Gain, gamma and contrast, then read noise, clipped to the sensor's range."""
        n = images.shape[0]
        k, r = self.strength, self.ranges
        gain = 1 + self._uniform(n) * r.gain * k
        gamma = torch.exp(self._uniform(n) * r.gamma * k)
        contrast = 1 + self._uniform(n) * r.contrast * k
        noise = self._uniform(n, signed=False) * r.noise * k

        def per_frame(t: torch.Tensor) -> torch.Tensor:
            return t[:, None, None, None]

        images = images.clamp(0, 1) ** per_frame(gamma)
        mean = images.mean((1, 2, 3), keepdim=True)
        images = (images - mean) * per_frame(contrast) + mean
        images = images * per_frame(gain)
        noise_map = torch.randn(images.shape, generator=self.generator, device=self.device)
        return (images + noise_map * per_frame(noise)).clamp_(0, 1)
