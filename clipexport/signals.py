"""SIGTERM ends a run the way Ctrl-C does: as KeyboardInterrupt, so the same `finally`/`except
BaseException` blocks remove staging folders and temp files (a container stop, `kill`, a CI
timeout), instead of the process dying mid-write."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator


_installed = False  # whether this process chose SIGTERM-as-Ctrl-C (the CLI does; a library caller may not)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupted_by(exc: KeyboardInterrupt) -> str:
    """What raised an interrupt, as a user calls it: "SIGTERM" (this module's handler, or a
    deferred one), else "Ctrl-C"."""
    return "SIGTERM" if str(exc) == f"signal {signal.SIGTERM.value}" else "Ctrl-C"


def sigterm_as_interrupt(force: bool = False) -> None:
    """Install once, from the main thread (signal handlers cannot be set elsewhere). `force`: take
    SIGTERM back, where this process had chosen it, from a library that installed its own (ray.init's handler exits with status 15
    and no word, skipping every cleanup)."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return
    if (force and _installed) or signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)
        _installed = True


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM until the block ends, then raise it: for a pair of writes that must
    both happen or neither (a dataset shard and the manifest that lists it). Outside the main
    thread, or where no handler can be set, the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            raise KeyboardInterrupt(f"signal {received[0]}")


def ignore_interrupts() -> None:
    """From here on Ctrl-C and SIGTERM do nothing (the main thread only): for a process that has
    already handled one and is exiting with 130."""
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
