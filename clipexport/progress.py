"""Progress reporting for long steps: library functions take a callable, the CLI prints."""

from __future__ import annotations

import time
from typing import Callable

Progress = Callable[[str], None]
# Items finished: (done in this step, total of the run); a progress bar's update.
Advance = Callable[[int, int], None]


def silent(_: str) -> None:
    """The default: library calls print nothing unless asked to."""


class StepPrinter:
    """Prints `[  3.1s] message` lines, so a user sees where a multi-minute export is."""

    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        self.echo(f"[{time.perf_counter() - self.start:6.1f}s] {message}")
