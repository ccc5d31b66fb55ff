"""The `glint-track` command line: parses options and calls the library; no training logic lives here."""

from glint_track.cli.main import main, run

__all__ = ["main", "run"]
