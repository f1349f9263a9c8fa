"""The command line: parse, call one library function, print. User mistakes print one line."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from clipexport import __version__
from clipexport.errors import ClipExportError
from clipexport.progress import StepPrinter


def _user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ClipExportError into `error: ...` and exit code 2; real bugs keep their traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ClipExportError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def _progress(quiet: bool) -> Callable[[str], None]:
    return (lambda _: None) if quiet else StepPrinter(lambda line: click.echo(line, err=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clipexport")
def main() -> None:
    """Export CLIP models to ONNX/TensorRT and prove the numbers match PyTorch."""
    # open_clip and transformers log warnings on the root logger (e.g. "initialized randomly");
    # our own progress lines say the same thing once.
    logging.getLogger().setLevel(logging.ERROR)


@main.command()
@click.argument("model")
@click.option("--pretrained", default=None, help="OpenCLIP pretrained tag (e.g. openai, laion2b_s34b_b79k), a local checkpoint file, or 'random'. Default: random.")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Artifact folder to create.")
@click.option("--source", type=click.Choice(["auto", "open_clip", "hf"]), default="auto", show_default=True,
              help="Model library; auto picks hf for a save_pretrained folder or an org/name hub id.")
@click.option("--opset", type=int, default=None, help="ONNX opset (>= 17). Default: 18.")
@click.option("--normalize/--no-normalize", default=True, show_default=True, help="L2-normalise the embeddings inside the graphs.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --pretrained random.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@_user_errors
def export(model: str, pretrained: str | None, output: Path, source: str, opset: int | None,
           normalize: bool, overwrite: bool, seed: int, quiet: bool) -> None:
    """Export the vision and text towers of MODEL to ONNX, with manifest.json.

    MODEL is an OpenCLIP name (ViT-B-32, RN50, convnext_base, ...), a JSON OpenCLIP model config,
    a Hugging Face hub id, or a local save_pretrained folder.
    """
    from clipexport.export.pipeline import ExportOptions, export_model
    from clipexport.export.sources import SourceChoice
    from clipexport.export.specs import DEFAULT_OPSET

    options = ExportOptions(model=model, output=output, pretrained=pretrained, source=SourceChoice(source),
                            opset=opset or DEFAULT_OPSET, normalize=normalize, overwrite=overwrite, seed=seed)
    manifest = export_model(options, _progress(quiet))
    towers = ", ".join(f"{t.value}: {a.graphs['fp32'].file}" for t, a in manifest.towers.items())
    click.echo(f"exported {model} to {output} ({towers}; embed dim {manifest.embed_dim})")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--images", type=click.Path(path_type=Path), default=None, help="Folder of your own images (default: seeded synthetic images).")
@click.option("--texts", type=click.Path(path_type=Path), default=None, help="UTF-8 file, one caption per line (default: built-in captions).")
@click.option("--num-images", type=int, default=None, help="How many synthetic images (without --images).")
@click.option("--batch-size", type=int, default=None, help="Batch size for the exported graphs.")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16", "int8", "all"]),
              help="Graph variant(s) to check (repeatable); all = every variant in the manifest. Default: fp32.")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["onnxruntime", "tensorrt", "onnxruntime-trt"]),
              help="Where to run the candidate (repeatable): ONNX Runtime CPU (default), the TensorRT engines "
                   "from `clipexport build`, or ONNX Runtime's TensorRT provider.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@_user_errors
def verify(artifact: Path, images: Path | None, texts: Path | None, num_images: int | None,
           batch_size: int | None, precisions: tuple[str, ...], backends: tuple[str, ...], quiet: bool) -> None:
    """Compare ARTIFACT's graphs with the PyTorch FP32 model; write parity.json; exit 1 below a gate.

    Gates per tower (min / mean cosine of the embeddings): fp32 >= 0.99999, fp16 >= 0.999,
    int8 >= 0.98 / 0.99. Zero-shot top-1 agreement with PyTorch is reported for each variant.
    """
    from clipexport.verify import inputs
    from clipexport.verify.run import DEFAULT_BATCH_SIZE, VerifyOptions, verify_artifact

    options = VerifyOptions(artifact=artifact, images=images, texts=texts,
                            num_images=num_images or inputs.DEFAULT_NUM_IMAGES,
                            batch_size=batch_size or DEFAULT_BATCH_SIZE, precisions=precisions or ("fp32",),
                            backends=backends or ("onnxruntime",))
    report = verify_artifact(options, _progress(quiet))
    click.echo(report.table())
    click.echo(f"wrote {Path(artifact) / 'parity.json'}")
    if not report.passed:
        click.echo("error: parity below tolerance (see the table above)", err=True)
        sys.exit(1)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp16", "int8"]), required=True, help="Variant to add to ARTIFACT.")
@click.option("--towers", default="vision,text", show_default=True, help="Comma-separated towers to convert.")
@click.option("--target", type=click.Choice(["tensorrt", "cpu"]), default="tensorrt", show_default=True,
              help="INT8 Q/DQ placement: TensorRT's (ModelOpt, FP16 elsewhere) or ONNX Runtime CPU's (MatMul/Gemm S8S8).")
@click.option("--method", type=click.Choice(["entropy", "max", "percentile"]), default=None,
              help="INT8 calibration method. Default: entropy for tensorrt, max for cpu.")
@click.option("--calibration-images", type=click.Path(path_type=Path), default=None,
              help="Folder of images like the ones you will serve (default: the repo's calibration/images).")
@click.option("--calibration-texts", type=click.Path(path_type=Path), default=None,
              help="UTF-8 file, one caption per line (default: the repo's calibration/captions.txt).")
@click.option("--calibration-size", type=int, default=None, help="Calibration samples per tower (default: 128).")
@click.option("--sensitivity", is_flag=True, help="Measure every quantized node's error; write sensitivity.json and print the worst.")
@click.option("--fallback/--no-fallback", default=True, show_default=True,
              help="Keep the most sensitive INT8 nodes in high precision until the accuracy target holds.")
@click.option("--io-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="FP16 graphs' input/output type (the runtime converts either way).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@_user_errors
def quantize(artifact: Path, precision: str, towers: str, target: str, method: str | None,
             calibration_images: Path | None, calibration_texts: Path | None, calibration_size: int | None,
             sensitivity: bool, fallback: bool, io_dtype: str, quiet: bool) -> None:
    """Add FP16 or calibrated INT8 graphs to ARTIFACT (vision.<precision>.onnx, text.<precision>.onnx)."""
    from clipexport.precision.calibration import DEFAULT_CALIBRATION_SIZE, CalibrationSource
    from clipexport.precision.int8 import CalibrationMethod, Target
    from clipexport.precision.pipeline import Precision, QuantizeOptions, quantize_artifact

    options = QuantizeOptions(
        artifact=artifact, precision=Precision(precision), towers=_towers(towers), target=Target(target),
        method=CalibrationMethod(method) if method else None,
        calibration=CalibrationSource(images=calibration_images, texts=calibration_texts,
                                      size=calibration_size or DEFAULT_CALIBRATION_SIZE),
        sensitivity=sensitivity, fallback=fallback, fp16_io=io_dtype == "float16")
    _, outcomes = quantize_artifact(options, _progress(quiet))
    for outcome in outcomes:
        p = outcome.parity
        click.echo(f"{outcome.tower.value}: {outcome.graph.file} (validation vs FP32: min cos {p.min_cosine:.5f}, "
                   f"mean {p.mean_cosine:.5f})")
        restored = set(outcome.graph.details.get("high_precision_nodes", {}).get("fallback", []))
        if outcome.sensitivity:
            click.echo(f"  most sensitive of {len(outcome.sensitivity)} quantized nodes (relative output error; "
                       f"* = kept in high precision by the fallback, {len(restored)} in all):")
        for layer in outcome.sensitivity[:10]:
            mark = "*" if layer.node in restored else " "
            click.echo(f"  {mark} {layer.error:9.5f}  {layer.op_type:<10} {layer.node}")
    click.echo(f"check it against PyTorch: clipexport verify {artifact} --precision {precision}")


def _towers(value: str) -> tuple[Any, ...]:
    from clipexport.errors import InputError
    from clipexport.manifest import Tower

    names = [v.strip() for v in value.split(",") if v.strip()]
    try:
        return tuple(dict.fromkeys(Tower(n) for n in names))
    except ValueError:
        raise InputError(f"--towers '{value}' is not valid; use vision, text or vision,text") from None


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Which ONNX variant to compile (default: the recipe's).")
@click.option("--recipe", default=None, help="A recipe name from recipes/ (see `clipexport recipes`) or a TOML file. "
                                             "Default: server GPU, batch 1-128.")
@click.option("--towers", default="vision,text", show_default=True, help="Comma-separated towers to build.")
@click.option("--dry-run", is_flag=True, help="Print the resolved settings and the equivalent trtexec commands; "
                                              "build nothing (works without TensorRT).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@_user_errors
def build(artifact: Path, precision: str | None, recipe: str | None, towers: str, dry_run: bool, quiet: bool) -> None:
    """Compile ARTIFACT's ONNX graphs into TensorRT engines: engines/<tower>.<precision>.plan + .json provenance."""
    from clipexport.build.pipeline import BuildOptions, build_artifact, plan_artifact

    options = BuildOptions(artifact=artifact, precision=precision, recipe=recipe, towers=_towers(towers))
    chosen, builds = plan_artifact(options)
    if dry_run:
        click.echo(f"recipe: {chosen.name} ({chosen.source}) - {chosen.description}")
        click.echo(f"device: {chosen.device} [{chosen.device_class.value}]")
        for note in chosen.notes:
            click.echo(f"note: {note}")
        click.echo(f"\nmkdir -p {builds[0].engine.parent}" if builds else "")
        for item in builds:
            s = item.shapes
            click.echo(f"\n# {item.tower.value} ({item.precision}): {item.onnx.name} -> {item.engine.name}; "
                       f"{s.input_name} min {list(s.min)} opt {list(s.opt)} max {list(s.max)}; "
                       f"workspace {item.workspace_mib} MiB; strongly typed {item.strongly_typed}")
            click.echo(item.command(chosen.device_class))
        return
    for provenance in build_artifact(options, _progress(quiet)):
        click.echo(f"{provenance.tower}: engines/{provenance.engine} (TensorRT {provenance.tensorrt_version}, "
                   f"{provenance.gpu_name}, {provenance.build_seconds:.0f} s)")


