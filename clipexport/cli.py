"""The command line: parse, call one library function, print. Every failure the tool can name
prints one `error:` line; the exit code says what kind of failure it was (see EXIT_CODES)."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from enum import Enum
from typing import Any, Callable, Iterable

import click

# Arrow's buffers from the C library's malloc in our own processes, unless the caller chose a pool:
# with the wheels' default, mimalloc, each dataset shard's write took 50-100 ms of CPU in an embed
# run on this project's 2-core VM once the model had run since the last shard, on a handful of page
# faults (huge pages, most likely, which the kernel compacts memory for under THP defrag "madvise",
# Debian's and Ubuntu's default); 3-5 ms with malloc (pyarrow 24; setting the pool after import
# did not help). Read by pyarrow when it is first imported, so set before anything imports it.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from clipexport._version import __version__
from clipexport.artifact.precision import QUANTIZED, CalibrationMethod, Precision, Target
from clipexport.errors import ClipExportError
from clipexport.inputs import DEFAULT_MAX_REQUEST_BYTES, FETCH_TIMEOUT_S
from clipexport.parity.gates import gates_summary
from clipexport.progress import StepPrinter
from clipexport.bulk.job import Engine
from clipexport.bulk.layouts import Layout
from clipexport.runtime.backends import BackendKind, triton_serving
from clipexport.search.plan import EXACT_MAX_ROWS, IndexKind

EXIT_INTERRUPTED = 130  # the shell's code for SIGINT
EXIT_CODES = """\b
Exit codes:
  0    success
  1    verify: parity below the gate
  2    a user mistake: bad input, path, name, option, or a damaged artifact
  3    the environment: a missing library, no GPU, no network
  4    a step failed on valid input: tracing, building an engine, running a backend
  130  interrupted (Ctrl-C or SIGTERM)"""

PRECISIONS = [p.value for p in Precision]
BACKENDS = [b.value for b in BackendKind]
TRITON_PLATFORMS = [b for b in BackendKind if triton_serving(b) is not None]


def _doc(**fields: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Fill a command's help text from the registries (so it cannot go stale)."""

    def fill(command: Callable[..., Any]) -> Callable[..., Any]:
        command.__doc__ = (command.__doc__ or "").format(**fields)
        return command

    return fill


class Member(click.Choice):
    """A choice among enum members, given to the command as the member: every name on the command
    line is parsed here, once, and the options classes below hold members only. `extra` values
    (verify's "all") pass through as strings."""

    def __init__(self, members: Iterable[Enum], extra: tuple[str, ...] = ()):
        self.members = {m.value: m for m in members}
        super().__init__([*self.members, *extra], case_sensitive=False)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, Enum):
            return value
        chosen = super().convert(value, param, ctx)
        return self.members.get(chosen, chosen)


FAST_DECODE_HELP = (
    "Decode JPEGs at the largest DCT scale that keeps the short side >= 2x the model's input (PIL "
    "draft), then resize exactly: 12 MP photos decode 2.4x faster (embed 1.46-1.57x on 2 cores); cosine "
    "to the exact path >= 0.9995, retrieval recall within 0.2 pt on the demo scenes (README); not "
    "bit-exact with PyTorch's preprocessing. Recorded in the dataset: a run made one way never "
    "resumes the other."
)


class _Cli(click.Group):
    """Click prints usage errors as three lines and Ctrl-C as "Aborted!" with exit 1; here every
    failure is one `error:` line with the exit code of its kind."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            code = 0
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            code = exc.exit_code
        except ClipExportError as exc:
            click.echo(f"error: {exc}", err=True)
            code = exc.exit_code
        except ImportError as exc:  # an optional library a module imports at its top: the same one line
            from clipexport._deps import missing_dependency

            error = missing_dependency(exc, "this command")
            if error is None:
                raise
            click.echo(f"error: {error}", err=True)
            code = error.exit_code
        except (click.exceptions.Abort, KeyboardInterrupt):
            # The run is over: a second Ctrl-C / SIGTERM (or a library re-raising the first one as
            # SIGINT while the interpreter shuts down) must not turn exit 130 into death by signal.
            if args is None:  # the process's own entry point, not a caller's CliRunner
                from clipexport.signals import ignore_interrupts

                ignore_interrupts()
            click.echo("error: interrupted; nothing half-written was left behind", err=True)
            code = EXIT_INTERRUPTED
        if not standalone_mode:
            return code
        if code == EXIT_INTERRUPTED and args is None:
            # Every cleanup of ours ran while the interrupt unwound the stack. What is left is the
            # interpreter's shutdown, where a library's thread or finalizer can still raise the
            # interrupt again and end the process by SIGINT (-2) instead of 130: exit now.
            # The atexit handlers still run (Ray's shutdown, temp files), each allowed to fail.
            import atexit

            try:
                atexit._run_exitfuncs()
            except BaseException:
                pass
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


def _progress(quiet: bool) -> Callable[[str], None]:
    return (lambda _: None) if quiet else StepPrinter(lambda line: click.echo(line, err=True))


def _layout_option(help_text: str) -> Callable[[Any], Any]:
    """--layout, for embed and index: the dataset's own layout, or clip-retrieval's."""
    return click.option("--layout", type=Member(Layout), default=Layout.OURS.value, show_default=True, help=help_text)


@click.group(
    cls=_Cli,
    # Every option can also come from the environment: CLIPEXPORT_<COMMAND>_<OPTION>, e.g.
    # CLIPEXPORT_SERVE_HOST=0.0.0.0 (what a container sets); the command line wins.
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "CLIPEXPORT"},
    epilog=EXIT_CODES,
)
@click.version_option(__version__, prog_name="clipexport")
def main() -> None:
    """Export CLIP models to ONNX/TensorRT and prove the numbers match PyTorch."""
    # open_clip and transformers log on the root logger (e.g. "initialized randomly", "Failed to
    # download"); our own progress and error lines say the same thing once.
    logging.getLogger().setLevel(logging.CRITICAL)
    # The hub's and transformers' progress bars would interleave with our progress lines.
    for flag in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        os.environ.setdefault(flag, "1")
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    from clipexport.signals import sigterm_as_interrupt

    sigterm_as_interrupt()


def _labelled_options(folder_help: str, drop_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--labeled-images, --templates and --max-accuracy-drop, shared by verify and quantize."""

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(
            (
                click.option("--labeled-images", type=click.Path(path_type=Path), default=None, help=folder_help),
                click.option(
                    "--templates",
                    type=click.Path(path_type=Path),
                    default=None,
                    help="Prompt templates for --labeled-images, one per line with {} "
                    "(default: DIR/templates.txt, else CLIP's 7 ImageNet templates).",
                ),
                click.option("--max-accuracy-drop", type=float, default=None, help=drop_help),
            )
        ):
            command = option(command)
        return command

    return apply


