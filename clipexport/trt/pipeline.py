"""`clipexport build`: resolve the recipe against the artifact, then (unless dry-run) compile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipexport.trt.profiles import TowerBuild, plan_builds
from clipexport.trt.recipe import Recipe, resolve_recipe
from clipexport.artifact.provenance import EngineProvenance
from clipexport.artifact.manifest import Manifest, Tower, check_graph_files, read_manifest
from clipexport.artifact.precision import MadeBy, Precision
from clipexport.progress import Progress, silent


@dataclass(frozen=True)
class BuildOptions:
    artifact: Path
    precision: Precision | None = None  # None: the recipe's
    recipe: str | None = None  # name in recipes/ or a path; None: the default server recipe
    towers: tuple[Tower, ...] = (Tower.VISION, Tower.TEXT)

    def __post_init__(self) -> None:  # Python callers may pass a name: parsed here, once
        if self.precision is not None:
            object.__setattr__(self, "precision", Precision.parse(self.precision))


def plan_artifact(options: BuildOptions, manifest: Manifest | None = None) -> tuple[Recipe, list[TowerBuild]]:
    """Everything a build will do, checked against the manifest; needs no TensorRT."""
    manifest = manifest or read_manifest(options.artifact)
    recipe = resolve_recipe(options.recipe)
    return recipe, plan_builds(Path(options.artifact), manifest, recipe, options.precision, options.towers)


@dataclass(frozen=True)
class BuildPlan:
    """`build --dry-run`: the resolved recipe and every engine's settings, with the equivalent
    trtexec commands (`summary()`); needs no TensorRT."""

    artifact: Path
    recipe: Recipe
    builds: list[TowerBuild]

    def summary(self) -> list[str]:
        recipe, builds, lines = self.recipe, self.builds, []
        missing = graphs_to_make(builds)
        if missing:
            precision = builds[0].precision.value
            lines.append(
                f"note: build makes the {precision} graph of {', '.join(t.value for t in missing)} first "
                f"(same as: clipexport quantize {self.artifact} --precision {precision})"
            )
        lines += [f"recipe: {recipe.name} ({recipe.source}) - {recipe.description}"]
        lines += [f"device: {recipe.device} [{recipe.device_class.value}]"]
        lines += [f"note: {note}" for note in recipe.notes]
        lines.append(f"\nmkdir -p {builds[0].engine.parent}" if builds else "")
        for item in builds:
            s = item.shapes
            lines.append(
                f"\n# {item.tower.value} ({item.precision.value}): {item.onnx.name} -> {item.engine.name}; "
                f"{s.input_name} min {list(s.min)} opt {list(s.opt)} max {list(s.max)}; "
                f"workspace {item.workspace_mib} MiB; strongly typed {item.strongly_typed}"
            )
            lines.append(item.command(recipe.device_class))
        return lines


@dataclass(frozen=True)
class BuildResult:
    """The engines `build` compiled, with their provenance."""

    engines: list[EngineProvenance]

    def summary(self) -> list[str]:
        return [
            f"{p.tower}: engines/{p.engine} (TensorRT {p.tensorrt_version}, {p.gpu_name}, {p.build_seconds:.0f} s)"
            for p in self.engines
        ]


def dry_run(options: BuildOptions) -> BuildPlan:
    recipe, builds = plan_artifact(options)
    return BuildPlan(Path(options.artifact), recipe, builds)


def graphs_to_make(builds: list[TowerBuild]) -> tuple[Tower, ...]:
    """Towers whose (FP16) graph `build` makes before compiling."""
    return tuple(b.tower for b in builds if b.made_first)


def build_artifact(options: BuildOptions, progress: Progress = silent) -> BuildResult:
    from clipexport.trt.builder import build_engine, require_tensorrt

    require_tensorrt()  # fail before any work when TensorRT is missing
    manifest = read_manifest(options.artifact)
    recipe, builds = plan_artifact(options, manifest)
    missing = graphs_to_make(builds)
    if missing:
        from clipexport.precision.pipeline import QuantizeOptions, quantize_artifact

        precision = builds[0].precision
        progress(
            f"making the {precision.value} graph of {', '.join(t.value for t in missing)} first "
            f"(same as: clipexport quantize {options.artifact} --precision {precision.value})"
        )
        quantize_artifact(
            QuantizeOptions(artifact=options.artifact, precision=precision, towers=missing, made_by=MadeBy.BUILD),
            progress,
        )
        manifest = read_manifest(options.artifact)
        recipe, builds = plan_artifact(options, manifest)
    out = []
    for build in builds:
        check_graph_files(options.artifact, manifest.tower(build.tower).graph(build.precision))
        out.append(build_engine(build, recipe.name, progress))
    return BuildResult(out)
