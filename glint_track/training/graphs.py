"""Training steps replayed from a CUDA graph.

At batch 16 a UNet step is a few hundred small kernels, and launching them one by one from Python takes
longer than the GPU takes to run them. A CUDA graph records the forward and backward pass once and replays
them with a single launch; the loss and the optimizer step stay eager (a handful of kernels). The numbers
are the same as without the graph: the same kernels run on the same data.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

log = logging.getLogger(__name__)


class _Forward(nn.Module):
    """The model behind a module of its own: capturing replaces the forward of the module it is given, and
    the model itself must keep its plain forward (pictures, evaluation, checkpoints use it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


class GraphedSteps(nn.Module):
    """`model` whose training forward/backward on full batches is replayed from a CUDA graph, captured at the
    first full batch; other batches (the last partial one of an epoch) and evaluation run the model as it is.
    Autocast must run with cache_enabled=False (Precision.autocast does), as graph capture requires."""

    def __init__(self, model: nn.Module, batch_size: int) -> None:
        super().__init__()
        self.model, self.batch_size = model, batch_size
        self.graphed: nn.Module | None = None
        self.failed = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()) or self.failed or images.shape[0] != self.batch_size:
            return self.model(images)
        if self.graphed is None:
            self._capture(images)
        return self.graphed(images) if self.graphed is not None else self.model(images)

    def _capture(self, images: torch.Tensor) -> None:
        """Record the graph on a copy of this batch. The warm-up passes that capturing runs move the
        BatchNorm statistics, so they are put back: the run trains exactly as it would without the graph."""
        buffers = [b.clone() for b in self.model.buffers()]
        start = time.perf_counter()
        try:
            self.graphed = torch.cuda.make_graphed_callables(_Forward(self.model), (images.detach().clone(),))
            log.info(
                "CUDA graph of the training step captured for batches of %d (%.1f s)",
                self.batch_size,
                time.perf_counter() - start,
            )
        except RuntimeError as e:  # an op the graph cannot hold: train as before, say so once
            self.failed = True
            log.warning("CUDA graphs are off for this run (%s); training runs without them", str(e).splitlines()[0])
        with torch.no_grad():
            for saved, buffer in zip(buffers, self.model.buffers()):
                buffer.copy_(saved)