@main.command()
@click.argument("model")
@click.option(
    "--pretrained",
    default=None,
    help="OpenCLIP pretrained tag (e.g. openai, laion2b_s34b_b79k), a local checkpoint file, or 'random'. Default: random.",
)
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Artifact folder to create.")
@click.option(
    "--source",
    type=click.Choice(["auto", "open_clip", "hf"]),
    default="auto",
    show_default=True,
    help="Model library; auto picks hf for a save_pretrained folder or an org/name hub id.",
)
@click.option(
    "--opset",
    type=int,
    default=None,
    help="ONNX opset, 17 or newer (up to what the installed onnx knows). Default: 18.",
)
@click.option(
    "--normalize/--no-normalize", default=True, show_default=True, help="L2-normalise the embeddings inside the graphs."
)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --pretrained random.")
@click.option(
    "--tokenizer",
    type=click.Path(path_type=Path),
    default=None,
    help="A local Hugging Face tokenizer (folder saved with save_pretrained, or its tokenizer.json) for models "
    "whose tokenizer would be downloaded (SigLIP, multilingual text towers) or an HF folder without one.",
)
@click.option(
    "--text-config",
    type=click.Path(path_type=Path),
    default=None,
    help="A local folder with the config.json (and tokenizer files) of an OpenCLIP model's Hugging Face text "
    "tower (XLM-R, mT5, NLLB, RoBERTa), which open_clip would download even for random weights.",
)
@click.option(
    "--reparameterize/--no-reparameterize",
    default=True,
    show_default=True,
    help="Fold train-time multi-branch blocks (MobileCLIP's FastViT/MobileOne) into single convs before "
    "tracing, as deployment requires; verify still compares with the unfolded model.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def export(
    model: str,
    pretrained: str | None,
    output: Path,
    source: str,
    opset: int | None,
    normalize: bool,
    overwrite: bool,
    seed: int,
    tokenizer: Path | None,
    text_config: Path | None,
    reparameterize: bool,
    quiet: bool,
) -> None:
    """Export the vision and text towers of MODEL to ONNX, with manifest.json.

    MODEL is an OpenCLIP name (ViT-B-32, RN50, convnext_base, ...), a JSON OpenCLIP model config,
    a Hugging Face hub id, or a local save_pretrained folder.
    """
    from clipexport.export.pipeline import ExportOptions, export_model
    from clipexport.sources import SourceChoice
    from clipexport.export.specs import DEFAULT_OPSET

    options = ExportOptions(
        model=model,
        output=output,
        pretrained=pretrained,
        source=SourceChoice(source),
        opset=DEFAULT_OPSET if opset is None else opset,
        normalize=normalize,
        overwrite=overwrite,
        seed=seed,
        tokenizer=tokenizer,
        text_config=text_config,
        reparameterize=reparameterize,
    )
    _print_result(export_model(options, _progress(quiet)))


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of your own images (default: the shipped held-out photos plus seeded synthetic images).",
)
@click.option(
    "--texts",
    type=click.Path(path_type=Path),
    default=None,
    help="UTF-8 file, one caption per line (default: built-in captions).",
)
@click.option(
    "--num-images", type=click.IntRange(min=1), default=None, help="How many synthetic images (without --images)."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size for the exported graphs.")
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=Member(Precision, extra=("all",)),
    help="Graph variant(s) to check (repeatable); all = every variant in the manifest. Default: fp32.",
)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=Member(BackendKind),
    help=f"Where to run the candidate (repeatable; default onnxruntime): {', '.join(BACKENDS)}.",
)
@_labelled_options(
    "ImageFolder (one subfolder per class; optional classes.txt 'folder<TAB>prompt' or classes.json): "
    "zero-shot top-1/top-5 per variant and its drop against PyTorch FP32.",
    "Fail (exit 1) when a variant's top-1 is more than this many points below PyTorch FP32's.",
)
@click.option(
    "--retrieval",
    default=None,
    help="Retrieval drift: a folder with captions.tsv (image<TAB>caption) and/or class subfolders, or 'demo' "
    "(the shipped demo scenes). Prints the index precision x query precision matrix of R@1/5/10 and "
    "top-10 overlap, for the exact and the approximate index.",
)
@click.option(
    "--max-recall-drop",
    type=float,
    default=None,
    help="With --retrieval: fail (exit 1) when any cell's R@k is more than this many points below fp32/fp32's.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.option(
    "--json", "as_json", is_flag=True, help="The report (what parity.json holds) as one JSON object on stdout."
)
@_doc(gates=gates_summary())
def verify(
    artifact: Path,
    images: Path | None,
    texts: Path | None,
    num_images: int | None,
    batch_size: int | None,
    precisions: tuple[Precision | str, ...],
    backends: tuple[BackendKind, ...],
    labeled_images: Path | None,
    templates: Path | None,
    max_accuracy_drop: float | None,
    retrieval: str | None,
    max_recall_drop: float | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Compare ARTIFACT's graphs with the PyTorch FP32 model; write parity.json; exit 1 below a gate.

    Gates per tower (min / mean cosine of the embeddings): {gates}. Zero-shot top-1 agreement with
    PyTorch is reported for each variant.
    """
    from clipexport import datasets
    from clipexport.verify.run import DEFAULT_BATCH_SIZE, VerifyOptions, verify_artifact

    options = VerifyOptions(
        artifact=artifact,
        images=images,
        texts=texts,
        num_images=datasets.DEFAULT_NUM_IMAGES if num_images is None else num_images,
        batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
        precisions=precisions or (Precision.FP32,),
        backends=backends or (BackendKind.ONNXRUNTIME,),
        labeled_images=labeled_images,
        templates=templates,
        max_accuracy_drop=max_accuracy_drop,
        retrieval=retrieval,
        max_recall_drop=max_recall_drop,
    )
    report = verify_artifact(options, _progress(quiet))
    _print_result(report, as_json)
    if not report.passed:
        where = '"passed": false in the report' if as_json else "the table above"
        click.echo(f"error: parity, accuracy or retrieval below its gate (see {where})", err=True)
        sys.exit(1)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--precision", type=Member(QUANTIZED), required=True, help="Variant to add to ARTIFACT.")
@click.option("--towers", default="vision,text", show_default=True, help="Comma-separated towers to convert.")
@click.option(
    "--target",
    type=Member(Target),
    default=None,
    help="Q/DQ placement: TensorRT's (ModelOpt, FP16 elsewhere; the default) or ONNX Runtime CPU's "
    "(INT8 only: MatMul/Gemm S8S8).",
)
@click.option(
    "--method",
    type=Member(CalibrationMethod),
    default=None,
    help="Calibration method. Default: entropy for INT8 on tensorrt, max for cpu and for FP8.",
)
@click.option(
    "--calibration-images",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of images like the ones you will serve (default: the repo's calibration/images).",
)
@click.option(
    "--calibration-texts",
    type=click.Path(path_type=Path),
    default=None,
    help="UTF-8 file, one caption per line (default: the repo's calibration/captions.txt).",
)
@click.option(
    "--calibration-size", type=click.IntRange(min=1), default=None, help="Calibration samples per tower (default: 128)."
)
@click.option(
    "--sensitivity",
    is_flag=True,
    help="Measure every quantized node's error; write sensitivity.json and print the worst.",
)
@click.option(
    "--fallback/--no-fallback",
    default=True,
    show_default=True,
    help="Keep the most sensitive INT8 nodes in high precision until the accuracy target holds.",
)
@click.option(
    "--io-dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="FP16 graphs' input/output type (the runtime converts either way).",
)
@_labelled_options(
    "INT8: an ImageFolder (as verify's) to validate on: more nodes go back to high precision until "
    "zero-shot top-1 is within --max-accuracy-drop of the FP32 graphs'.",
    "Top-1 points INT8 may lose on --labeled-images (default: 1.0).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def quantize(
    artifact: Path,
    precision: Precision,
    towers: str,
    target: Target | None,
    method: CalibrationMethod | None,
    calibration_images: Path | None,
    calibration_texts: Path | None,
    calibration_size: int | None,
    sensitivity: bool,
    fallback: bool,
    io_dtype: str,
    labeled_images: Path | None,
    templates: Path | None,
    max_accuracy_drop: float | None,
    quiet: bool,
) -> None:
    """Add FP16, or calibrated INT8 / FP8, graphs to ARTIFACT (vision.<precision>.onnx, text.<precision>.onnx)."""
    from clipexport.precision.calibration import DEFAULT_CALIBRATION_SIZE, CalibrationSource
    from clipexport.precision.pipeline import QuantizeOptions, quantize_artifact

    from clipexport.precision.accuracy import AccuracyTarget

    options = QuantizeOptions(
        artifact=artifact,
        precision=precision,
        towers=_towers(towers),
        target=target,
        method=method,
        calibration=CalibrationSource(
            images=calibration_images,
            texts=calibration_texts,
            size=DEFAULT_CALIBRATION_SIZE if calibration_size is None else calibration_size,
        ),
        sensitivity=sensitivity,
        fallback=fallback,
        fp16_io=io_dtype == "float16",
        accuracy=AccuracyTarget.from_options(labeled_images, templates, max_accuracy_drop),
    )
    _print_result(quantize_artifact(options, _progress(quiet)))


def _towers(value: str) -> tuple[Any, ...]:
    from clipexport.errors import InputError
    from clipexport.artifact.manifest import Tower

    names = [v.strip() for v in value.split(",") if v.strip()]
    try:
        return tuple(dict.fromkeys(Tower(n) for n in names))
    except ValueError:
        raise InputError(f"--towers '{value}' is not valid; use vision, text or vision,text") from None


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--precision", type=Member(Precision), default=None, help="Which ONNX variant to compile (default: the recipe's)."
)
@click.option(
    "--recipe",
    default=None,
    help="A shipped recipe name (see `clipexport recipes`) or a TOML file. Default: server GPU, batch 1-128.",
)
@click.option("--towers", default="vision,text", show_default=True, help="Comma-separated towers to build.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the resolved settings and the equivalent trtexec commands; build nothing (works without TensorRT).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def build(
    artifact: Path, precision: Precision | None, recipe: str | None, towers: str, dry_run: bool, quiet: bool
) -> None:
    """Compile ARTIFACT's ONNX graphs into TensorRT engines: engines/<tower>.<precision>.plan + .json provenance."""
    from clipexport.trt.pipeline import BuildOptions, build_artifact, dry_run as plan

    options = BuildOptions(artifact=artifact, precision=precision, recipe=recipe, towers=_towers(towers))
    _print_result(plan(options) if dry_run else build_artifact(options, _progress(quiet)))


@main.command("recipes")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="The list as JSON lines: name, precision, description, source.")
def recipes(name: str | None, as_json: bool) -> None:
    """List the build recipes, or show one (validated) by NAME."""
    from clipexport.trt.recipe import list_recipes, load_recipe, resolve_recipe

    if name is None or as_json:
        import json

        chosen = [resolve_recipe(name)] if name is not None else [load_recipe(path) for path in list_recipes()]
        for recipe in chosen:
            if as_json:
                fields = {
                    "name": recipe.name,
                    "precision": recipe.precision.value,
                    "description": recipe.description,
                    "source": str(recipe.source),
                }
                click.echo(json.dumps(fields, ensure_ascii=False))
            else:
                click.echo(f"{recipe.name:<24} {recipe.precision.value:<5} {recipe.description}")
        return
    recipe = resolve_recipe(name)
    click.echo(
        f"{recipe.name}: {recipe.description}\nsource: {recipe.source}\ndevice: {recipe.device} "
        f"[{recipe.device_class.value}]\nprecision: {recipe.precision.value}\nworkspace: {recipe.workspace_mib} MiB\n"
        f"optimization level: {recipe.optimization_level}\nversion compatible: {recipe.version_compatible}\n"
        f"hardware compatible: {recipe.hardware_compatible}"
    )
    for tower, profile in recipe.profiles.items():
        seq = f", sequence {list(profile.sequence.as_tuple())}" if profile.sequence else ""
        click.echo(f"profile {tower.value}: batch {list(profile.batch.as_tuple())}{seq}")
    for note in recipe.notes:
        click.echo(f"note: {note}")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--backends",
    default="pytorch,onnxruntime",
    show_default=True,
    help=f"Comma-separated: pytorch (the eager baseline), {', '.join(BACKENDS)}.",
)
@click.option("--precisions", default="fp32", show_default=True, help=f"Comma-separated: {', '.join(PRECISIONS)}.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--towers", default="vision,text", show_default=True, help="Comma-separated towers to time.")
@click.option(
    "--min-iterations",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Timed calls per point (at least).",
)
@click.option(
    "--min-seconds",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Timed seconds per point (at least).",
)
@click.option("--cpu", "cpu_only", is_flag=True, help="Pin ONNX Runtime and PyTorch to the CPU.")
@click.option(
    "--output", "-o", type=click.Path(path_type=Path), default=None, help="Report folder (default: ARTIFACT/bench)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def bench(
    artifact: Path,
    backends: str,
    precisions: str,
    batch_sizes: str,
    towers: str,
    min_iterations: int,
    min_seconds: float,
    cpu_only: bool,
    output: Path | None,
    quiet: bool,
) -> None:
    """Throughput and p50/p90/p99 latency per tower x backend x precision x batch, vs PyTorch eager;
    writes bench.json, bench.md and bench.png."""
    from clipexport.bench.run import BenchOptions, run_bench
    from clipexport.errors import InputError

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
    except ValueError:
        raise InputError(f"--batch-sizes '{batch_sizes}' is not a comma-separated list of integers") from None
    options = BenchOptions(
        artifact=artifact,
        backends=_csv(backends),
        precisions=_csv(precisions),
        batch_sizes=sizes,
        towers=_towers(towers),
        min_iterations=min_iterations,
        min_seconds=min_seconds,
        cpu_only=cpu_only,
        output=output,
    )
    _print_result(run_bench(options, _progress(quiet)))


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _runtime_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The ClipRuntime.load settings shared by the commands that run an artifact."""
    for option in reversed(
        [
            click.option(
                "--precision", type=Member(Precision), default="fp32", show_default=True, help="Graph variant to run."
            ),
            click.option(
                "--backend",
                type=Member(BackendKind),
                default="onnxruntime",
                show_default=True,
                help="Where to run the graphs.",
            ),
            click.option(
                "--exif-transpose",
                is_flag=True,
                help="Rotate photos by their EXIF orientation first (open_clip does not).",
            ),
            click.option(
                "--device",
                default=None,
                help="With --backend openvino: CPU (default), GPU, NPU or AUTO (else CLIPEXPORT_OPENVINO_DEVICE).",
            ),
        ]
    ):
        command = option(command)
    return command


class _LazyBar:
    """A progress bar on stderr (items/s and ETA) that appears with the first finished batch, so a
    run that fails while checking its inputs prints only its error line. Where stderr is not a
    terminal (a file, a CI log, a pipe) it prints a line instead: with the first batch, then at most
    every LINE_SECONDS, and when all is done, so a long job never looks hung."""

    LINE_SECONDS = 10.0  # a CI log shows a job is alive without a line per batch

    def __init__(self, label: str, quiet: bool = False):
        self.label, self.bar, self.quiet = label, None, quiet
        import time

        self.lines = not sys.stderr.isatty()
        self.done, self.last_line = 0, 0.0
        self.started = time.monotonic()  # lines: rates since the command began, its start-up included

    def __call__(self, done: int, total: int) -> None:
        import time

        if self.quiet:
            return
        now = time.monotonic()
        if self.lines:
            self.done += done
            if self.done == done or self.done >= total or now - self.last_line >= self.LINE_SECONDS:
                self.last_line = now
                rate = self._rate()
                left = (total - self.done) / (self.done / (now - self.started)) if now > self.started else 0.0
                eta = f", ETA {left:.0f} s" if self.done < total and rate else ""
                click.echo(
                    f"{self.label} {self.done}/{total} ({100 * self.done / max(total, 1):.0f}%)"
                    f"{', ' + rate if rate else ''}{eta}",
                    err=True,
                )
            return
        if self.bar is None:
            self.started = now
            self.bar = click.progressbar(
                length=total, label=self.label, file=sys.stderr, show_eta=True, item_show_func=lambda _: self._rate()
            )
            self.bar.__enter__()
        self.done += done
        self.bar.update(done, self.done)

    def _rate(self) -> str:
        import time

        elapsed = time.monotonic() - self.started
        return f"{self.done / elapsed:.1f}/s" if elapsed > 0 and self.done else ""

    def __enter__(self) -> "_LazyBar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--images", multiple=True, help="Image file, folder, or .tar shard of images (webdataset layout; repeatable)."
)
@click.option(
    "--image-list", type=click.Path(path_type=Path), default=None, help="Text file, one image path or URI per line."
)
@click.option(
    "--image-table",
    type=click.Path(path_type=Path),
    default=None,
    help="Parquet / CSV / TSV file with a column of image paths or URIs (--path-column).",
)
@click.option("--path-column", default="path", show_default=True, help="The --image-table column that holds the paths.")
@click.option(
    "--texts",
    type=click.Path(path_type=Path),
    default=None,
    help="UTF-8 file, one text per line; every line is a row, blank lines included (the empty caption).",
)
@click.option(
    "--text-table",
    type=click.Path(path_type=Path),
    default=None,
    help="Parquet / CSV / TSV file with a column of texts (--text-column).",
)
@click.option("--text-column", default="text", show_default=True, help="The --text-table column that holds the texts.")
@click.option(
    "--pairs",
    is_flag=True,
    help="Embed each image and its caption in one pass (a tar sample's .txt, or --image-table's --caption-column): "
    "rows get image_embedding and text_embedding.",
)
@click.option(
    "--caption-column", default="caption", show_default=True, help="With --pairs: the --image-table caption column."
)
@click.option(
    "--keep-columns",
    default=None,
    help="Comma-separated columns kept beside the embeddings in a dataset (default: all of them — every "
    "--image-table / --text-table column but the paths, a tar sample's caption (.txt) and .json fields with "
    "its shard, the text of --texts rows; '' keeps none).",
)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="A folder: the sharded, resumable Parquet dataset (part-*.parquet only: each shard's metadata says what made it). "
    "A .npy path: one float32 [N, D] file, with OUTPUT.index.txt naming the input of every row.",
)
@_runtime_options
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Inputs per run.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images (and list them) instead of stopping.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Decode processes (default: every core, or the cores --threads leaves free, at least 1), at the lowest "
    "CPU priority: the backend runs first and decoding takes the CPU time it leaves.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="The backend's intra-op threads.")
@click.option("--fast-decode", is_flag=True, help=FAST_DECODE_HELP)
@click.option(
    "--shard-size", type=click.IntRange(min=1), default=10_000, show_default=True, help="Rows per Parquet shard."
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="Stored embedding type (float16 halves the dataset).",
)
@click.option("--overwrite", is_flag=True, help="Start the dataset over (only a folder this command wrote).")
@_layout_option(
    "clip-retrieval: also write img_emb/, text_emb/ (.npy) and metadata/ (.parquet) as clip-retrieval's "
    "inference does (its index, clip_back and embedding-reader read them); the dataset stays behind them "
    "in .clipexport-dataset/ for resumes and --append."
)
@click.option(
    "--append",
    is_flag=True,
    help="Add to the dataset the inputs it does not hold yet (a longer list, more folders), into new shards; "
    "rows are never removed.",
)
@click.option(
    "--engine",
    type=click.Choice([e.value for e in Engine]),
    default="local",
    show_default=True,
    help="local: decode workers + the backend here; ray: the same job on Ray Data (pip install 'clipexport[ray]').",
)
@click.option(
    "--ray-address", default=None, help="With --engine ray: the cluster (default: RAY_ADDRESS, else a local one)."
)
@click.option(
    "--ray-actors",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="With --engine ray: embedding actors (one runtime each; one per GPU on GPU nodes).",
)
@click.option(
    "--ray-gpus-per-actor",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="With --engine ray: GPUs per embedding actor.",
)
@click.option(
    "--server",
    default=None,
    help="Embed on a Triton server (clipexport serve / triton) at host:port (HTTP) or grpc://host:port "
    "(.npy output); ARTIFACT's folder name is the served model name unless --model says otherwise.",
)
@click.option("--model", "served_model", default=None, help="With --server: the served model name prefix.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object on stdout.")
def embed(
    artifact: Path,
    images: tuple[str, ...],
    image_list: Path | None,
    image_table: Path | None,
    path_column: str,
    texts: Path | None,
    text_table: Path | None,
    text_column: str,
    pairs: bool,
    caption_column: str,
    keep_columns: str | None,
    output: Path,
    precision: Precision,
    backend: BackendKind,
    batch_size: int,
    skip_bad: bool,
    exif_transpose: bool,
    device: str | None,
    workers: int | None,
    threads: int | None,
    fast_decode: bool,
    shard_size: int,
    dtype: str,
    overwrite: bool,
    append: bool,
    layout: Layout,
    engine: str,
    ray_address: str | None,
    ray_actors: int,
    ray_gpus_per_actor: float,
    server: str | None,
    served_model: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Embed images or texts with ARTIFACT (no torch): a folder OUTPUT gets a sharded Parquet dataset
    that a rerun of the same command resumes; a .npy OUTPUT gets one array."""
    from clipexport.bulk.input_list import InputSpec

    spec = InputSpec(
        images=images,
        image_list=image_list,
        image_table=image_table,
        path_column=path_column,
        texts=texts,
        text_table=text_table,
        text_column=text_column,
        keep_columns=None if keep_columns is None else tuple(c.strip() for c in keep_columns.split(",") if c.strip()),
        pairs=pairs,
        caption_column=caption_column,
    )
    from clipexport.bulk.embed import EmbedOptions, embed as run_embed
    from clipexport.bulk.job import RayOptions

    options = EmbedOptions(
        artifact=artifact,
        output=output,
        inputs=spec,
        precision=precision,
        backend=backend,
        batch_size=batch_size,
        workers=workers,
        threads=threads,
        device=device,
        fast_decode=fast_decode,
        skip_bad=skip_bad,
        exif_transpose=exif_transpose,
        shard_size=shard_size,
        dtype=dtype,
        overwrite=overwrite,
        append=append,
        layout=layout,
        engine=Engine(engine),
        ray=RayOptions(address=ray_address, actors=ray_actors, gpus_per_actor=ray_gpus_per_actor),
        server=server,
        model=served_model,
    )
    with _LazyBar("embedding", quiet) as advance:
        result = run_embed(options, advance, _progress(quiet))
    for line in result.warnings():
        click.echo(line, err=True)
    _print_result(result, as_json)


