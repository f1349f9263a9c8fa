"""Compile an ONNX graph into a TensorRT engine with the TensorRT Python API (10.x, as JetPack 6
ships it, and 11.x: every call used exists in both), then write the plan and its provenance
sidecar. TensorRT is imported here only, lazily."""

from __future__ import annotations

import time
from typing import Any

import clipexport
from clipexport._deps import require
from clipexport.gpu import gpu_info
from clipexport.trt.profiles import TowerBuild, check_gpu_supports
from clipexport.artifact.lock import artifact_lock
from clipexport.artifact.provenance import EngineProvenance, sidecar_path, write_sidecar
from clipexport.errors import BuildError
from clipexport.files import sha256_file, utc_timestamp, write_bytes_atomic
from clipexport.progress import Progress, silent

TENSORRT_PURPOSE = "building and running TensorRT engines"


def require_tensorrt() -> Any:
    return require("tensorrt", TENSORRT_PURPOSE)


def tensorrt_major(version: str) -> int:
    return int(version.split(".")[0])


def build_engine(build: TowerBuild, recipe: str, progress: Progress = silent) -> EngineProvenance:
    trt = require_tensorrt()
    gpu = gpu_info()
    check_gpu_supports(build.precision, gpu.name, gpu.compute_capability)  # before minutes of building
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 11 builds strongly typed networks only; on 10.x the FP32 graph is built weakly
    # typed with TF32 off, which computes the same FP32 everywhere.
    strongly_typed = build.strongly_typed or tensorrt_major(trt.__version__) >= 11
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    progress(f"{build.tower.value}: parsing {build.onnx.name}")
    if not parser.parse_from_file(str(build.onnx)):  # reads external data beside the file
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT cannot parse {build.onnx.name}: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, build.workspace_mib << 20)
    config.builder_optimization_level = build.optimization_level
    if not build.allow_tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if build.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if build.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    profile = builder.create_optimization_profile()
    shapes = build.shapes
    profile.set_shape(shapes.input_name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    cache_blob = build.timing_cache.read_bytes() if build.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, False)  # (cache, ignore_mismatch)

    progress(f"{build.tower.value}: building the {build.precision.value} engine (minutes on a large model)")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise BuildError(
            f"TensorRT failed to build the {build.tower.value} engine (see the TensorRT log above); "
            "a larger build.workspace_mib or a lower batch max often helps"
        )
    plan_bytes = bytes(memoryview(serialized))
    with artifact_lock(build.engine.parent.parent):  # two builds at once publish one after the other
        provenance = _publish(build, plan_bytes, config, trt, gpu, seconds, recipe, strongly_typed)
    progress(f"{build.tower.value}: wrote {build.engine} ({len(plan_bytes) / 2**20:.1f} MiB, {seconds:.0f} s)")
    return provenance


def _publish(
    build: TowerBuild,
    plan_bytes: bytes,
    config: Any,
    trt: Any,
    gpu: Any,
    seconds: float,
    recipe: str,
    strongly_typed: bool,
) -> EngineProvenance:
    write_bytes_atomic(build.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    # Sidecar last: a plan whose sidecar is missing or stale is refused, so an interrupted build
    # never leaves an engine that loads as if it were valid.
    sidecar_path(build.engine).unlink(missing_ok=True)
    write_bytes_atomic(build.engine, plan_bytes)
    shapes = build.shapes
    provenance = EngineProvenance(
        engine=build.engine.name,
        engine_sha256=sha256_file(build.engine),
        engine_bytes=len(plan_bytes),
        tower=build.tower.value,
        precision=build.precision.value,
        tensorrt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        onnx_file=build.onnx.name,
        onnx_sha256=build.onnx_sha256,
        calibration_sha256=build.calibration_sha256,
        profiles={shapes.input_name: shapes.to_dict()},
        flags={
            "strongly_typed": strongly_typed,
            "tf32": build.allow_tf32,
            "version_compatible": build.version_compatible,
            "hardware_compatible": build.hardware_compatible,
            "workspace_mib": build.workspace_mib,
            "optimization_level": build.optimization_level,
        },
        build_seconds=round(seconds, 2),
        created=utc_timestamp(),
        recipe=recipe,
        versions={"clipexport": clipexport.__version__, "tensorrt": trt.__version__},
    )
    write_sidecar(build.engine, provenance)
    return provenance
