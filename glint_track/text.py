"""How counts and errors read in lines a person reads (logs, summaries, tables); imports nothing heavy."""

from __future__ import annotations

import math


def counted(n: int, noun: str) -> str:
    """`1 epoch`, `3 epochs`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def glint_error(mean: float, median: float, noun: str = "mean glint error") -> str:
    """`mean glint error 0.24 px (median 0.22 px)`, or `no glint found` when there was nothing to measure."""
    if not math.isfinite(mean):
        return "no glint found"
    return f"{noun} {px(mean)} (median {px(median)})"


def px(error: float, digits: int = 2) -> str:
    """A localisation error in pixels. NaN means there was nothing to measure (no glint was found), which reads
    as that rather than as `nan px`."""
    return f"{error:.{digits}f} px" if math.isfinite(error) else "none found"