def _print_result(result: Any, as_json: bool = False) -> None:
    """A step's result on stdout: its summary lines, or with --json one JSON object (`to_json`)."""
    if as_json:
        import json

        click.echo(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        for line in result.summary():
            click.echo(line)


@main.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Index folder to create.")
@click.option(
    "--kind",
    type=click.Choice([k.value for k in IndexKind]),
    default="auto",
    show_default=True,
    help=f"auto: exact up to {EXACT_MAX_ROWS:,} rows (and within --max-memory), else IVF (PQ codes when the "
    "vectors do not fit --max-memory); exact or approximate to choose yourself.",
)
@click.option("--max-memory", default=None, help="Memory budget of the index, e.g. 4G or 512M (default: none).")
@click.option(
    "--target-recall",
    type=float,
    default=0.95,
    show_default=True,
    help="Approximate indexes: the smallest nprobe whose recall@10 against exact search reaches this.",
)
@_layout_option(
    "clip-retrieval: the folder clip_back serves (image.index / text.index, metadata/), each index one of ours "
    "behind it."
)
@click.option(
    "--column",
    default=None,
    help="Of a --pairs dataset: index image_embedding (the default) or text_embedding.",
)
@click.option(
    "--queries",
    type=click.Path(path_type=Path),
    default=None,
    help="An embeddings dataset of queries (e.g. texts, same artifact): recall is measured for them too.",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an index of another dataset (only a folder this command wrote)."
)
@click.option(
    "--update",
    is_flag=True,
    help="Add the rows of the dataset's new shards (embed --append) to the index there, with its trained "
    "lists and codebook; recall is measured again, and a rebuild is said to be due when it has drifted.",
)
@click.option(
    "--accept-low-recall",
    is_flag=True,
    help="Keep an approximate index whose measured recall@10 misses --target-recall even when every list is "
    "scanned, and exit 0 (without it: the index is written, and the command exits 1 saying so).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress.")
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object on stdout.")
def index(
    dataset: Path,
    output: Path,
    kind: str,
    max_memory: str | None,
    target_recall: float,
    queries: Path | None,
    overwrite: bool,
    update: bool,
    layout: Layout,
    column: str | None,
    accept_low_recall: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Build a FAISS index over DATASET (the folder `embed -o DIR` wrote), with its measured recall;
    a rerun of an interrupted build resumes it."""
    from clipexport.search.index import IndexOptions, build_index
    from clipexport.search.plan import parse_memory

    options = IndexOptions(
        dataset=dataset,
        output=output,
        kind=IndexKind(kind),
        max_memory=parse_memory(max_memory),
        target_recall=target_recall,
        queries=queries,
        overwrite=overwrite,
        update=update,
        layout=layout,
        column=column,
        accept_low_recall=accept_low_recall,
    )
    with _LazyBar("indexing", quiet) as advance:
        result = build_index(options, advance, _progress(quiet))
    _print_result(result, as_json)


@main.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(path_type=Path))
@click.option("--text", "texts", multiple=True, help="A text query (repeatable).")
@click.option("--image", "images", multiple=True, help="An image file query (repeatable).")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Hits per query.")
@click.option(
    "--artifact",
    type=click.Path(path_type=Path),
    default=None,
    help="The model that embeds the queries (default: the one the dataset was embedded with).",
)
@click.option(
    "--precision",
    type=Member(Precision),
    default=None,
    help="Query precision (default: the index's; another one is allowed, and said).",
)
@click.option(
    "--backend", type=Member(BackendKind), default=None, help="Where the query model runs (default: the dataset's)."
)
@click.option("--nprobe", type=int, default=None, help="Approximate indexes: lists to scan (default: the tuned value).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query on stdout.")
def search(
    index_dir: Path,
    texts: tuple[str, ...],
    images: tuple[str, ...],
    k: int,
    artifact: Path | None,
    precision: Precision | None,
    backend: BackendKind | None,
    nprobe: int | None,
    as_json: bool,
) -> None:
    """Top-k rows of INDEX for each --text / --image query: score (cosine) and id."""
    import json

    from clipexport.search.searcher import Searcher

    with Searcher(index_dir, artifact=artifact, precision=precision, backend=backend, nprobe=nprobe) as searcher:
        answers = searcher.search_queries(list(texts), list(images), k)
        for note in searcher.notes:
            click.echo(f"note: {note}", err=True)
    for kind, query, found in answers:
        if as_json:
            click.echo(json.dumps({kind: query, "hits": [{"id": h.id, "score": h.score} for h in found]}))
            continue
        click.echo(f"{kind}: {query}")
        for rank, hit in enumerate(found, start=1):
            click.echo(f"  {rank:>3}  {hit.score:.4f}  {hit.id}")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True)
@click.option("--labels", default=None, help="Comma-separated class names, e.g. cat,dog,car.")
@click.option("--label", "label_list", multiple=True, help="One class name (repeatable; may contain commas).")
@click.option(
    "--labels-file", type=click.Path(path_type=Path), default=None, help="UTF-8 file, one class name per line."
)
@click.option(
    "--template",
    "templates",
    multiple=True,
    help="Prompt template with one {} (repeatable); default 'a photo of a {}.'",
)
@_runtime_options
@click.option(
    "--top", type=click.IntRange(min=1), default=3, show_default=True, help="How many classes to print per image."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout (labels as given).")
def classify(
    artifact: Path,
    images: tuple[str, ...],
    labels: str | None,
    label_list: tuple[str, ...],
    labels_file: Path | None,
    templates: tuple[str, ...],
    precision: Precision,
    backend: BackendKind,
    top: int,
    exif_transpose: bool,
    device: str | None,
    as_json: bool,
) -> None:
    """Zero-shot classify IMAGES (files or folders) among the labels."""
    from clipexport.datasets import image_paths
    from clipexport.runtime import ClipRuntime
    from clipexport.datasets import collect_labels

    names = collect_labels(labels, label_list, labels_file)
    paths = image_paths(images)
    with ClipRuntime.load(
        artifact, backend=backend, precision=precision, exif_transpose=exif_transpose, device=device
    ) as runtime:
        probs = runtime.classify(paths, names, templates=templates or None)
    from clipexport.inputs import shown

    width = max(len(shown(p)) for p in paths)
    for path, row in zip(paths, probs):
        best = row.argsort()[::-1][:top]
        if as_json:
            import json

            top_k = [{"label": names[i], "probability": round(float(row[i]), 6)} for i in best]
            click.echo(json.dumps({"image": shown(path), "top": top_k}, ensure_ascii=False))
        else:
            click.echo(f"{shown(path):<{width}}  " + "  ".join(f"{names[i]} {100 * row[i]:5.1f}%" for i in best))


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--output", "-o", required=True, type=click.Path(path_type=Path), help="Model repository folder to create."
)
@click.option("--name", default=None, help="Model name prefix (default: the artifact folder's name).")
@click.option(
    "--platform",
    type=Member(TRITON_PLATFORMS),
    default="onnxruntime",
    show_default=True,
    help="Tower models: ONNX graphs on Triton's onnxruntime or openvino backend, or the engines from "
    "clipexport build (tensorrt).",
)
@click.option(
    "--precision",
    type=Member(Precision),
    default="fp32",
    show_default=True,
    help="Graph or engine variant the towers serve.",
)
@click.option(
    "--max-batch",
    type=int,
    default=None,
    help="max_batch_size of every model (default: 64; for TensorRT the engine profile's max, never more).",
)
@click.option(
    "--preferred-batch", default="", help="Comma-separated preferred batch sizes for the towers' dynamic batcher."
)
@click.option("--max-queue-delay-us", type=int, default=2000, show_default=True, help="Dynamic batcher queue delay.")
@click.option(
    "--instance-kind",
    type=click.Choice(["gpu", "cpu"]),
    default="gpu",
    show_default=True,
    help="Where the tower instances run.",
)
@click.option("--instances", type=int, default=1, show_default=True, help="Instances per tower model.")
@click.option("--cuda-graphs", is_flag=True, help="Enable CUDA graphs for TensorRT towers.")
@click.option("--overwrite", is_flag=True, help="Replace a repository written earlier by this command.")
def triton(
    artifact: Path,
    output: Path,
    name: str | None,
    platform: BackendKind,
    precision: Precision,
    max_batch: int | None,
    preferred_batch: str,
    max_queue_delay_us: int,
    instance_kind: str,
    instances: int,
    cuda_graphs: bool,
    overwrite: bool,
) -> None:
    """Write a Triton model repository for ARTIFACT: the two towers, python-backend preprocessing and
    tokenizer models, and the image / text ensembles (see the README it writes)."""
    from clipexport.errors import InputError
    from clipexport.serving.repository import InstanceKind, RepositoryOptions, write_repository

    try:
        preferred = tuple(int(b) for b in preferred_batch.split(",") if b.strip())
    except ValueError:
        raise InputError(f"--preferred-batch '{preferred_batch}' is not a comma-separated list of integers") from None
    options = RepositoryOptions(
        artifact=artifact,
        output=output,
        name=name,
        platform=platform,
        precision=precision,
        max_batch_size=max_batch,
        preferred_batch_sizes=preferred,
        max_queue_delay_us=max_queue_delay_us,
        instance_kind=InstanceKind.GPU if instance_kind == "gpu" else InstanceKind.CPU,
        instances=instances,
        cuda_graphs=cuda_graphs,
        overwrite=overwrite,
    )
    models = write_repository(options, _progress(False))
    click.echo(f"wrote {output}: {', '.join(models)} (how to run it: {output / 'README.md'})")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for all).")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--precision", type=Member(Precision), default="fp32", show_default=True)
@click.option("--backend", type=Member(BackendKind), default="onnxruntime", show_default=True)
@click.option("--max-batch", type=int, default=64, show_default=True, help="Largest batch the dynamic batcher forms.")
@click.option(
    "--max-queue-delay-us",
    type=int,
    default=2000,
    show_default=True,
    help="How long the batcher waits for more requests.",
)
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances (each its own sessions).")
@click.option("--name", default=None, help="Model name prefix (default: the artifact folder's name).")
@click.option(
    "--max-request-bytes",
    type=int,
    default=DEFAULT_MAX_REQUEST_BYTES,
    show_default=True,
    help="Largest request (all its items together); larger ones are refused with HTTP 413 / 400.",
)
@click.option(
    "--index",
    type=click.Path(path_type=Path),
    default=None,
    help="Serve searches over this index (clipexport index): POST /search and the search page at /.",
)
@click.option(
    "--image-root",
    type=click.Path(path_type=Path),
    default=None,
    help="The search page shows result images that are files under this folder (never any other path).",
)
@click.option(
    "--allow-url-fetch",
    is_flag=True,
    help="Image inputs may be http(s) URLs, fetched by the server (--url-fetch-timeout and --max-request-bytes "
    "each); "
    "off by default: the server then reaches only what a client sends it.",
)
@click.option(
    "--url-fetch-timeout",
    type=float,
    default=FETCH_TIMEOUT_S,
    show_default=True,
    help="With --allow-url-fetch: seconds one image URL may take, the whole fetch.",
)
@click.option(
    "--url-fetch-private",
    is_flag=True,
    help="With --allow-url-fetch: also fetch from loopback, private and link-local addresses (off: such "
    "URLs, and redirects to them, are refused, so a client cannot make the server reach its own ports, "
    "a cloud's metadata service or the private network).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def serve(
    artifact: Path,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    precision: Precision,
    backend: BackendKind,
    max_batch: int,
    max_queue_delay_us: int,
    instances: int,
    name: str | None,
    max_request_bytes: int,
    index: Path | None,
    image_root: Path | None,
    allow_url_fetch: bool,
    url_fetch_timeout: float,
    url_fetch_private: bool,
    quiet: bool,
) -> None:
    """Serve image and text embeddings of ARTIFACT on a real Triton Inference Server (NVIDIA PyTriton's
    bundled tritonserver, with dynamic batching).

    \b
    HTTP (--http-port): POST /v1/embeddings and GET /v1/models (OpenAI's API: the openai client works
    as is; images with "modality": "image"), POST /embed/text, POST /embed/image (curl -F file=@a.jpg),
    POST /search and the search page at / (with --index), GET /health, /ready, /metrics, and KServe
    v2 (/v2/...). gRPC (--grpc-port): KServe v2. Triton's own metrics: --metrics-port.
    Every option may come from the environment: CLIPEXPORT_SERVE_HOST=0.0.0.0 (a container's
    listen-everywhere address), CLIPEXPORT_SERVE_HTTP_PORT, ... Ctrl-C or SIGTERM stops it."""
    from clipexport.serving.server import ServeOptions, client_host, serve as run_server

    options = ServeOptions(
        artifact=artifact,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        precision=precision,
        backend=backend,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        name=name,
        max_request_bytes=max_request_bytes,
        index=index,
        image_root=image_root,
        allow_url_fetch=allow_url_fetch,
        url_fetch_timeout_s=url_fetch_timeout,
        url_fetch_private=url_fetch_private,
    )

    def ready(models: list[str]) -> None:
        shown = client_host(host)
        page = f" search page http://{shown}:{http_port}/" if index is not None else ""
        click.echo(
            f"ready: http://{shown}:{http_port} grpc://{shown}:{grpc_port} metrics http://{shown}:{metrics_port}/metrics "
            f"models {', '.join(models)}{page} (Ctrl-C to stop)",
            err=True,
        )

    try:
        run_server(options, _progress(quiet), on_ready=ready)
    except KeyboardInterrupt as exc:
        # A stop asked for (Ctrl-C, SIGTERM from a container runtime) is how a server ends: no error.
        from clipexport.signals import interrupted_by

        how = interrupted_by(exc)
        click.echo(f"stopped on {how}: in-flight requests were answered, the workspace removed", err=True)


@main.command("models")
@click.option("--pretrained", is_flag=True, help="Also list each model's pretrained tags.")
@click.option("--json", "as_json", is_flag=True, help='JSON lines: {"model": ...} (with --pretrained, and "tag").')
def models(pretrained: bool, as_json: bool) -> None:
    """List the OpenCLIP model names (and pretrained tags) that export accepts."""
    import json

    from clipexport.sources.openclip import list_open_clip

    for row in list_open_clip(pretrained):
        if as_json:
            click.echo(json.dumps(dict(zip(("model", "tag"), row)), ensure_ascii=False))
        else:
            click.echo("\t".join(row))


if __name__ == "__main__":
    main()
