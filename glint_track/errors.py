"""The one exception type for bad input: the CLI prints it as one line and exits with code 2."""

from typing import Any

import click


class GlintTrackError(click.ClickException):
    """A problem with the user's input, with the fix in the message.

    Exit code 2 matches Click's usage errors, so scripts can tell "you asked for something
    impossible" from a crash (exit 1).
    """

    exit_code = 2


def shown(value: Any) -> str:
    """A value from a file as an error message may show it: one short line (a tensor by its dtype and
    shape, other values by their repr, cut at 60 characters), whatever the file put there."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."
