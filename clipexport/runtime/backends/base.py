"""What every backend shares: input checks done once before the backend runs (Polygraphy's
`BaseRunner.infer` → `infer_impl`), the finite-output check, and the context-manager protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from clipexport.artifact.manifest import TowerArtifact
from clipexport.errors import BackendError, ClipExportError, InputError, MissingDependencyError


@dataclass(frozen=True)
class BackendOptions:
    """Settings a backend may use; each backend ignores what does not apply to it."""

    providers: Sequence[Any] | None = None  # onnxruntime: provider names or (name, options)
    threads: int | None = None  # onnxruntime: intra-op threads
    cpu_only: bool = False  # onnxruntime: pin the CPU provider (parity is certified against a CPU reference)


def missing(*modules: str, purpose: str) -> ClipExportError | None:
    """The install hint for the first of `modules` that does not import, or None: a backend's
    `unavailable()` for the libraries it needs."""
    from clipexport._deps import require

    try:
        for module in modules:
            require(module, purpose)
    except MissingDependencyError as exc:
        return exc
    return None


def require_finite(out: np.ndarray, what: str) -> np.ndarray:
    """NaN/Inf embeddings are never returned: FP16 overflow or a broken engine shows up here."""
    if not np.all(np.isfinite(out)):
        raise BackendError(f"{what} produced NaN/Inf; check the inputs, or verify the graph with: "
                           "clipexport verify DIR --precision ...")
    return out


class Runner:
    """One tower's graph on one backend: `run(batch) -> float32 [N, D]`."""

    backend = "base"

    def __init__(self, tower: TowerArtifact):
        spec = tower.inputs[0]
        self.input_name = spec.name
        self.output_name = tower.outputs[0].name
        self.input_dtype = np.dtype(spec.dtype)
        self.fixed_shape = tuple(spec.shape[1:])  # ints are fixed sizes, strings symbolic axes

    @property
    def ran_on(self) -> str:
        """What actually executes the graph (for reports: never claim a backend that did not run)."""
        return self.backend

    def run(self, batch: np.ndarray) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            raise InputError(f"{self.input_name} must be a numpy array, got {type(batch).__name__}")
        if batch.dtype != self.input_dtype:
            raise InputError(f"{self.input_name} must be {self.input_dtype}, got {batch.dtype}")
        if batch.ndim != len(self.fixed_shape) + 1 or any(
                isinstance(want, int) and got != want for got, want in zip(batch.shape[1:], self.fixed_shape)):
            raise InputError(f"{self.input_name} must have shape [batch, {', '.join(map(str, self.fixed_shape))}], "
                             f"got {list(batch.shape)}")
        self._check_shape(batch)
        if not len(batch):
            return np.zeros((0, 0), np.float32)
        out = self._run_impl(batch)
        return require_finite(out, f"the {self.ran_on} {self.output_name} output").astype(np.float32, copy=False)

    def _check_shape(self, batch: np.ndarray) -> None:
        """Backend-specific limits (a TensorRT profile); the common checks are done."""

    def _run_impl(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
