"""OpenVINO against ONNX Runtime on this CPU, in one run: ViT-B-32 (seeded random weights) vision
and text towers, FP32 and INT8 (`quantize --target cpu`, the Q/DQ graph both runtimes load), batch
1/8/32, through `clipexport bench` (same inputs, same timing loop; ONNX Runtime's points first, then OpenVINO's).
Writes benchmarks/results/openvino-vs-onnxruntime.json.

    .venv/bin/python benchmarks/openvino_vs_onnxruntime.py [--artifact DIR] [--min-seconds 3]

The documented default for x86 CPUs becomes OpenVINO only if it wins on both towers at every
precision and batch measured (the issue's rule); otherwise ONNX Runtime stays the default.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from precision import machine, write_result

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifact", type=Path, default=None, help="a ViT-B-32 artifact with an int8 (cpu) graph")
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--batch-sizes", default="1,8,32")
    args = parser.parse_args()
    import openvino

    from clipexport.artifact.precision import Precision, Target
    from clipexport.bench.run import BenchOptions, run_bench
    from clipexport.export.pipeline import ExportOptions, export_model
    from clipexport.precision.pipeline import QuantizeOptions, quantize_artifact

    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact
        if artifact is None:
            artifact = Path(tmp) / "vit-b-32"
            export_model(ExportOptions(model="ViT-B-32", pretrained="random", output=artifact), print)
            quantize_artifact(QuantizeOptions(artifact=artifact, precision=Precision.INT8, target=Target.CPU), print)
        result = run_bench(
            BenchOptions(
                artifact=artifact,
                backends=("onnxruntime", "openvino"),
                precisions=("fp32", "int8"),
                batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
                min_iterations=5,
                min_seconds=args.min_seconds,
                cpu_only=True,
                output=Path(tmp) / "bench",
            ),
            print,
        )
    rows = result.rows
    cells = []
    for row in rows:
        if row["backend"] != "openvino":
            continue
        ort = next(
            r
            for r in rows
            if r["backend"] == "onnxruntime"
            and r["tower"] == row["tower"]
            and r["precision"] == row["precision"]
            and r["input_shape"] == row["input_shape"]
        )
        cells.append(
            {
                "tower": row["tower"],
                "precision": row["precision"],
                "batch": row["input_shape"][0],
                "openvino_items_per_s": round(row["items_per_s"], 2),
                "onnxruntime_items_per_s": round(ort["items_per_s"], 2),
                "openvino_p50_ms": round(row["p50_ms"], 3),
                "onnxruntime_p50_ms": round(ort["p50_ms"], 3),
                "speedup_openvino_vs_onnxruntime": round(row["items_per_s"] / ort["items_per_s"], 3),
            }
        )
        print(
            f"{row['tower']:<6} {row['precision']:<5} batch {row['input_shape'][0]:>3}: openvino {row['items_per_s']:8.1f}/s "
            f"onnxruntime {ort['items_per_s']:8.1f}/s  x{cells[-1]['speedup_openvino_vs_onnxruntime']}"
        )
    wins = all(c["speedup_openvino_vs_onnxruntime"] > 1 for c in cells)
    out = {
        "machine": {**machine(), "openvino": openvino.__version__},
        "model": "ViT-B-32, seeded random weights",
        "int8": "quantize --target cpu (ONNX Runtime's MatMul/Gemm S8S8 Q/DQ), the same graph on both",
        "cells": cells,
        "openvino_wins_everywhere": wins,
        "default_for_x86_cpus": "openvino" if wins else "onnxruntime",
        "rule": "OpenVINO becomes the documented x86 default only if it wins on both towers at every cell",
        "bench_rows": rows,
    }
    print(f"wrote {write_result('openvino-vs-onnxruntime', out)}")


if __name__ == "__main__":
    main()
