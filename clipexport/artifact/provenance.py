"""Engine provenance (`<engine>.json` beside every plan) and the checks made before a plan is
deserialized: is it the file that was built, and can this TensorRT on this GPU run it.

TensorRT engines are tied to the TensorRT version and the GPU's compute capability they were
built with, unless built version- or hardware-compatible; deserializing a mismatched plan fails
with an opaque error or, worse, crashes. These checks turn that into one line with the rebuild
command. numpy-free and TensorRT-free: the runtime imports this module.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from clipexport.artifact.fields import FieldReader
from clipexport.errors import ManifestError
from clipexport.files import check_recorded_sha256, write_json_atomic

SIDECAR_SCHEMA_VERSION = 1
# hardware_compatibility_level = AMPERE_PLUS: any discrete GPU of compute capability 8.0 or newer.
AMPERE = (8, 0)
# How many later major releases run a version-compatible plan (10.x plans on 11.x).
VERSION_COMPATIBLE_MAJORS = 1


@dataclass(frozen=True)
class EngineProvenance:
    engine: str  # plan file name, beside the sidecar
    engine_sha256: str
    engine_bytes: int
    tower: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"
    onnx_file: str
    onnx_sha256: str
    profiles: Mapping[str, Mapping[str, list[int]]]  # input name -> min/opt/max
    flags: Mapping[str, Any]  # strongly_typed, tf32, version_compatible, hardware_compatible, ...
    build_seconds: float
    created: str
    recipe: str
    calibration_sha256: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = SIDECAR_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "EngineProvenance":
        fields = FieldReader(where, ManifestError, "rebuild the engine")
        if data.get("schema_version") != SIDECAR_SCHEMA_VERSION:
            raise fields.fail(f"provenance schema {data.get('schema_version')!r} is not supported")
        text, number = str, (int, float)
        required = {
            "engine": text,
            "engine_sha256": text,
            "engine_bytes": int,
            "tower": text,
            "precision": text,
            "tensorrt_version": text,
            "gpu_name": text,
            "compute_capability": text,
            "onnx_file": text,
            "onnx_sha256": text,
            "profiles": dict,
            "flags": dict,
            "build_seconds": number,
            "created": text,
            "recipe": text,
        }
        values = {key: fields.get(data, key, kind) for key, kind in required.items()}
        values["calibration_sha256"] = fields.get(data, "calibration_sha256", text, default=None)
        values["versions"] = fields.get(data, "versions", dict, default={})
        return cls(**values)


def sidecar_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".json")


def write_sidecar(plan: Path, provenance: EngineProvenance) -> Path:
    path = sidecar_path(plan)
    write_json_atomic(path, provenance.to_dict())
    return path


def read_sidecar(plan: Path, rebuild: str) -> EngineProvenance:
    path = sidecar_path(plan)
    if not plan.is_file():
        raise ManifestError(f"engine {plan} not found; build it with: {rebuild}")
    if not path.is_file():
        raise ManifestError(
            f"engine {plan} has no provenance file {path.name}, so it cannot be checked "
            f"against this GPU and TensorRT; rebuild it with: {rebuild}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is unreadable ({exc}); rebuild the engine with: {rebuild}") from None
    return EngineProvenance.from_dict(data, str(path))


def check_plan_file(plan: Path, provenance: EngineProvenance, rebuild: str) -> None:
    """The plan is the file that was built: size first (a truncated copy), then sha256."""
    size = plan.stat().st_size
    if size != provenance.engine_bytes:
        raise ManifestError(
            f"engine {plan.name} is {size} bytes but was built as {provenance.engine_bytes}: "
            f"the file is truncated or replaced; rebuild it with: {rebuild}"
        )
    check_recorded_sha256(
        plan,
        provenance.engine_sha256 or "missing",
        f"the file is corrupt or replaced; rebuild it with: {rebuild}",
        recorded_in="its provenance sidecar",
    )


def check_compatible(
    provenance: EngineProvenance, tensorrt_version: str, compute_capability: str, gpu_name: str, rebuild: str
) -> list[str]:
    """Raise when this TensorRT / GPU cannot run the engine; return notes for allowed differences."""
    notes = []
    built, running = _version(provenance.tensorrt_version), _version(tensorrt_version)
    flags = provenance.flags
    if flags.get("version_compatible"):
        # A version-compatible plan runs on later releases of its major and of the next one
        # (TensorRT 11.x runs version-compatible 10.x engines: NVIDIA's 11.4 support matrix).
        if running < built or running[0] > built[0] + VERSION_COMPATIBLE_MAJORS:
            raise ManifestError(
                f"engine {provenance.engine} was built version-compatible with TensorRT {provenance.tensorrt_version}, "
                f"which runs on releases from that one through {built[0] + VERSION_COMPATIBLE_MAJORS}.x, not on "
                f"{tensorrt_version}; rebuild it with: {rebuild}"
            )
    elif running != built:
        raise ManifestError(
            f"engine {provenance.engine} was built with TensorRT {provenance.tensorrt_version} but this is "
            f"TensorRT {tensorrt_version}; engines only load in the exact version (major.minor.patch.build) that "
            f"built them, or build with version_compatible = true; rebuild it with: {rebuild}"
        )
    built_cc, running_cc = _capability(provenance.compute_capability), _capability(compute_capability)
    if flags.get("hardware_compatible"):
        if running_cc < AMPERE:
            raise ManifestError(
                f"engine {provenance.engine} is hardware-compatible for Ampere and newer (sm_80+), but this GPU "
                f"({gpu_name}) is sm_{compute_capability.replace('.', '')}; rebuild it with: {rebuild}"
            )
    elif running_cc != built_cc:
        raise ManifestError(
            f"engine {provenance.engine} was built for {provenance.gpu_name} (sm_{provenance.compute_capability.replace('.', '')}) "
            f"but this GPU is {gpu_name} (sm_{compute_capability.replace('.', '')}); engines are specific to the "
            f"GPU architecture; rebuild it on this GPU with: {rebuild}"
        )
    if gpu_name != provenance.gpu_name:
        notes.append(
            f"engine {provenance.engine} was built on {provenance.gpu_name}, running on {gpu_name} "
            "(same architecture: allowed, timings may differ)"
        )
    return notes


def _version(text: str) -> tuple[int, int, int, int]:
    """major.minor.patch.build, missing fields as 0 ("10.3" == "10.3.0.0")."""
    parts = re.findall(r"\d+", text)[:4]
    if not parts:
        raise ManifestError(f"unreadable TensorRT version '{text}'")
    numbers = [int(part) for part in parts] + [0] * (4 - len(parts))
    return numbers[0], numbers[1], numbers[2], numbers[3]


def _capability(text: str) -> tuple[int, int]:
    try:
        major, minor = text.split(".")
        return int(major), int(minor)
    except ValueError:
        raise ManifestError(f"unreadable compute capability '{text}' (expected e.g. 8.9)") from None
