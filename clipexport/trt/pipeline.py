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


def graphs_to_make(builds: list[TowerBuild]) -> tuple[Tower, ...]:
    """Towers whose (FP16) graph `build` makes before compiling."""
    return tuple(b.tower for b in builds if b.made_first)


def build_artifact(options: BuildOptions, progress: Progress = silent) -> list[EngineProvenance]:
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
    return out
