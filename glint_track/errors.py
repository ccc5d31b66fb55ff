"""The one exception type for bad input; the CLI prints it as one line and exits with its exit code."""

from typing import Any

#: Exit status for input the user can fix, the same as Click's usage errors: scripts can tell "you asked for
#: something impossible" from a crash (exit 1).
EXIT_BAD_INPUT = 2


class GlintTrackError(Exception):
    """A problem with the user's input (a file, a setting, a run ID), with the fix in the message."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def format_message(self) -> str:
        return self.message


def shown(value: Any) -> str:
    """A value from a file as an error message may show it: one short line (a tensor by its dtype and
    shape, other values by their repr, cut at 60 characters), whatever the file put there."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."
