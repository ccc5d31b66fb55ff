"""What training and inference share: the device, the precision policy and running the model over batches.

Inference (evaluate, predict) uses this module, never the training loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from glint_track.data.batches import Batch
from glint_track.data.glint_file import GlintData
from glint_track.errors import GlintTrackError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise GlintTrackError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GlintTrackError(f"--device {name}: no CUDA GPU is available here; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GlintTrackError(
                f"--device {name}: only {torch.cuda.device_count()} GPU(s) here; use cuda:0 … "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
    return device


@dataclass
class Precision:
    """Autocast dtype (None: fp32) and the gradient scaler that fp16 needs (a no-op otherwise)."""

    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    channels_last: bool

    @classmethod
    def resolve(cls, name: str, device: torch.device, channels_last: bool) -> Precision:
        """`auto` is bf16 where the hardware computes it natively (CUDA GPUs from Ampere on, CPUs with
        AVX512-BF16 or AMX: about 1.6× faster on such a CPU), fp32 elsewhere."""
        if name == "auto":
            name = "bf16" if _native_bf16(device) else "fp32"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        return cls(device.type, dtype, scaler, channels_last)

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    def autocast(self) -> torch.autocast:
        """Without autocast's weight-cast cache: CUDA graph capture requires it off (training.graphs), and a
        forward pass casts each weight once anyway."""
        return torch.autocast(
            self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None, cache_enabled=False
        )


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu_checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the getattr
    return device.type == "cpu" and any(getattr(torch.cpu, check, lambda: False)() for check in cpu_checks)


def predict_samples(
    model: torch.nn.Module, data: GlintData, index: torch.Tensor, precision: Precision, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images N×1×H×W, logits) for a few samples, for pictures."""
    model.eval()
    images = (data.images[index].unsqueeze(1).float() / 255.0).to(device)
    with torch.no_grad(), precision.autocast():
        logits = model(images.contiguous(memory_format=torch.channels_last) if precision.channels_last else images)
    return images, logits.float()


def infer(model: torch.nn.Module, batches: Iterable[Batch], precision: Precision) -> Iterator[Batch]:
    """(logits, target heat-maps, sample indices) of each batch, in eval mode without gradients."""
    model.eval()
    for images, targets, index in batches:
        if precision.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), precision.autocast():  # closed before yielding: the caller's grad mode is its own
            logits = model(images)
        yield logits, targets, index
