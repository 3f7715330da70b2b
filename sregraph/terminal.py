"""Where the commands print: results on stdout, progress and errors on stderr."""

from __future__ import annotations

import sys

from rich.console import Console

UNBOUNDED = 10_000
"""Width of stdout when it is not a terminal: wide enough that no table squeezes, folds or cuts a value."""


def results_console() -> Console:
    """Stdout: the terminal's width on a terminal; in a pipe, a file or a CI log, every value in full."""
    return Console() if sys.stdout.isatty() else Console(width=UNBOUNDED)
