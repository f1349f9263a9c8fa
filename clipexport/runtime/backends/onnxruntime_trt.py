"""ONNX Runtime's TensorRT execution provider: the ONNX graphs, compiled by TensorRT inside ONNX
Runtime, with the engines and timing cache kept in the artifact (engines/ort-trt/), so the
minutes-long first build happens once per GPU, not once per process.

It runs on TensorRT or not at all: when the provider cannot start, this backend fails with one
line instead of letting ONNX Runtime fall back to CUDA or the CPU under its name.
"""

from __future__ import annotations

from pathlib import Path

from clipexport._deps import require
from clipexport.artifact.layout import ORT_TRT_CACHE_DIR
from clipexport.artifact.manifest import Manifest, Tower, check_graph_files
from clipexport.artifact.precision import Precision
from clipexport.errors import ClipExportError, DeviceUnavailableError, MissingDependencyError
from clipexport.runtime.backends.base import BackendOptions, TritonServing
from clipexport.runtime.backends.onnxruntime import (
    CUDA,
    PURPOSE,
    TENSORRT,
    OnnxRuntimeBackend,
    Provider,
    provider_usable,
)

# Triton serves ONNX graphs with its onnxruntime backend, or engines with tensorrt_plan: serve
# with --platform onnxruntime or tensorrt.
TRITON: TritonServing | None = None


def tensorrt_provider(cache_dir: Path) -> Provider:
    # No trt_fp16_enable: the FP16 and INT8 graphs carry their own types (FP32 LayerNorms, Q/DQ
    # scales); the flag would let a weakly typed build lower the ops we keep in FP32, and
    # TensorRT 11 (strongly typed only) has no FP16 builder flag at all.
    return (
        TENSORRT,
        {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache_dir),
        },
    )


def unavailable() -> ClipExportError | None:
    try:
        ort = require("onnxruntime", PURPOSE)
    except MissingDependencyError as exc:
        return exc
    if TENSORRT not in ort.get_available_providers():
        return MissingDependencyError(
            "this onnxruntime has no TensorRT execution provider (install onnxruntime-gpu on x86_64, "
            "or NVIDIA's build on Jetson); use --backend onnxruntime here"
        )
    if not provider_usable(TENSORRT):
        return DeviceUnavailableError(
            "onnxruntime's TensorRT provider cannot load its libraries here (needs an NVIDIA driver and "
            "TensorRT 10/11: pip install 'clipexport[tensorrt]'); use --backend onnxruntime on this machine"
        )
    return None


class OnnxRuntimeTensorRTBackend(OnnxRuntimeBackend):
    backend = "onnxruntime-trt"


def open_tower(
    root: Path, manifest: Manifest, tower: Tower, precision: Precision, options: BackendOptions
) -> OnnxRuntimeTensorRTBackend:
    problem = unavailable()
    if problem:
        raise problem
    graph = check_graph_files(root, manifest.tower(tower).graph(precision))
    cache = root / ORT_TRT_CACHE_DIR
    cache.mkdir(parents=True, exist_ok=True)
    # CUDA after TensorRT for the few nodes TensorRT leaves to ONNX Runtime; the backend refuses
    # to run if TensorRT itself did not start (OnnxRuntimeBackend checks what was registered).
    return OnnxRuntimeTensorRTBackend(
        graph, manifest.tower(tower), providers=[tensorrt_provider(cache), CUDA], threads=options.threads
    )
