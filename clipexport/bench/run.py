"""Run the benchmark grid and write bench.json, bench.md and bench.png.

Backends:
- pytorch: the source model, eager, reloaded from the manifest (the baseline every ratio uses);
- onnxruntime: the artifact's graphs (the runtime's provider choice; `--cpu` pins the CPU);
- tensorrt: the engines from `clipexport build`, when TensorRT and engines are present.
Text runs as each backend runs in production: PyTorch at the full context length (open_clip's
encode_text), the exported graphs through the runtime's fast path when the graph allows it.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import clipexport
from clipexport._deps import installed_versions
from clipexport.artifact.layout import BENCH_DIR, inside
from clipexport.artifact.manifest import Manifest, Tower, check_graph_files, read_manifest
from clipexport.artifact.precision import Precision
from clipexport.bench.flops import graph_flops
from clipexport.bench.timing import WARMUP, Timing, gemm_peak_flops, measure
from clipexport.errors import ClipExportError, InputError
from clipexport.files import utc_timestamp, write_bytes_atomic, write_json_atomic
from clipexport.progress import Progress, silent
from clipexport.runtime.backends import BackendKind, BackendOptions, open_backend
from clipexport.runtime.text_length import placeholder_ids, trim

PYTORCH = "pytorch"  # the eager baseline every ratio uses; the others are the runtime's backends
BACKENDS = (PYTORCH, *(b.value for b in BackendKind))
PROMPT_LABELS = ("cat", "dog", "school bus", "red fox", "hot air balloon", "espresso", "lighthouse", "violin")


@dataclass(frozen=True)
class BenchOptions:
    artifact: Path
    backends: tuple[str, ...] = ("pytorch", "onnxruntime")
    precisions: tuple[Precision, ...] = (Precision.FP32,)
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    towers: tuple[Tower, ...] = (Tower.VISION, Tower.TEXT)
    min_iterations: int = 10
    min_seconds: float = 1.0
    cpu_only: bool = False  # pin ONNX Runtime to its CPU provider
    output: Path | None = None  # default: ARTIFACT/bench

    def __post_init__(self) -> None:  # names parsed here, once
        object.__setattr__(
            self, "precisions", tuple(dict.fromkeys(Precision.parse(p, "--precisions") for p in self.precisions))
        )


@dataclass
class BenchResult:
    settings: dict[str, Any]
    machine: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    output: Path | None = None  # the folder bench.json, bench.md and bench.png were written to

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "machine": self.machine, "results": self.rows, "skipped": self.skipped}

    def summary(self) -> list[str]:
        """What `bench` prints: the report's table (bench.md), and where it was written."""
        return [markdown(self), f"wrote {self.output / 'bench.json'}, bench.md, bench.png"]


def run_bench(options: BenchOptions, progress: Progress = silent) -> BenchResult:
    unknown = [b for b in options.backends if b not in BACKENDS]
    if unknown:
        raise InputError(f"unknown backend(s) {', '.join(unknown)} (available: {', '.join(BACKENDS)})")
    if not options.batch_sizes or min(options.batch_sizes) < 1:
        raise InputError("--batch-sizes must be positive integers, e.g. 1,8,32")
    precisions = options.precisions
    root = Path(options.artifact)
    manifest = read_manifest(root)
    out = Path(options.output) if options.output else root / BENCH_DIR
    if out.exists() and not out.is_dir():
        raise InputError(f"--output {out} is a file; pass a folder for bench.json, bench.md and bench.png")
    for tower in options.towers:
        for precision in precisions:
            check_graph_files(root, manifest.tower(tower).graph(precision))
    progress("measuring the machine's FP32 GEMM peak (numpy BLAS)")
    peak = gemm_peak_flops()
    result = BenchResult(settings=_settings(options, manifest, precisions), machine=_machine(peak), output=out)
    inputs = _inputs(root, manifest, max(options.batch_sizes))
    problems: list[ClipExportError] = []
    for backend in options.backends:
        rows, skipped, failed = _measure_isolated(backend, options, precisions, root, manifest, inputs, peak, progress)
        result.rows += rows
        result.skipped += skipped
        problems += failed
    if not result.rows:
        # Nothing was measured: say why, and leave earlier results where they are.
        kind = type(problems[0]) if problems and all(type(p) is type(problems[0]) for p in problems) else InputError
        raise kind(
            "nothing was measured, so no report was written (earlier results are kept): " + " | ".join(result.skipped)
        )
    _ratios(result.rows)
    write_reports(result, out)
    return result


Measured = tuple[list[dict[str, Any]], list[str], list[ClipExportError]]


