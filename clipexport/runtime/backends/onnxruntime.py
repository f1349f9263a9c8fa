"""ONNX Runtime backend: TensorRT or CUDA execution providers when present, else CPU."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clipexport._deps import require
from clipexport.errors import InputError
from clipexport.manifest import TowerArtifact

# Preference order; only those the installed onnxruntime offers are used.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


_ORT_TYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
              "tensor(int64)": np.dtype(np.int64), "tensor(int32)": np.dtype(np.int32)}


# onnxruntime-gpu lists the GPU providers even where their libraries cannot load (no driver,
# no TensorRT), then prints pages of errors on every session; probe the libraries instead.
_PROVIDER_LIBRARIES = {
    "TensorrtExecutionProvider": ("libcuda.so.1", "libnvinfer.so.10"),
    "CUDAExecutionProvider": ("libcuda.so.1",),
}


@lru_cache(maxsize=None)
def _loadable(library: str) -> bool:
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


Provider = str | tuple[str, dict[str, Any]]  # a name, or (name, provider options)


def tensorrt_provider(cache_dir: Path, precision: str) -> Provider:
    """ONNX Runtime's TensorRT provider with its engine and timing caches in the artifact folder,
    so the minutes-long first build happens once per GPU, not once per process."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    return ("TensorrtExecutionProvider", {
        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache_dir),
        # FP16 kernels for the fp16 graph only; Q/DQ graphs carry their own precision.
        "trt_fp16_enable": precision == "fp16",
    })


def choose_providers(available: Sequence[str], requested: Sequence[Provider] | None = None) -> list[Provider]:
    if requested:
        missing = [p if isinstance(p, str) else p[0] for p in requested
                   if (p if isinstance(p, str) else p[0]) not in available]
        if missing:
            raise InputError(f"onnxruntime provider(s) {', '.join(missing)} not available (have: {', '.join(available)})")
        return list(requested)
    usable = [p for p in PREFERRED_PROVIDERS if p in available
              and all(_loadable(lib) for lib in _PROVIDER_LIBRARIES.get(p, ()))]
    return usable or ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    def __init__(self, graph: Path | bytes, tower: TowerArtifact, providers: Sequence[Provider] | None = None,
                 threads: int | None = None):
        ort = require("onnxruntime", "running ONNX graphs")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: provider fallbacks are decided above
        if threads:
            options.intra_op_num_threads = threads
        self.providers = choose_providers(ort.get_available_providers(), providers)
        # bytes: a graph held in memory (the precision step evaluates candidates without writing them).
        source = graph if isinstance(graph, bytes) else str(graph)
        self.session = ort.InferenceSession(source, sess_options=options, providers=self.providers)
        self.input_name = tower.inputs[0].name
        self.output_name = tower.outputs[0].name
        self.input_dtype = np.dtype(tower.inputs[0].dtype)
        self.fixed_shape = tuple(tower.inputs[0].shape[1:])
        # An FP16 graph built with FP16 I/O (`quantize --io-dtype float16`) still takes and gives
        # float32 here: callers never see the graph's boundary type.
        self.graph_input_dtype = _ORT_TYPES.get(self.session.get_inputs()[0].type, self.input_dtype)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != self.input_dtype:
            raise InputError(f"{self.input_name} must be {self.input_dtype}, got {batch.dtype}")
        if len(batch.shape) != len(self.fixed_shape) + 1 or any(
                isinstance(want, int) and got != want for got, want in zip(batch.shape[1:], self.fixed_shape)):
            raise InputError(f"{self.input_name} must have shape [batch, {', '.join(map(str, self.fixed_shape))}], got {list(batch.shape)}")
        if self.graph_input_dtype != self.input_dtype:
            batch = batch.astype(self.graph_input_dtype)
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self.session = None

    def __enter__(self) -> "OnnxRuntimeBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
