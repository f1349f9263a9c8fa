"""Backends behind one small interface: `run(batch) -> embeddings`, as context managers."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    input_name: str
    output_name: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...
