"""What every backend shares: input checks done once before the backend runs (Polygraphy's
`BaseRunner.infer` → `infer_impl`), the finite-output check, and the context-manager protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from clipexport.artifact.manifest import TowerArtifact
from clipexport.errors import BackendError, ClipExportError, InputError, ManifestError, MissingDependencyError


@dataclass(frozen=True)
class BackendOptions:
    """Settings a backend may use; each backend ignores what does not apply to it."""

    providers: Sequence[Any] | None = None  # onnxruntime: provider names or (name, options)
    threads: int | None = None  # onnxruntime: intra-op threads
    cpu_only: bool = False  # onnxruntime: pin the CPU provider (parity is certified against a CPU reference)
    # onnxruntime: let idle intra-op threads spin (lowest latency when the backend has the cores to
    # itself); off when decode workers share the cores (bulk embedding), so waiting threads yield them.
    spin: bool = True
    device: str | None = None  # openvino: CPU, GPU, NPU, AUTO (default CPU, or CLIPEXPORT_OPENVINO_DEVICE)


@dataclass(frozen=True)
class TritonServing:
    """How Triton serves a tower of a backend (a backend module's `TRITON`; None: Triton cannot):
    a `platform` (onnxruntime_onnx, tensorrt_plan) or a Triton `backend` (openvino), and whether
    it serves the engine from `clipexport build` instead of the ONNX graph."""

    platform: str | None = None
    backend: str | None = None
    engine: bool = False
    default_model_filename: str | None = None  # when the Triton backend does not look for model.onnx itself


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
        raise BackendError(
            f"{what} produced NaN/Inf; check the inputs, or verify the graph with: "
            "clipexport verify DIR --precision ..."
        )
    return out


@dataclass(frozen=True)
class Expected:
    """What the manifest promises about one tower, checked on every batch: the embedding width and,
    for a text tower, the token-id range and the longest sequence (`open_backend` sets it)."""

    embed_dim: int
    vocab_size: int | None = None
    max_length: int | None = None


class Runner:
    """One tower's graph on one backend: `run(batch) -> float32 [N, D]`."""

    backend = "base"

    def __init__(self, tower: TowerArtifact):
        spec = tower.inputs[0]
        self.input_name = spec.name
        self.output_name = tower.outputs[0].name
        self.input_dtype = np.dtype(spec.dtype)
        self.fixed_shape = tuple(spec.shape[1:])  # ints are fixed sizes, strings symbolic axes
        self.expected: Expected | None = None
        self._closed = False

    @property
    def ran_on(self) -> str:
        """What actually executes the graph (for reports: never claim a backend that did not run)."""
        return self.backend

    @property
    def output_dim(self) -> int | None:
        """The embedding width the graph or engine declares, where the backend can tell without running it."""
        return None

    def expect(self, expected: Expected) -> None:
        """Hold the runner to the manifest; a graph whose declared width differs is refused now."""
        declared = self.output_dim
        if declared is not None and declared != expected.embed_dim:
            raise ManifestError(
                f"the graph's {self.output_name} output is {declared}-d but the manifest says embed_dim "
                f"{expected.embed_dim}: the manifest was edited or belongs to another model; re-export"
            )
        self.expected = expected

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise InputError("this runtime was closed; load the artifact again (ClipRuntime.load) to keep embedding")
        if not isinstance(batch, np.ndarray):
            raise InputError(f"{self.input_name} must be a numpy array, got {type(batch).__name__}")
        if np.issubdtype(self.input_dtype, np.integer):
            batch = self.check_ids(batch)
        elif batch.dtype != self.input_dtype:
            raise InputError(f"{self.input_name} must be {self.input_dtype}, got {batch.dtype}")
        if batch.ndim != len(self.fixed_shape) + 1 or any(
            isinstance(want, int) and got != want for got, want in zip(batch.shape[1:], self.fixed_shape)
        ):
            raise InputError(
                f"{self.input_name} must have shape [batch, {', '.join(map(str, self.fixed_shape))}], "
                f"got {list(batch.shape)}"
            )
        self._check_shape(batch)
        if not len(batch):
            return np.zeros((0, self.expected.embed_dim if self.expected else 0), np.float32)
        out = self._run_impl(batch)
        if self.expected is not None and (out.ndim != 2 or out.shape[1] != self.expected.embed_dim):
            raise BackendError(
                f"the {self.ran_on} {self.output_name} output has shape {list(out.shape)}, not "
                f"[{len(batch)}, {self.expected.embed_dim}] as the manifest says; re-export the artifact"
            )
        return require_finite(out, f"the {self.ran_on} {self.output_name} output").astype(np.float32, copy=False)

    def check_ids(self, ids: np.ndarray) -> np.ndarray:
        """Token ids: integers (never bools or floats, which would be cut silently), inside the
        vocabulary, no longer than the context; one InputError line otherwise."""
        if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
            raise InputError(
                f"{self.input_name} must be integer token ids ({self.input_dtype}), got {ids.dtype}; "
                "pass texts, or the ids the artifact's tokenizer makes"
            )
        if ids.ndim == 2 and self.expected is not None and len(ids):
            limit, length = self.expected.vocab_size, self.expected.max_length
            if length is not None and ids.shape[1] > length:
                raise InputError(
                    f"{self.input_name} has {ids.shape[1]} tokens per row, more than the model's context of {length}"
                )
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or (limit is not None and high >= limit):
                bad = low if low < 0 else high
                raise InputError(
                    f"{self.input_name} holds token id {bad}, outside the vocabulary (0..{(limit or 0) - 1})"
                )
        return ids.astype(self.input_dtype, copy=False)

    def _check_shape(self, batch: np.ndarray) -> None:
        """Backend-specific limits (a TensorRT profile); the common checks are done."""

    def _run_impl(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True
        self._close_impl()

    def _close_impl(self) -> None:
        """Release the backend's session or engine."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