@main.command("recipes")
@click.argument("name", required=False)
@_user_errors
def recipes(name: str | None) -> None:
    """List the build recipes, or show one (validated) by NAME."""
    from clipexport.build.recipe import list_recipes, load_recipe, resolve_recipe

    if name is None:
        for path in list_recipes():
            recipe = load_recipe(path)
            click.echo(f"{recipe.name:<24} {recipe.precision:<5} {recipe.description}")
        return
    recipe = resolve_recipe(name)
    click.echo(f"{recipe.name}: {recipe.description}\nsource: {recipe.source}\ndevice: {recipe.device} "
               f"[{recipe.device_class.value}]\nprecision: {recipe.precision}\nworkspace: {recipe.workspace_mib} MiB\n"
               f"optimization level: {recipe.optimization_level}\nversion compatible: {recipe.version_compatible}\n"
               f"hardware compatible: {recipe.hardware_compatible}")
    for tower, profile in recipe.profiles.items():
        seq = f", sequence {list(profile.sequence.as_tuple())}" if profile.sequence else ""
        click.echo(f"profile {tower.value}: batch {list(profile.batch.as_tuple())}{seq}")
    for note in recipe.notes:
        click.echo(f"note: {note}")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--backends", default="pytorch,onnxruntime", show_default=True,
              help="Comma-separated: pytorch (the eager baseline), onnxruntime, tensorrt.")
