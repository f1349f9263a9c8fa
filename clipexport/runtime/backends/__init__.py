"""The backend registry. A backend is a module with the same two verbs (the `safetensors`
bindings' numpy/torch/flax modules are the model):

- `unavailable() -> ClipExportError | None`: why this machine cannot run it (one line with the fix), or None;
- `open_tower(root, manifest, tower, precision, options) -> Runner`: one tower's graph, ready to run.

A module may also say how Triton serves its towers (`TRITON`, a `TritonServing`; absent: Triton
cannot). Adding a backend (coreml, ...): one module with those verbs, one member in `BackendKind`,
one line in `_MODULES`; every CLI `--backend` / `triton --platform` choice derives from them.
"""

from __future__ import annotations

import importlib
from enum import Enum
from pathlib import Path
from types import ModuleType

from clipexport.artifact.manifest import Manifest, Tower
from clipexport.artifact.precision import Precision
from clipexport.errors import ClipExportError, InputError
from clipexport.runtime.backends.base import BackendOptions, Expected, Runner, TritonServing


class BackendKind(str, Enum):
    ONNXRUNTIME = "onnxruntime"  # the ONNX graphs on ONNX Runtime (CUDA provider when usable, else CPU)
    TENSORRT = "tensorrt"  # the engines from `clipexport build`
    ONNXRUNTIME_TRT = "onnxruntime-trt"  # the ONNX graphs on ONNX Runtime's TensorRT provider
    OPENVINO = "openvino"  # the ONNX graphs on OpenVINO (Intel CPUs, iGPUs, NPUs)

    def __str__(self) -> str:  # f-strings and messages show the value, on every Python
        return self.value

    @classmethod
    def parse(cls, name: "str | BackendKind", option: str = "--backend") -> "BackendKind":
        try:
            return cls(name.lower() if isinstance(name, str) else name)
        except ValueError:
            raise InputError(
                f"unknown backend '{name}' for {option} (expected one of: {', '.join(b.value for b in cls)})"
            ) from None


_MODULES = {
    BackendKind.ONNXRUNTIME: "clipexport.runtime.backends.onnxruntime",
    BackendKind.TENSORRT: "clipexport.runtime.backends.tensorrt",
    BackendKind.ONNXRUNTIME_TRT: "clipexport.runtime.backends.onnxruntime_trt",
    BackendKind.OPENVINO: "clipexport.runtime.backends.openvino",
}


def backend_module(kind: BackendKind | str) -> ModuleType:
    return importlib.import_module(_MODULES[BackendKind.parse(kind)])


def triton_serving(kind: BackendKind | str) -> TritonServing | None:
    """How Triton serves this backend's towers (the module's `TRITON`), or None where it cannot."""
    return getattr(backend_module(kind), "TRITON", None)


def unavailable(kind: BackendKind | str) -> ClipExportError | None:
    """Why `kind` cannot run here (an error to raise or report), or None."""
    return backend_module(kind).unavailable()


def require_available(kind: BackendKind | str) -> None:
    """Raise the one-line reason `kind` cannot run here: checked before any slow work starts."""
    problem = unavailable(kind)
    if problem is not None:
        raise problem


def open_backend(
    root: Path,
    manifest: Manifest,
    tower: Tower,
    precision: Precision,
    backend: BackendKind = BackendKind.ONNXRUNTIME,
    options: BackendOptions | None = None,
) -> Runner:
    """One tower's graph at one precision on one backend; the backend fails with one line when it
    cannot run what was asked, instead of quietly running something else."""
    chosen = precision
    manifest.tower(tower).graph(chosen)  # a clear error when the precision was never made
    module = backend_module(backend)
    if options is not None and options.device and not getattr(module, "TAKES_DEVICE", False):
        takes = [k.value for k in BackendKind if getattr(backend_module(k), "TAKES_DEVICE", False)]
        raise InputError(f"--device applies to --backend {' or '.join(takes)}; {backend} picks its device itself")
    runner = module.open_tower(Path(root), manifest, tower, chosen, options or BackendOptions())
    text = tower is Tower.TEXT
    try:
        runner.expect(
            Expected(
                manifest.embed_dim,
                manifest.tokenizer.vocab_size if text else None,
                manifest.tokenizer.context_length if text else None,
            )
        )
    except BaseException:
        runner.close()
        raise
    return runner


__all__ = [
    "BackendKind",
    "BackendOptions",
    "Runner",
    "TritonServing",
    "open_backend",
    "triton_serving",
    "unavailable",
    "require_available",
    "backend_module",
]
