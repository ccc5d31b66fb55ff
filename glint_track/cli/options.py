"""Option types and defaults the commands share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from glint_track.constants import MAX_SIDE
from glint_track.training.config import TrainConfig

D = TrainConfig()  # defaults live in TrainConfig only


def stacked(*specs: Callable[[Callable], Callable]) -> Callable[[Callable], Callable]:
    def apply(f: Callable) -> Callable:
        for spec in reversed(specs):
            f = spec(f)
        return f

    return apply


class GpuList(click.ParamType):
    name = "N[,N…]"

    def convert(self, value: Any, param: Any, ctx: Any) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            gpus = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            gpus = []
        if not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
            self.fail(f"{value!r} is not a list of GPU numbers: use e.g. 0,1", param, ctx)
        return gpus


#: A detection threshold: a probability strictly between 0 and 1.
PROBABILITY = click.FloatRange(0, 1, min_open=True, max_open=True)


def threshold_option(what: str) -> Callable[[Callable], Callable]:
    """`--threshold`, as evaluate, predict and export take it: the peak probability from which `what`."""
    return click.option(
        "--threshold",
        type=PROBABILITY,
        default=D.threshold,
        show_default=True,
        help=f"Peak probability from which {what}.",
    )


class Size(click.ParamType):
    """H or HxW, e.g. 256 or 240x320."""

    name = "H[xW]"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            parts = [int(v) for v in str(value).lower().split("x")]
        except ValueError:
            parts = []
        if len(parts) not in (1, 2) or not 1 <= min(parts) <= max(parts) <= MAX_SIDE:
            self.fail(f"{value!r} is not a size from 1 to {MAX_SIDE}: use H or HxW, e.g. 256 or 240x320", param, ctx)
        return (parts[0], parts[-1])
