"""Training steps replayed from a CUDA graph.

At batch 16 a UNet step is a few hundred small kernels, and launching them one by one from Python takes longer
than the GPU takes to run them. A CUDA graph records them once and replays them with a single launch. The numbers
are the same as without the graph: the same kernels run on the same data (tests/system/test_gpu.py).

`GraphedStep` captures the whole step (forward, loss, backward, Adam's update): the training thread then launches
one graph per batch and is free for everything else (opening the run, writing checkpoints). Where the rest of the
step cannot be captured (fp16's loss scaling reads the gradients' overflow flag on the host; SGD), `GraphedForward`
captures the model's forward and backward only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from glint_track.engine import Precision
from glint_track.training.epoch import TrainStep
from glint_track.training.losses import GlintLoss

log = logging.getLogger(__name__)

#: Eager steps run on the first batch before capturing: they create autograd's buffers and Adam's moments,
#: which must exist outside the graph (PyTorch's whole-network capture recipe uses 3).
WARMUP_STEPS = 3


def whole_step_capturable(optimizer: torch.optim.Optimizer, precision: Precision) -> bool:
    """Adam or AdamW, fused (their update reads the step count and learning rate on the GPU), without fp16's loss
    scaling: then the whole step can be captured."""
    fused = bool(optimizer.defaults.get("fused"))
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and fused and not precision.scaler.is_enabled()


class GraphedStep(TrainStep):
    """The whole training step on full batches replayed from one CUDA graph, captured at the first full batch;
    other batches (the last, partial one of an epoch) run eagerly, as does everything if capturing fails."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: GlintLoss,
        precision: Precision,
        optimizer: torch.optim.Optimizer,
        batch_size: int,
    ) -> None:
        super().__init__(model, loss_fn, precision, optimizer)
        self.batch_size = batch_size
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.failed or images.shape[0] != self.batch_size:
            return super().__call__(images, targets)
        if self.graph is None:
            self._capture(images, targets)
            if self.graph is None:
                return super().__call__(images, targets)
        self.images.copy_(images)
        self.targets.copy_(targets)
        self.set_device_lr()  # a schedule's new learning rate, read by the graph's update
        self.graph.replay()
        return self.terms

    def _capture(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        """Record the step on copies of this batch. The warm-up steps move the weights, BatchNorm statistics and
        Adam's moments, so they are put back: the run trains exactly as it would without the graph."""
        saved = _Snapshot(self.model, self.optimizer)
        self.images, self.targets = images.detach().clone(), targets.detach().clone()
        try:
            with _reported(self, "whole training step"):
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(WARMUP_STEPS):
                        super().__call__(self.images, self.targets)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                # thread_local: another thread (the one opening the run) may call CUDA meanwhile without breaking it
                with _capturable(self.optimizer), torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self.terms = super().__call__(self.images, self.targets)
                self.graph = graph
        finally:
            saved.restore()


@contextmanager
def _reported(owner: GraphedStep | GraphedForward, what: str) -> Iterator[None]:
    """Capture in the block, logged with its time; a RuntimeError (an op a graph cannot hold) turns graphs off for
    the run, said once: it trains without them."""
    start = time.perf_counter()
    try:
        yield
    except RuntimeError as e:
        owner.failed = True
        log.warning("CUDA graphs are off for this run (%s); training runs without them", str(e).splitlines()[0])
    else:
        log.info(
            "CUDA graph of the %s captured for batches of %d (%.1f s)",
            what,
            owner.batch_size,
            time.perf_counter() - start,
        )


@contextmanager
def _capturable(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Mark the parameter groups capturable while capturing (PyTorch refuses to capture a step otherwise). Fused
    Adam computes the same either way; outside a capture the flag only makes PyTorch warn, so it is put back."""
    previous = [group["capturable"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["capturable"] = True
    try:
        yield
    finally:
        for group, value in zip(optimizer.param_groups, previous):
            group["capturable"] = value


class _Snapshot:
    """The weights, buffers and optimizer state before the warm-up steps, put back in place afterwards (the graph
    holds their addresses); optimizer state the warm-up created is zeroed, as a fresh Adam's is."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        self.saved = [(t, t.detach().clone()) for t in (*model.parameters(), *model.buffers(), *state)]
        self.had_state = {id(p) for p, s in optimizer.state.items() if s}

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, value in self.saved:
                tensor.copy_(value)
            for param, state in self.optimizer.state.items():
                if id(param) not in self.had_state:
                    for value in state.values():
                        if torch.is_tensor(value):
                            value.zero_()


class _Forward(nn.Module):
    """The model behind a module of its own: capturing replaces the forward of the module it is given, and
    the model itself must keep its plain forward (pictures, evaluation, checkpoints use it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


class GraphedForward(nn.Module):
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
        with _reported(self, "training forward/backward"):
            self.graphed = torch.cuda.make_graphed_callables(_Forward(self.model), (images.detach().clone(),))
        with torch.no_grad():
            for saved, buffer in zip(buffers, self.model.buffers()):
                buffer.copy_(saved)
