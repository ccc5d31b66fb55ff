"""How counts and errors read in lines a person reads (logs, summaries, tables); imports nothing heavy."""

from __future__ import annotations

import math


def counted(n: int, noun: str) -> str:
    """`1 epoch`, `3 epochs`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def px(error: float, digits: int = 2) -> str:
    """A localisation error in pixels. NaN means there was nothing to measure (no glint was found), which reads
    as that rather than as `nan px`."""
    return f"{error:.{digits}f} px" if math.isfinite(error) else "none found"
