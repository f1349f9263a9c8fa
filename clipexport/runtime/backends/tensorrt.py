"""TensorRT backend: a prebuilt engine (`clipexport build`) run through the TensorRT Python API
(10.x and 11.x: the same calls exist in both).

Before deserializing, the plan is checked against its provenance sidecar (same file, a TensorRT
and GPU that can run it); batches above the profile's maximum are split; outputs are checked
finite. Device memory and the stream come from polygraphy's ctypes CUDA wrapper, so serving
needs neither torch nor cuda-python.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipexport._deps import require
from clipexport.artifact.layout import engine_file, inside
from clipexport.artifact.manifest import Manifest, Tower, TowerArtifact
from clipexport.artifact.precision import Precision
from clipexport.artifact.provenance import check_compatible, check_plan_file, read_sidecar
from clipexport.errors import BackendError, ClipExportError, InputError, ManifestError
from clipexport.runtime.backends.base import BackendOptions, Runner, TritonServing, missing

PURPOSE = "running TensorRT engines"
TRITON = TritonServing(platform="tensorrt_plan", engine=True)  # the engines `clipexport build` made


def unavailable() -> ClipExportError | None:
    return missing("tensorrt", "polygraphy.cuda", purpose=PURPOSE)


class TensorRTBackend(Runner):
    backend = "tensorrt"

    def __init__(self, plan: Path, tower: TowerArtifact, rebuild: str):
        super().__init__(tower)
        trt = require("tensorrt", PURPOSE)  # the install hint comes before any "engine not found"
        cuda = require("polygraphy.cuda", PURPOSE)
        provenance = read_sidecar(plan, rebuild)
        check_plan_file(plan, provenance, rebuild)
        from clipexport.gpu import gpu_info

        gpu = gpu_info()
        self.notes = check_compatible(provenance, trt.__version__, gpu.compute_capability, gpu.name, rebuild)
        self.description = f"tensorrt {trt.__version__} ({plan.name} on {gpu.name})"
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if provenance.flags.get("version_compatible"):
            self._runtime.engine_host_code_allowed = True  # version-compatible plans embed a lean runtime
        self.engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise ManifestError(
                f"TensorRT could not deserialize {plan.name} although it matches its provenance; "
                f"rebuild it with: {rebuild}"
            )
        self.context = self.engine.create_execution_context()
        self.engine_input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.engine_output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.profile_min, self.profile_max = tuple(low), tuple(high)
        self.max_batch = int(high[0])
        self._stream = cuda.Stream()
        self._device_in = cuda.DeviceArray(shape=(0,), dtype=self.engine_input_dtype)
        self._device_out = cuda.DeviceArray(shape=(0,), dtype=self.engine_output_dtype)

    @property
    def ran_on(self) -> str:
        return self.description

    def _check_shape(self, batch: np.ndarray) -> None:
        if len(batch.shape) != len(self.profile_max) or not all(
            lo <= d <= hi for d, lo, hi in zip(batch.shape[1:], self.profile_min[1:], self.profile_max[1:])
        ):
            raise InputError(
                f"{self.input_name} shape {list(batch.shape)} is outside the engine's profile "
                f"{list(self.profile_min)}..{list(self.profile_max)}; rebuild with a recipe that covers it"
            )

    def _run_impl(self, batch: np.ndarray) -> np.ndarray:
        chunks = [self._run_chunk(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return np.concatenate(chunks)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        host_in = np.ascontiguousarray(chunk, dtype=self.engine_input_dtype)
        if chunk.shape[0] < self.profile_min[0]:  # pad up to the profile's minimum batch
            pad = np.zeros((self.profile_min[0] - chunk.shape[0], *chunk.shape[1:]), host_in.dtype)
            host_in = np.concatenate([host_in, pad])
        self.context.set_input_shape(self.input_name, host_in.shape)
        self._device_in.resize(host_in.shape)
        self._device_in.copy_from(host_in, self._stream)
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        self._device_out.resize(out_shape)
        self.context.set_tensor_address(self.input_name, self._device_in.ptr)
        self.context.set_tensor_address(self.output_name, self._device_out.ptr)
        if not self.context.execute_async_v3(self._stream.ptr):
            raise BackendError(f"TensorRT failed to run a batch of shape {list(host_in.shape)} (see the TensorRT log)")
        host_out = np.empty(out_shape, dtype=self.engine_output_dtype)
        self._device_out.copy_to(host_out, self._stream)
        self._stream.synchronize()
        return host_out[: chunk.shape[0]].astype(np.float32, copy=False)

    def _close_impl(self) -> None:
        for resource in (
            getattr(self, "_device_in", None),
            getattr(self, "_device_out", None),
            getattr(self, "_stream", None),
        ):
            if resource is not None:
                resource.free()
        self._device_in = self._device_out = self._stream = None
        self.context = self.engine = None


def open_tower(
    root: Path, manifest: Manifest, tower: Tower, precision: Precision, options: BackendOptions
) -> TensorRTBackend:
    plan = inside(root, engine_file(tower.value, precision), "engine file")
    rebuild = f"clipexport build {root} --precision {precision.value} --towers {tower.value}"
    return TensorRTBackend(plan, manifest.tower(tower), rebuild)
