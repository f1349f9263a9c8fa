"""`clipexport bench`: the grid runs end to end on a tiny model and writes JSON, Markdown and PNG;
FLOPs come from the graph; latency statistics are what they say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipexport.bench.flops import graph_flops
from clipexport.bench.timing import summarize
from clipexport.cli import main


def test_bench_end_to_end(tiny_vit: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            str(tiny_vit),
            "--batch-sizes",
            "1,3",
            "--min-iterations",
            "3",
            "--min-seconds",
            "0",
            "--cpu",
            "-o",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    rows = data["results"]
    assert {(r["backend"], r["tower"], r["batch"]) for r in rows} == {
        (b, t, n) for b in ("pytorch", "onnxruntime") for t in ("vision", "text") for n in (1, 3)
    }
    for row in rows:
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["items_per_s"] > 0
        assert row["vs_pytorch_fp32"] > 0 and 0 < row["fraction_of_peak"]
    text = [r for r in rows if r["tower"] == "text"]
    assert all(r["input_shape"][1] == 77 for r in text if r["backend"] == "pytorch")
    assert all(r["input_shape"][1] < 77 for r in text if r["backend"] == "onnxruntime")  # the fast path
    assert data["machine"]["gemm_peak_gflops_per_s"] > 0 and data["settings"]["batch_sizes"] == [1, 3]
    assert (out / "bench.md").read_text().count("| vision |") == 4
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_bad_arguments(tiny_vit: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(main, ["bench", str(tiny_vit), "--batch-sizes", "1,x"])
    assert bad.exit_code == 2 and "--batch-sizes" in bad.output
    unknown = runner.invoke(main, ["bench", str(tiny_vit), "--backends", "tpu"])
    assert unknown.exit_code == 2 and "unknown backend(s) tpu" in unknown.output
    missing = runner.invoke(main, ["bench", str(tiny_vit), "--precisions", "int8"])
    assert missing.exit_code == 2 and "no int8 graph" in missing.output


def test_flops_from_the_graph_match_the_architecture(tiny_vit: Path) -> None:
    config = json.loads((Path(__file__).parent / "configs" / "tiny-vit.json").read_text())
    width, layers = config["text_cfg"]["width"], config["text_cfg"]["layers"]
    tokens, embed = 77, config["embed_dim"]
    # Per block: QKV + out projection (4 w^2), MLP (8 w^2) per token, attention scores and mix (2 L^2 w).
    expected = 2 * layers * (tokens * 12 * width * width + 2 * tokens * tokens * width) + 2 * width * embed
    got = graph_flops(tiny_vit / "text.onnx", {"input_ids": (1, tokens)})
    assert got == pytest.approx(expected, rel=0.01)
    assert graph_flops(tiny_vit / "text.onnx", {"input_ids": (4, tokens)}) == 4 * got
    assert graph_flops(tiny_vit / "text.onnx", {"input_ids": (1, 10)}) < got / 5


def test_latency_statistics() -> None:
    timing = summarize([0.001] * 98 + [0.010, 0.020], batch=4)
    assert timing.p50_ms == pytest.approx(1.0) and timing.p99_ms > 9.0 and timing.iterations == 100
    assert timing.items_per_s == pytest.approx(4 / np.mean([0.001] * 98 + [0.010, 0.020]))


def test_each_backend_is_measured_in_a_process_of_its_own(tiny_vit: Path, tmp_path: Path) -> None:
    """ONNX Runtime measured after PyTorch in one process ran 3x slower at batch 1 (issue 30): the
    caller's process never loads PyTorch for the baseline, whichever order the backends come in."""
    import subprocess
    import sys

    code = (
        "import json, sys\nfrom pathlib import Path\nfrom clipexport.bench.run import BenchOptions, run_bench\n"
        "result = run_bench(BenchOptions(artifact=Path(sys.argv[1]), backends=tuple(sys.argv[2].split(',')), "
        "batch_sizes=(1,), min_iterations=2, min_seconds=0, cpu_only=True, output=Path(sys.argv[3])))\n"
        "print(json.dumps({'torch_loaded_here': 'torch' in sys.modules, "
        "'backends': sorted({r['backend'] for r in result.rows})}))\n"
    )
    for order in ("pytorch,onnxruntime", "onnxruntime,pytorch"):
        done = subprocess.run(
            [sys.executable, "-c", code, str(tiny_vit), order, str(tmp_path / order)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report == {"torch_loaded_here": False, "backends": ["onnxruntime", "pytorch"]}, report
