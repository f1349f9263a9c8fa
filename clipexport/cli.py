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
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@_user_errors
def verify(artifact: Path, images: Path | None, texts: Path | None, num_images: int | None,
           batch_size: int | None, quiet: bool) -> None:
    """Compare ARTIFACT's graphs with the PyTorch model; write parity.json; exit 1 below tolerance."""
    from clipexport.verify import inputs
    from clipexport.verify.run import DEFAULT_BATCH_SIZE, VerifyOptions, verify_artifact

    options = VerifyOptions(artifact=artifact, images=images, texts=texts,
                            num_images=num_images or inputs.DEFAULT_NUM_IMAGES,
                            batch_size=batch_size or DEFAULT_BATCH_SIZE)
    report = verify_artifact(options, _progress(quiet))
    click.echo(report.table())
    click.echo(f"wrote {Path(artifact) / 'parity.json'}")
    if not report.passed:
        click.echo("error: parity below tolerance (see the table above)", err=True)
        sys.exit(1)


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
