"""One epoch: a training pass over the batches, and a validation pass with the loss and the glint metrics.

Loss totals are accumulated on the device and read once at the end, so no step waits for the host.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

import torch
from tqdm import tqdm

from glint_track.data.batches import Batch, Batches
from glint_track.engine import Precision, infer
from glint_track.glints import GlintMetrics, Glints, decode
from glint_track.training.losses import GlintLoss


class LossTotals:
    """Sample-weighted sums of each loss term, on the device; `means` reads them once."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, terms: dict[str, torch.Tensor], n: int) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0) + value.detach() * n
        self.count += n

    def means(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """The mean of each term; `reduce` sums the totals over DDP ranks, so every rank reports the mean
        over all samples."""
        names = list(self.sums)
        device = self.sums[names[0]].device
        totals = torch.stack([self.sums[n].float() for n in names] + [torch.tensor(float(self.count), device=device)])
        totals_list = (reduce(totals) if reduce is not None else totals).tolist()
        return {name: total / totals_list[-1] for name, total in zip(names, totals_list)}


def progress_bar(batches: Iterable[Batch], desc: str) -> Iterable[Batch]:
    """A progress bar on a terminal; the batches as they are otherwise (log files get the epoch lines)."""
    return tqdm(batches, desc=desc, leave=False, disable=not sys.stderr.isatty(), unit="batch")


def train_epoch(
    model: torch.nn.Module,
    batches: Batches,
    loss_fn: GlintLoss,
    precision: Precision,
    optimizer: torch.optim.Optimizer,
    *,
    desc: str,
    after_step: Callable[[int], None] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """One optimisation pass over `batches`; returns the mean of each loss term. `after_step(step)` runs
    once each step is launched (the stop check, releasing the checkpoint writer)."""
    model.train()
    totals = LossTotals()
    for step, (images, targets, _) in enumerate(progress_bar(batches, desc)):
        if precision.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            logits = model(images)
        terms = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(terms["loss"]).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
        totals.add(terms, images.shape[0])
        if after_step is not None:
            after_step(step)
    return totals.means(reduce)


def validate(
    model: torch.nn.Module,
    batches: Batches,
    loss_fn: GlintLoss,
    precision: Precision,
    metrics: GlintMetrics,
    truth: Glints,
    threshold: float,
    *,
    desc: str,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """The mean of each loss term over `batches` and the glint metrics of the predictions decoded at
    `threshold` against `truth` (the ground truth of every sample, indexed by the batches). Under DDP each
    rank validates its shard; `reduce` (a sum over ranks) and `gather` (rows of every rank) merge them."""
    totals = LossTotals()
    for logits, targets, index in infer(model, progress_bar(batches, desc), precision):
        totals.add(loss_fn(logits, targets), index.shape[0])
        metrics.update(decode(logits, threshold), truth.take(index))
    if reduce is not None and gather is not None:
        metrics.combine(reduce, gather)
    return totals.means(reduce) | metrics.compute()
