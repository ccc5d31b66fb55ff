"""The glint UNet: 1 grayscale channel in, one logit heat-map per glint out, at 1/4 of the input size.

Four encoder stages and a bottleneck, but the decoder climbs back only twice: glints are a few pixels
wide, so a quarter-resolution map is precise enough and far cheaper. With base width 16 and 8 glints it
has 1,897,752 parameters. Layer names and registration order are the research script's (SEED.md), so
its state dicts and Adam states load as they are and it can read ours.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from glint_track.errors import GlintTrackError

#: The glint probability the untrained head predicts everywhere (RetinaNet's prior initialisation). Glints
#: cover well under 1 % of a heat-map; starting at 0.5 spends the first hundreds of steps pushing the background
#: down, which is most of why the research recipe found no glint in 20 demo epochs (docs/benchmarks.md).
GLINT_PRIOR = 0.01


class DoubleConv(nn.Module):
    """(3×3 conv without bias → BatchNorm → ReLU) twice; the bias is redundant before BatchNorm."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class GlintUNet(nn.Module):
    def __init__(self, num_glints: int = 8, base_channels: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        b = base_channels
        self.num_glints = num_glints
        self.base_channels = base_channels
        self.enc1 = DoubleConv(in_channels, b)
        self.enc2 = DoubleConv(b, 2 * b)
        self.enc3 = DoubleConv(2 * b, 4 * b)
        self.enc4 = DoubleConv(4 * b, 8 * b)
        self.bottleneck = DoubleConv(8 * b, 16 * b)
        self.pool = nn.MaxPool2d(2)
        self.up3 = nn.ConvTranspose2d(16 * b, 8 * b, kernel_size=2, stride=2)
        self.dec3 = DoubleConv(16 * b, 8 * b)
        self.up2 = nn.ConvTranspose2d(8 * b, 4 * b, kernel_size=2, stride=2)
        self.dec2 = DoubleConv(8 * b, 4 * b)
        self.out_conv = nn.Conv2d(4 * b, num_glints, kernel_size=1)
        nn.init.constant_(self.out_conv.bias, math.log(GLINT_PRIOR / (1 - GLINT_PRIOR)))

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, label: str) -> GlintUNet:
        """The UNet with the glint count and width its saved weights have, in eval mode."""
        weights = checkpoint["model_state_dict"]
        model = cls(*model_shape(weights, label))  # every shape checked: the model is as large as the file's weights
        model.load_state_dict(weights)
        return model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        e4 = self.enc4(self.pool(e3))
        x = self.bottleneck(self.pool(e4))
        x = self.dec3(torch.cat([self.up3(x), e4], dim=1))
        x = self.dec2(torch.cat([self.up2(x), e3], dim=1))
        return self.out_conv(x)


def model_shape(weights: dict[str, torch.Tensor], label: str) -> tuple[int, int]:
    """(glints, base width) of a UNet state dict, or a one-line error naming what it is not.

    Every tensor is compared with a model of that shape built on the meta device (no memory), so a
    crafted file cannot make us build a model larger than the weights it holds."""
    head, first = weights.get("out_conv.weight"), weights.get("enc1.seq.0.weight")
    if (
        not isinstance(head, torch.Tensor)
        or not isinstance(first, torch.Tensor)
        or head.ndim != 4
        or first.ndim != 4
        or min(head.shape[0], first.shape[0]) < 1
    ):
        raise GlintTrackError(
            f"{label}: its weights are not a glint UNet's (no out_conv/enc1 layers); pass a glint-track checkpoint"
        )
    shape = int(head.shape[0]), int(first.shape[0])
    with torch.device("meta"):
        expected = {k: (tuple(v.shape), v.is_floating_point()) for k, v in GlintUNet(*shape).state_dict().items()}
    got = {k: (tuple(v.shape), v.is_floating_point()) for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if got != expected:
        odd = sorted(set(got) ^ set(expected))
        problem = (
            f"{odd[0]} is {'missing' if odd[0] not in got else 'not one of its layers'}"
            if odd
            else next(
                f"{k} has shape {got[k][0]}, expected {v[0]}" + ("" if got[k][1] == v[1] else " and floating point")
                for k, v in expected.items()
                if got[k] != v
            )
        )
        raise GlintTrackError(
            f"{label}: its weights do not fit a glint UNet of {shape[0]} glints and width {shape[1]} "
            f"({problem}); pass a glint-track or research-script checkpoint"
        )
    return shape


#: glint-track 0.1 (checkpoint format 1) named the same layers differently; old name pattern → new.
_FORMAT1_NAMES = [
    (re.compile(r"^(enc[1-4]|bottleneck)\.(\d)\."), r"\1.seq.\2."),
    (re.compile(r"^up1\.up\."), "up3."),
    (re.compile(r"^up1\.conv\.(\d)\."), r"dec3.seq.\1."),
    (re.compile(r"^up2\.up\."), "up2."),
    (re.compile(r"^up2\.conv\.(\d)\."), r"dec2.seq.\1."),
    (re.compile(r"^head\."), "out_conv."),
]


def canonical_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights under this model's names, from any layout we have written or the research script wrote:
    without the `module.` prefix of (Distributed)DataParallel, and with format-1 names renamed."""
    if weights and all(k.startswith("module.") for k in weights):
        weights = {k[len("module.") :]: v for k, v in weights.items()}
    if "head.weight" in weights:
        renamed = {}
        for key, value in weights.items():
            for pattern, new in _FORMAT1_NAMES:
                key = pattern.sub(new, key)
            renamed[key] = value
        weights = renamed
    return weights


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
