"""ONNX Runtime backend: the CUDA execution provider when its libraries load, else the CPU."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clipexport._deps import require
from clipexport.artifact.manifest import Manifest, Tower, TowerArtifact, check_graph_files
from clipexport.artifact.precision import Precision, Target
from clipexport.errors import BackendError, ClipExportError, DeviceUnavailableError, ManifestError, first_line
from clipexport.runtime.backends.base import BackendOptions, Runner, TritonServing, missing

PURPOSE = "running ONNX graphs"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# What a plain `onnxruntime` backend tries, best first. TensorRT's provider is its own backend
# (onnxruntime-trt): its first run builds engines for minutes, which nobody should get by surprise.
PREFERRED_PROVIDERS = (CUDA, CPU)
TRITON = TritonServing(platform="onnxruntime_onnx")

_ORT_TYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
}

# onnxruntime-gpu lists the GPU providers even where their libraries cannot load (no driver, no
# TensorRT), then prints pages of errors on every session; probe the libraries instead. TensorRT
# 10 (JetPack 6) and 11 (current) have different sonames; either will do.
PROVIDER_LIBRARIES: dict[str, tuple[tuple[str, ...], ...]] = {
    TENSORRT: (("libcuda.so.1",), ("libnvinfer.so.11", "libnvinfer.so.10")),
    CUDA: (("libcuda.so.1",),),
}

Provider = str | tuple[str, dict[str, Any]]  # a name, or (name, provider options)


@lru_cache(maxsize=None)
def _loadable(library: str) -> bool:
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def provider_usable(name: str) -> bool:
    """The provider's libraries load here (each group: any one of its alternatives)."""
    return all(any(_loadable(lib) for lib in group) for group in PROVIDER_LIBRARIES.get(name, ()))


def _name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def choose_providers(available: Sequence[str], requested: Sequence[Provider] | None = None) -> list[Provider]:
    if requested:
        missing = [_name(p) for p in requested if _name(p) not in available]
        if missing:
            raise DeviceUnavailableError(
                f"onnxruntime provider(s) {', '.join(missing)} not available in this "
                f"onnxruntime (have: {', '.join(available)})"
            )
        unusable = [_name(p) for p in requested if not provider_usable(_name(p))]
        if unusable:
            raise DeviceUnavailableError(
                f"onnxruntime provider(s) {', '.join(unusable)} cannot load their libraries "
                "here (no NVIDIA driver / TensorRT?); use the CPU provider on this machine"
            )
        return list(requested)
    usable = [p for p in PREFERRED_PROVIDERS if p in available and provider_usable(p)]
    return usable or [CPU]


def unavailable() -> ClipExportError | None:
    return missing("onnxruntime", purpose=PURPOSE)


_LEVELS = ("basic", "extended")  # lowest first; None: ONNX Runtime's default (all)


def graph_optimization(precision: Precision, target: Target | None) -> str | None:
    """The highest graph optimisation that runs this graph correctly here (None: the default).

    - Q/DQ graphs with TensorRT's placement (FP16 between the Q/DQ pairs): "extended".
      onnxruntime 1.24 segfaults while creating a CPU session at ORT_ENABLE_ALL for some of them
      (seen on the demo ViT with 16 attention nodes restored by the fallback); these graphs are
      for TensorRT and only checked here, so ALL's layout optimizations are not worth a crash.
    - a precision's own cap (`PrecisionFacts.ort_max_optimization`: FP8's is "basic")."""
    caps = [precision.facts.ort_max_optimization, "extended" if target is Target.TENSORRT else None]
    known = [c for c in caps if c is not None]
    return min(known, key=_LEVELS.index) if known else None


def _level(ort: Any, name: str) -> Any:
    return {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[name]


class OnnxRuntimeBackend(Runner):
    backend = "onnxruntime"

    def __init__(
        self,
        graph: Path | bytes,
        tower: TowerArtifact,
        providers: Sequence[Provider] | None = None,
        threads: int | None = None,
        optimization: str | None = None,
        spin: bool = True,
    ):
        super().__init__(tower)
        ort = require("onnxruntime", PURPOSE)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: provider fallbacks are decided above
        if optimization:
            options.graph_optimization_level = _level(ort, optimization)
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.requested = choose_providers(ort.get_available_providers(), providers)
        # bytes: a graph held in memory (the precision step evaluates candidates without writing them).
        source = graph if isinstance(graph, bytes) else str(graph)
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=self.requested)
        except Exception as exc:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...)
            if isinstance(graph, bytes):  # a graph we just made: our failure, not the user's
                raise BackendError(f"onnxruntime cannot load the in-memory graph ({first_line(exc)})") from None
            # A file that matches its recorded sha256 yet does not load: damaged before it was recorded.
            raise ManifestError(
                f"onnxruntime cannot load {graph} ({first_line(exc)}); the file is damaged: "
                "re-run the step that made it"
            ) from None
        # What ONNX Runtime actually registered: it silently drops a provider that fails to start.
        self.providers = list(self.session.get_providers())
        dropped = [_name(p) for p in self.requested if _name(p) not in self.providers]
        if dropped:
            self.session = None
            raise DeviceUnavailableError(
                f"onnxruntime could not start {', '.join(dropped)} (it would have run on "
                f"{', '.join(self.providers)} instead); check the GPU driver and libraries"
            )
        # An FP16 graph built with FP16 I/O (`quantize --io-dtype float16`) still takes and gives
        # float32 here: callers never see the graph's boundary type.
        self.graph_input_dtype = _ORT_TYPES.get(self.session.get_inputs()[0].type, self.input_dtype)

    @property
    def ran_on(self) -> str:
        return f"{self.backend} ({', '.join(self.providers)})"

    def _run_impl(self, batch: np.ndarray) -> np.ndarray:
        if self.graph_input_dtype != self.input_dtype:
            batch = batch.astype(self.graph_input_dtype)
        try:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as exc:
            raise BackendError(
                f"onnxruntime failed on a batch of shape {list(batch.shape)}: {first_line(exc)}"
            ) from None

    @property
    def output_dim(self) -> int | None:
        shape = self.session.get_outputs()[0].shape if self.session is not None else None
        return shape[-1] if shape and isinstance(shape[-1], int) else None

    def _close_impl(self) -> None:
        self.session = None


def open_tower(
    root: Path, manifest: Manifest, tower: Tower, precision: Precision, options: BackendOptions
) -> OnnxRuntimeBackend:
    record = manifest.tower(tower).graph(precision)
    graph = check_graph_files(root, record)
    providers = [CPU] if options.cpu_only else options.providers
    return OnnxRuntimeBackend(
        graph,
        manifest.tower(tower),
        providers=providers,
        threads=options.threads,
        spin=options.spin,
        optimization=graph_optimization(precision, record.details.target),
    )
