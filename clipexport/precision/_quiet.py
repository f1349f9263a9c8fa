"""Helpers shared by the FP16 and INT8 converters."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from typing import Iterator


def exact_name(name: str) -> str:
    """A regular expression matching exactly `name`: ModelOpt reads node names as regexes."""
    return f"^{re.escape(name)}$"


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """The quantizers print per-node logs and tqdm bars; our progress lines say what matters.
    Import the libraries before entering, so their loggers exist."""
    # ModelOpt gives each of its loggers a level and a handler bound to the real stdout at import
    # time, so redirecting streams is not enough: lower every such logger for the duration.
    names = ["", *(n for n in logging.root.manager.loggerDict if n.startswith(("modelopt", "onnxruntime")))]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