def _measure_backend(
    backend: str,
    options: BenchOptions,
    precisions: tuple[Precision, ...],
    root: Path,
    manifest: Manifest,
    inputs: dict[Tower, np.ndarray],
    peak: float,
    progress: Progress,
) -> Measured:
    """(rows, skipped lines, problems) of one backend over every precision, tower and batch size."""
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    problems: list[ClipExportError] = []
    torch_model: dict[str, Any] = {}  # the PyTorch source, loaded once per backend, on first use
    flops_at: dict[tuple[Tower, tuple[int, ...]], int] = {}
    for precision in precisions:
        for tower in options.towers:
            try:
                runner = _runner(backend, root, manifest, tower, precision, options.cpu_only, torch_model)
            except ClipExportError as exc:
                problems.append(exc)
                skipped.append(f"{backend}/{precision}/{tower.value}: {exc}")
                progress(f"skipping {backend} {precision} {tower.value}: {exc}")
                continue
            try:
                for batch in options.batch_sizes:
                    data = inputs[tower][:batch]
                    if backend != PYTORCH and tower is Tower.TEXT:
                        data = trim(data, manifest.tower(tower).properties, manifest.tokenizer)
                    progress(f"{backend} {precision} {tower.value} batch {batch}")
                    timing = measure(
                        lambda: runner.run(data),
                        batch,
                        min_iterations=options.min_iterations,
                        min_seconds=options.min_seconds,
                    )
                    if (tower, data.shape) not in flops_at:
                        flops_at[tower, data.shape] = _flops(root, manifest, tower, data.shape)
                    rows.append(_row(backend, precision, tower, timing, data.shape, flops_at[tower, data.shape], peak))
            finally:
                runner.close()
    return rows, skipped, problems


def _child(connection: Any, *args: Any) -> None:
    """A spawned process measuring one backend: progress lines, then the result, on its pipe."""
    try:
        result = _measure_backend(*args, progress=lambda line: connection.send(("progress", line)))
        connection.send(("done", result))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it there
        connection.send(
            (
                "error",
                exc
                if isinstance(exc, ClipExportError)
                else InputError(f"measuring {args[0]} failed ({type(exc).__name__}: {str(exc)[:200]})"),
            )
        )
    finally:
        connection.close()


def _measure_isolated(backend: str, *args: Any) -> Measured:
    """Each backend is measured in a process of its own. In one process, ONNX Runtime at batch 1
    ran 3x slower after the PyTorch baseline had run there (issue 30, on a 2-core machine; on a
    16-core one the two orders agreed): PyTorch's thread pools, its OpenMP runtime and allocator
    stay behind in a process. A fresh spawned process per backend leaves nothing to share."""
    import multiprocessing

    *rest, progress = args
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child, backend, *rest), name=f"clipexport-bench-{backend}")
    process.start()
    child.close()
    try:
        while True:
            try:
                kind, payload = parent.recv()
            except EOFError:
                raise InputError(
                    f"measuring {backend} ended without a result (exit code {process.exitcode}); "
                    "run the same command again with --backends " + backend
                ) from None
            if kind == "progress":
                progress(payload)
            elif kind == "error":
                raise payload
            else:
                return payload
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        parent.close()


