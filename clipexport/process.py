"""Process plumbing shared by every step that starts helpers (decode workers, tritonserver)."""

from __future__ import annotations

import signal


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send `signum` to this process when its parent dies (prctl PR_SET_PDEATHSIG),
    even on SIGKILL of the parent; a no-op where prctl is not there."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, int(signum))
    except (OSError, AttributeError):
        pass
