"""What a build will do, resolved from the manifest and a recipe, before TensorRT is touched:
per tower the ONNX variant, the profile shapes, the flags, and the equivalent trtexec command.

Works without TensorRT installed (`clipexport build --dry-run`), which is how Jetson users get
the command to run on the device.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from clipexport.artifact.layout import ENGINES_DIR, MIN_TEXT_LENGTH, TIMING_CACHE, engine_file, graph_file, inside
from clipexport.artifact.manifest import Manifest, TensorSpec, Tower
from clipexport.artifact.precision import Maker, Precision, Target
from clipexport.errors import InputError
from clipexport.trt.recipe import DeviceClass, Recipe, TowerProfile

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
    precision: Precision
    onnx: Path
    onnx_sha256: str | None  # None: a graph `build` makes before compiling (FP16 needs no calibration)
    calibration_sha256: str | None
    engine: Path
    shapes: ProfileShapes
    workspace_mib: int
    optimization_level: int
    version_compatible: bool
    hardware_compatible: bool
    timing_cache: Path

    @property
    def made_first(self) -> bool:
        return self.onnx_sha256 is None

    @property
    def strongly_typed(self) -> bool:
        return self.precision.strongly_typed

    @property
    def allow_tf32(self) -> bool:
        return self.precision.allow_tf32

    def trtexec(self, device_class: DeviceClass) -> list[str]:
        def dims(shape: tuple[int, ...]) -> str:
            return f"{self.shapes.input_name}:{'x'.join(map(str, shape))}"

        args = [
            TRTEXEC[device_class],
            f"--onnx={self.onnx}",
            f"--saveEngine={self.engine}",
            f"--minShapes={dims(self.shapes.min)}",
            f"--optShapes={dims(self.shapes.opt)}",
            f"--maxShapes={dims(self.shapes.max)}",
            f"--memPoolSize=workspace:{self.workspace_mib}M",
            f"--builderOptimizationLevel={self.optimization_level}",
            f"--timingCacheFile={self.timing_cache}",
        ]
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


def plan_builds(
    artifact_dir: Path, manifest: Manifest, recipe: Recipe, precision: Precision | None, towers: tuple[Tower, ...]
) -> list[TowerBuild]:
    root = Path(artifact_dir).resolve()
    chosen = precision or recipe.precision
    out = []
    for tower in towers:
        artifact = manifest.tower(tower)
        profile = recipe.profiles.get(tower)
        if profile is None:
            raise InputError(
                f"recipe {recipe.name} has no [profiles.{tower.value}]; add one or pass --towers without {tower.value}"
            )
        if chosen not in artifact.graphs and chosen.facts.maker is Maker.AUTOCAST:
            # FP16 needs no calibration data: `build` makes the graph first (see trt/pipeline.py).
            onnx, onnx_sha256, calibration = root / graph_file(tower.value, chosen), None, None
        else:
            graph = artifact.graph(chosen)
            if chosen.facts.calibrated and graph.details.target is not Target.TENSORRT:
                raise InputError(
                    f"the {tower.value} {chosen.value} graph was quantized for --target {graph.details.target}, "
                    "whose Q/DQ placement TensorRT does not fuse; make TensorRT's with: clipexport quantize "
                    f"{root} --precision {chosen.value} --target tensorrt"
                )
            onnx, onnx_sha256, calibration = (
                inside(root, graph.file, "graph file"),
                graph.sha256,
                graph.details.calibration,
            )
        out.append(
            TowerBuild(
                tower=tower,
                precision=chosen,
                onnx=onnx,
                onnx_sha256=onnx_sha256,
                calibration_sha256=calibration.sha256 if calibration and chosen.facts.calibrated else None,
                engine=root / engine_file(tower.value, chosen),
                shapes=profile_shapes(artifact.inputs[0], profile, manifest.tokenizer.context_length, recipe.name),
                workspace_mib=recipe.workspace_mib,
                optimization_level=recipe.optimization_level,
                version_compatible=recipe.version_compatible,
                hardware_compatible=recipe.hardware_compatible,
                timing_cache=root / ENGINES_DIR / TIMING_CACHE,
            )
        )
    return out


def check_gpu_supports(precision: Precision, gpu_name: str, compute_capability: str) -> None:
    """One line when this GPU has no TensorRT kernels for the precision (FP8: compute capability
    8.9+, Ada / Hopper / Blackwell; Jetson Orin is 8.7), before any build starts."""
    need = precision.facts.min_compute_capability
    if need is None:
        return
    have = tuple(int(x) for x in compute_capability.split(".")[:2])
    if have < need:
        from clipexport.errors import DeviceUnavailableError

        raise DeviceUnavailableError(
            f"{precision.value} engines need compute capability {need[0]}.{need[1]}+ (Ada, Hopper, Blackwell); "
            f"{gpu_name} is {compute_capability}: build --precision int8 or fp16 for it"
        )


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
                raise InputError(
                    f"recipe {recipe_name}: profiles.text.sequence max {values[2]} exceeds the "
                    f"model's context length {context_length}"
                )
        else:
            values = (MIN_TEXT_LENGTH, min(DEFAULT_TEXT_OPT_TOKENS, context_length), context_length)
        for shape, value in zip(shapes, values):
            shape.append(value)
    return ProfileShapes(spec.name, *(tuple(s) for s in shapes))