def _row(
    backend: str, precision: Precision, tower: Tower, timing: Timing, shape: tuple[int, ...], flops: int, peak: float
) -> dict[str, Any]:
    achieved = flops * timing.items_per_s / max(shape[0], 1)
    return {
        "backend": backend,
        "precision": precision.value,
        "tower": tower.value,
        "input_shape": list(shape),
        **timing.to_dict(),
        "gflops_per_item": flops / shape[0] / 1e9,
        "achieved_gflops_per_s": achieved / 1e9,
        "fraction_of_peak": achieved / peak,
    }


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Throughput relative to PyTorch eager FP32 at the same tower and batch, when it was measured."""
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if r["backend"] == "pytorch"
                and r["precision"] == "fp32"
                and r["tower"] == row["tower"]
                and r["batch"] == row["batch"]
            ),
            None,
        )
        row["vs_pytorch_fp32"] = row["items_per_s"] / base["items_per_s"] if base else None


def _flops(root: Path, manifest: Manifest, tower: Tower, shape: tuple[int, ...]) -> int:
    # FLOPs of the FP32 graph at this input shape: the work, whatever precision does it.
    artifact = manifest.tower(tower)
    return graph_flops(inside(root, artifact.graph(Precision.FP32).file), {artifact.inputs[0].name: shape})


def _inputs(root: Path, manifest: Manifest, batch: int) -> dict[Tower, np.ndarray]:
    from clipexport.runtime.hf_tokenizer import load_tokenizer

    h, w = manifest.preprocess.image_size
    pixels = np.random.default_rng(0).standard_normal((batch, 3, h, w), dtype=np.float32)
    prompts = [f"a photo of a {PROMPT_LABELS[i % len(PROMPT_LABELS)]}." for i in range(batch)]
    tokenizer = load_tokenizer(root, manifest.tokenizer)
    # Without a runtime tokenizer (token ids only): a prompt-sized placeholder.
    ids = tokenizer(prompts) if tokenizer is not None else placeholder_ids(manifest.tokenizer, batch, words=7)
    return {Tower.VISION: pixels, Tower.TEXT: ids}


class _TorchRunner:
    def __init__(self, module: Any, torch: Any, device: str, dtype: str):
        """`dtype`: the precision's `PrecisionFacts.torch_dtype`, a torch dtype's name."""
        self.torch, self.device, self.dtype = torch, device, getattr(torch, dtype)
        self.module = module.to(device=device, dtype=self.dtype)

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            if x.is_floating_point():
                x = x.to(self.dtype)
            out = self.module(x)
            if self.device != "cpu":
                torch.cuda.synchronize()
        return out.float().cpu().numpy()

    def close(self) -> None:
        self.module = None


def _runner(
    backend: str,
    root: Path,
    manifest: Manifest,
    tower: Tower,
    precision: Precision,
    cpu_only: bool,
    torch_model: dict[str, Any],
) -> Any:
    if backend == PYTORCH:
        from clipexport._deps import require

        torch = require("torch", "the PyTorch baseline")
        device = "cuda" if torch.cuda.is_available() and not cpu_only else "cpu"
        dtype = precision.facts.torch_dtype
        if dtype is None:
            eager = ", ".join(p.value for p in Precision if p.facts.torch_dtype)
            raise InputError(f"PyTorch eager has no {precision.value} baseline here (use {eager})")
        if dtype != "float32" and device == "cpu":
            raise InputError(
                f"PyTorch eager {precision.value} needs a GPU (CPU half-precision kernels are not a fair baseline)"
            )
        from clipexport.sources import reload_source
        from clipexport.sources.towers import exportable

        if "loaded" not in torch_model:
            torch_model["loaded"] = reload_source(manifest.source)
        loaded = torch_model["loaded"]
        module = exportable(loaded.vision if tower is Tower.VISION else loaded.text, manifest.normalized)
        return _TorchRunner(module, torch, device, dtype)
    return open_backend(root, manifest, tower, precision, backend, BackendOptions(cpu_only=cpu_only))


def _settings(options: BenchOptions, manifest: Manifest, precisions: tuple[Precision, ...]) -> dict[str, Any]:
    return {
        "artifact": str(Path(options.artifact).resolve()),
        "model": manifest.source.model,
        "backends": list(options.backends),
        "precisions": [p.value for p in precisions],
        "batch_sizes": list(options.batch_sizes),
        "towers": [t.value for t in options.towers],
        "min_iterations": options.min_iterations,
        "min_seconds": options.min_seconds,
        "warmup": WARMUP,
        "text_inputs": "'a photo of a {label}.' prompts; exported graphs cut after EOT when variable-length",
        "created": utc_timestamp(),
    }


def _machine(peak: float) -> dict[str, Any]:
    versions = installed_versions(
        ("clipexport", "torch", "onnxruntime-gpu", "onnxruntime", "tensorrt", "open-clip-torch", "numpy")
    )
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "gemm_peak_gflops_per_s": peak / 1e9,
        "gpu": _gpu_name(),
        "versions": versions,
        "clipexport": clipexport.__version__,
    }


def _gpu_name() -> str | None:
    try:
        from clipexport.gpu import gpu_info

        return gpu_info().name
    except ClipExportError:
        return None


def write_reports(result: BenchResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bench.json", result.to_dict())
    write_bytes_atomic(out / "bench.md", markdown(result).encode("utf-8"))
    png = plot(result)
    if png is not None:
        write_bytes_atomic(out / "bench.png", png)


def markdown(result: BenchResult) -> str:
    m = result.machine
    lines = [
        f"# clipexport bench: {result.settings['model']}",
        "",
        f"Machine: {m['processor']}, {m['cpus']} CPUs, GPU: {m['gpu'] or 'none'}; "
        f"FP32 GEMM peak (numpy) {m['gemm_peak_gflops_per_s']:.1f} GFLOP/s. {result.settings['created']}.",
        "",
        "| tower | backend | precision | batch | input | items/s | p50 ms | p90 ms | p99 ms | vs PyTorch FP32 | GFLOP/s | of FP32 GEMM peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        ratio = f"{r['vs_pytorch_fp32']:.2f}x" if r["vs_pytorch_fp32"] else "-"
        lines.append(
            f"| {r['tower']} | {r['backend']} | {r['precision']} | {r['batch']} | {'x'.join(map(str, r['input_shape']))} "
            f"| {r['items_per_s']:.1f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {ratio} "
            f"| {r['achieved_gflops_per_s']:.1f} | {100 * r['fraction_of_peak']:.0f}% |"
        )
    if result.skipped:
        lines += ["", "Skipped:"] + [f"- {s}" for s in result.skipped]
    return "\n".join(lines) + "\n"


def plot(result: BenchResult) -> bytes | None:
    """Throughput by batch size, one line per backend/precision, one panel per tower."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        result.skipped.append("bench.png: matplotlib is not installed (pip install 'clipexport[bench]')")
        return None
    import io

    towers = sorted({r["tower"] for r in result.rows}, reverse=True)
    fig, axes = plt.subplots(1, max(len(towers), 1), figsize=(6 * max(len(towers), 1), 4), squeeze=False)
    for ax, tower in zip(axes[0], towers):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in result.rows:
            if r["tower"] == tower:
                series.setdefault(f"{r['backend']} {r['precision']}", []).append((r["batch"], r["items_per_s"]))
        for label, points in sorted(series.items()):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("items / s")
        ax.set_title(f"{result.settings['model']} {tower} tower")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