@click.option("--precisions", default="fp32", show_default=True, help="Comma-separated: fp32, fp16, int8.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--towers", default="vision,text", show_default=True)
@click.option("--min-iterations", type=int, default=10, show_default=True, help="Timed calls per point (at least).")
@click.option("--min-seconds", type=float, default=1.0, show_default=True, help="Timed seconds per point (at least).")
@click.option("--cpu", "cpu_only", is_flag=True, help="Pin ONNX Runtime and PyTorch to the CPU.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None, help="Report folder (default: ARTIFACT/bench).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@_user_errors
def bench(artifact: Path, backends: str, precisions: str, batch_sizes: str, towers: str, min_iterations: int,
          min_seconds: float, cpu_only: bool, output: Path | None, quiet: bool) -> None:
    """Throughput and p50/p90/p99 latency per tower x backend x precision x batch, vs PyTorch eager;
    writes bench.json, bench.md and bench.png."""
    from clipexport.bench.run import BenchOptions, markdown, run_bench
    from clipexport.errors import InputError

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
    except ValueError:
        raise InputError(f"--batch-sizes '{batch_sizes}' is not a comma-separated list of integers") from None
    options = BenchOptions(artifact=artifact, backends=_csv(backends), precisions=_csv(precisions), batch_sizes=sizes,
                           towers=_towers(towers), min_iterations=min_iterations, min_seconds=min_seconds,
                           cpu_only=cpu_only, output=output)
    result, out = run_bench(options, _progress(quiet))
    click.echo(markdown(result))
    click.echo(f"wrote {out / 'bench.json'}, bench.md, bench.png")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _image_paths(images: tuple[str, ...]) -> list[Path]:
    from clipexport.verify.inputs import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in images:
        path = Path(item)
        paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path])
    return paths


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--images", multiple=True, help="Image file or folder (repeatable).")
@click.option("--texts", type=click.Path(path_type=Path), default=None, help="UTF-8 file, one text per line.")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Where to write the .npy embeddings.")
@click.option("--precision", default="fp32", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images (and list them) instead of stopping.")
@_user_errors
def embed(artifact: Path, images: tuple[str, ...], texts: Path | None, output: Path, precision: str,
          batch_size: int, skip_bad: bool) -> None:
    """Embed images or texts with ARTIFACT (no torch) and save float32 [N, D] to OUTPUT."""
    import io

    import numpy as np

    from clipexport.errors import InputError
    from clipexport.files import write_bytes_atomic
    from clipexport.runtime import ClipRuntime
    from clipexport.verify.inputs import load_text_file

    if bool(images) == bool(texts):
        raise InputError("pass either --images or --texts (one kind per output file)")
    runtime = ClipRuntime.load(artifact, precision=precision)
    if texts:
        embeddings = runtime.encode_text(load_text_file(texts), batch_size=batch_size)
    else:
        paths = _image_paths(images)
        chunks = []
        with click.progressbar(range(0, len(paths), batch_size), label="embedding images", file=sys.stderr) as bar:
            for start in bar:
                batch, skipped = runtime.preprocessor.process(paths[start:start + batch_size],
                                                              on_error="skip" if skip_bad else "raise")
                for s in skipped:
                    click.echo(f"skipped {s.name}: {s.reason}", err=True)
                if len(batch):
                    chunks.append(runtime.encode_pixels(batch))
        embeddings = np.concatenate(chunks) if chunks else np.zeros((0, runtime.manifest.embed_dim), np.float32)
    buffer = io.BytesIO()
    np.save(buffer, embeddings)
    write_bytes_atomic(output, buffer.getvalue())
    click.echo(f"wrote {output}: {embeddings.shape[0]} x {embeddings.shape[1]} float32")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True)
