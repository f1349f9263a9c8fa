"""SIGTERM ends a run the way Ctrl-C does: as KeyboardInterrupt, so the same `finally`/`except
BaseException` blocks remove staging folders and temp files (a container stop, `kill`, a CI
timeout), instead of the process dying mid-write."""

from __future__ import annotations

import signal
import threading
from typing import Any


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def sigterm_as_interrupt() -> None:
    """Install once, from the main thread (signal handlers cannot be set elsewhere)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)
