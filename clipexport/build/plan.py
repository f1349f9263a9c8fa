"""What a build will do, resolved from the manifest and a recipe, before TensorRT is touched:
per tower the ONNX variant, the profile shapes, the flags, and the equivalent trtexec command.

Works without TensorRT installed (`clipexport build --dry-run`), which is how Jetson users get
the command to run on the device.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from clipexport.build.recipe import DeviceClass, Recipe, TowerProfile
from clipexport.errors import InputError
from clipexport.manifest import Manifest, Tower, TensorSpec
from clipexport.runtime.text_length import MIN_LENGTH

ENGINES_DIR = "engines"
TIMING_CACHE = "timing.cache"
# Where trtexec lives: pip/NGC images put it on PATH; JetPack installs it here.
TRTEXEC = {DeviceClass.SERVER: "trtexec", DeviceClass.JETSON: "/usr/src/tensorrt/bin/trtexec"}
# Text graphs with a dynamic sequence axis (issue 6) default to prompts of a few words.
DEFAULT_TEXT_OPT_TOKENS = 16


@dataclass(frozen=True)
class ProfileShapes:
    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class TowerBuild:
    tower: Tower
    precision: str
    onnx: Path
    onnx_sha256: str
    calibration_sha256: str | None
    engine: Path
    shapes: ProfileShapes
    workspace_mib: int
    optimization_level: int
    version_compatible: bool
    hardware_compatible: bool
    timing_cache: Path

    @property
    def strongly_typed(self) -> bool:
        """FP16/INT8 graphs carry their types (FP32 LayerNorms, Q/DQ); TensorRT must keep them."""
        return self.precision != "fp32"

    @property
    def allow_tf32(self) -> bool:
        """Off for fp32, so an "fp32" engine is FP32 (TF32 GEMMs drop parity to ~1e-3)."""
        return self.precision != "fp32"

    def trtexec(self, device_class: DeviceClass) -> list[str]:
        def dims(shape: tuple[int, ...]) -> str:
            return f"{self.shapes.input_name}:{'x'.join(map(str, shape))}"

        args = [TRTEXEC[device_class], f"--onnx={self.onnx}", f"--saveEngine={self.engine}",
                f"--minShapes={dims(self.shapes.min)}", f"--optShapes={dims(self.shapes.opt)}",
                f"--maxShapes={dims(self.shapes.max)}",
                f"--memPoolSize=workspace:{self.workspace_mib}M",
                f"--builderOptimizationLevel={self.optimization_level}",
                f"--timingCacheFile={self.timing_cache}"]
        if self.strongly_typed:
            args.append("--stronglyTyped")
        if not self.allow_tf32:
            args.append("--noTF32")
        if self.version_compatible:
            args.append("--versionCompatible")
        if self.hardware_compatible:
            args.append("--hardwareCompatibilityLevel=ampere+")
        args.append("--skipInference")
        return args

    def command(self, device_class: DeviceClass) -> str:
        return shlex.join(self.trtexec(device_class))


def plan_builds(artifact_dir: Path, manifest: Manifest, recipe: Recipe, precision: str | None,
                towers: tuple[Tower, ...]) -> list[TowerBuild]:
    root = Path(artifact_dir).resolve()
    chosen = precision or recipe.precision
    out = []
    for tower in towers:
        artifact = manifest.tower(tower)
        graph = artifact.graph(chosen)
        profile = recipe.profiles.get(tower)
        if profile is None:
            raise InputError(f"recipe {recipe.name} has no [profiles.{tower.value}]; add one or pass --towers without {tower.value}")
        calibration = graph.details.get("calibration", {}) if isinstance(graph.details, dict) else {}
        out.append(TowerBuild(
            tower=tower, precision=chosen, onnx=root / graph.file, onnx_sha256=graph.sha256,
            calibration_sha256=calibration.get("sha256"),
            engine=root / ENGINES_DIR / f"{tower.value}.{chosen}.plan",
            shapes=profile_shapes(artifact.inputs[0], profile, manifest.tokenizer.context_length, recipe.name),
            workspace_mib=recipe.workspace_mib, optimization_level=recipe.optimization_level,
            version_compatible=recipe.version_compatible, hardware_compatible=recipe.hardware_compatible,
            timing_cache=root / ENGINES_DIR / TIMING_CACHE,
        ))
    return out


def profile_shapes(spec: TensorSpec, profile: TowerProfile, context_length: int, recipe_name: str) -> ProfileShapes:
    """min/opt/max input shapes: the batch axis from the recipe, a symbolic sequence axis from the
    recipe's `sequence` (or 2 / 16 / context length), every fixed axis as exported."""
    shapes: list[list[int]] = [[], [], []]
    for index, dim in enumerate(spec.shape):
        if index == 0:
            values = profile.batch.as_tuple()
        elif isinstance(dim, int):
            values = (dim, dim, dim)
        elif profile.sequence is not None:
            values = profile.sequence.as_tuple()
            if values[2] > context_length:
                raise InputError(f"recipe {recipe_name}: profiles.text.sequence max {values[2]} exceeds the "
                                 f"model's context length {context_length}")
        else:
            values = (MIN_LENGTH, min(DEFAULT_TEXT_OPT_TOKENS, context_length), context_length)
        for shape, value in zip(shapes, values):
            shape.append(value)
    return ProfileShapes(spec.name, *(tuple(s) for s in shapes))