@click.option("--labels", required=True, help="Comma-separated class names, e.g. cat,dog,car.")
@click.option("--template", "templates", multiple=True, help="Prompt template with {} (repeatable); default 'a photo of a {}.'")
@click.option("--precision", default="fp32", show_default=True)
@click.option("--top", type=int, default=3, show_default=True)
@_user_errors
def classify(artifact: Path, images: tuple[str, ...], labels: str, templates: tuple[str, ...], precision: str, top: int) -> None:
    """Zero-shot classify IMAGES (files or folders) among --labels."""
    from clipexport.runtime import ClipRuntime

    names = [label.strip() for label in labels.split(",") if label.strip()]
    paths = _image_paths(images)
    runtime = ClipRuntime.load(artifact, precision=precision)
    probs = runtime.classify(paths, names, templates=templates or None)
    width = max(len(str(p)) for p in paths)
    for path, row in zip(paths, probs):
        best = row.argsort()[::-1][:top]
        click.echo(f"{str(path):<{width}}  " + "  ".join(f"{names[i]} {100 * row[i]:5.1f}%" for i in best))


@main.command("models")
@click.option("--pretrained", is_flag=True, help="Also list each model's pretrained tags.")
@_user_errors
def models(pretrained: bool) -> None:
    """List the OpenCLIP model names (and pretrained tags) that export accepts."""
    from clipexport._deps import require

    open_clip = require("open_clip", "listing OpenCLIP models")
    if pretrained:
        for name, tag in open_clip.list_pretrained():
            click.echo(f"{name}\t{tag}")
    else:
        for name in open_clip.list_models():
            click.echo(name)


if __name__ == "__main__":
    main()
