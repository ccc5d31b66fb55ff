"""The glint UNet: 1 grayscale channel in, one logit heat-map per glint out, at 1/4 of the input size.

Four encoder stages and a bottleneck, but the decoder climbs back only twice: glints are a few pixels
wide, so a quarter-resolution map is precise enough and far cheaper. With base width 16 and 8 glints it
has 1,897,752 parameters, the same as the research script's model.
"""

from __future__ import annotations

import torch
from torch import nn

from glint_track.errors import GlintTrackError


class DoubleConv(nn.Sequential):
    """(3×3 conv without bias → BatchNorm → ReLU) twice; the bias is redundant before BatchNorm."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """2× transpose-conv upsampling, concatenation with the encoder skip, then a DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = DoubleConv(out_ch * 2, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


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
        self.up1 = Up(16 * b, 8 * b)
        self.up2 = Up(8 * b, 4 * b)
        self.head = nn.Conv2d(4 * b, num_glints, kernel_size=1)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, label: str) -> GlintUNet:
        """The UNet with the glint count and width its saved weights have, in eval mode."""
        weights = checkpoint["model_state_dict"]
        if "head.weight" not in weights or "enc1.0.weight" not in weights:
            raise GlintTrackError(f"{label}: its weights are not a glint UNet's (no head/enc1 layers); pass a glint-track checkpoint")
        model = cls(num_glints=weights["head.weight"].shape[0], base_channels=weights["enc1.0.weight"].shape[0])
        model.load_state_dict(weights)
        return model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        e4 = self.enc4(self.pool(e3))
        x = self.bottleneck(self.pool(e4))
        x = self.up1(x, e4)
        x = self.up2(x, e3)
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
