"""The one exception type for bad input: the CLI prints it as one line and exits with code 2."""

import click


class GlintTrackError(click.ClickException):
    """A problem with the user's input, with the fix in the message.

    Exit code 2 matches Click's usage errors, so scripts can tell "you asked for something
    impossible" from a crash (exit 1).
    """

    exit_code = 2
