"""One epoch: a training pass over the batches, and a validation pass with the loss and the glint metrics.

Loss totals are accumulated on the device and read once at the end, so no step waits for the host.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm import tqdm

from glint_track.data.batches import Batch, Batches
from glint_track.engine import Precision, infer
from glint_track.glints import GlintMetrics, Glints, decode
from glint_track.training.losses import GlintLoss


@dataclass
class Validation:
    """An epoch's validation, as the end of a run reuses it when that epoch's weights are the ones it logs:
    `validate`'s values and every decoded prediction with its ground truth (the threshold curves' input)."""

    epoch: int
    values: dict[str, float]
    predictions: list[tuple[Glints, Glints]]


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


class TrainStep:
    """One optimisation step on a batch: forward under the precision's autocast, the loss, backward and the
    optimizer's update; returns the loss terms (training.graphs replays the same from a CUDA graph).

    Fused Adam on a GPU reads its learning rate from a tensor on the device: a captured step then follows a
    schedule, and eager and replayed steps compute with the very same number (the group keeps a float, which
    checkpoints store)."""

    def __init__(
        self, model: torch.nn.Module, loss_fn: GlintLoss, precision: Precision, optimizer: torch.optim.Optimizer
    ) -> None:
        self.model, self.loss_fn, self.precision, self.optimizer = model, loss_fn, precision, optimizer
        fused_adam = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and optimizer.defaults.get("fused")
        groups = optimizer.param_groups
        self.device_lr = (
            [torch.tensor(float(g["lr"]), device=g["params"][0].device) for g in groups] if fused_adam else []
        )
        self._lr_values = [float(g["lr"]) for g in groups]

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.precision.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast():
            logits = self.model(images)
        terms = self.loss_fn(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.precision.scaler
        scaler.scale(terms["loss"]).backward()
        with self._lr_on_device():
            scaler.step(self.optimizer)
        scaler.update()
        return terms

    def set_device_lr(self) -> None:
        """Copy a changed learning rate (a new epoch's, on a schedule) to the device tensors."""
        for i, (group, lr) in enumerate(zip(self.optimizer.param_groups, self.device_lr)):
            if float(group["lr"]) != self._lr_values[i]:
                self._lr_values[i] = float(group["lr"])
                lr.fill_(self._lr_values[i])

    @contextmanager
    def _lr_on_device(self) -> Iterator[None]:
        if not self.device_lr:
            yield
            return
        self.set_device_lr()
        groups = self.optimizer.param_groups
        floats = [group["lr"] for group in groups]
        for group, lr in zip(groups, self.device_lr):
            group["lr"] = lr
        try:
            yield
        finally:
            for group, value in zip(groups, floats):
                group["lr"] = value


def train_epoch(
    step: TrainStep,
    batches: Batches,
    *,
    desc: str,
    after_step: Callable[[int], None] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    warm_up: bool = False,
) -> dict[str, float]:
    """One optimisation pass over `batches`; returns the mean of each loss term. `after_step(i)` runs
    once each step is launched (the stop check, releasing the checkpoint writer). With `warm_up`, the learning rate
    rises linearly over the pass to the epoch's: a fresh optimizer's first steps move every weight by about the
    learning rate whatever its gradient (Adam normalises them), which undoes much of what a trained model knows."""
    step.model.train()
    totals = LossTotals()
    groups = step.optimizer.param_groups
    base = [group["lr"] for group in groups]
    for i, (images, targets, _) in enumerate(progress_bar(batches, desc)):
        if warm_up:
            for group, lr in zip(groups, base):
                group["lr"] = lr * (i + 1) / len(batches)
        totals.add(step(images, targets), images.shape[0])
        if after_step is not None:
            after_step(i)
    for group, lr in zip(groups, base):
        group["lr"] = lr
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
    predictions: list[tuple[Glints, Glints]] | None = None,
) -> dict[str, float]:
    """The mean of each loss term over `batches` and the glint metrics of the predictions decoded at
    `threshold` against `truth` (the ground truth of every sample, indexed by the batches). Under DDP each
    rank validates its shard; `reduce` (a sum over ranks) and `gather` (rows of every rank) merge them.
    `predictions` receives each batch's (decoded prediction, ground truth), for the threshold curves."""
    totals = LossTotals()
    for logits, targets, index in infer(model, progress_bar(batches, desc), precision):
        totals.add(loss_fn(logits, targets), index.shape[0])
        decoded, expected = decode(logits, threshold), truth.take(index)
        metrics.update(decoded, expected)
        if predictions is not None:
            predictions.append((decoded, expected))
    if reduce is not None and gather is not None:
        metrics.combine(reduce, gather)
    return totals.means(reduce) | metrics.compute()
