"""CPU throughput of every graph variant in an artifact (fp32 / fp16 / int8), ONNX Runtime CPU
provider, same inputs, same run; ratios against FP32. Writes benchmarks/results/precision-cpu.json.

    .venv/bin/python benchmarks/precision.py ARTIFACT [--batch-sizes 1,8] [--repeats 5] [--name NAME]

`clipexport bench` (issue 6) grows out of this; this script only answers "what does each
precision variant cost or save on this CPU".
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def best_time(fn, repeats: int) -> float:
    """Seconds per call, best of `repeats` after one warm-up call (the least disturbed run)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> dict[str, object]:
    import onnxruntime

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "onnxruntime": onnxruntime.__version__,
    }


def write_result(name: str, result: dict) -> Path:
    from clipexport.files import write_json_atomic

    out = Path(__file__).parent / "results" / f"{name}.json"
    write_json_atomic(out, result)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default=None, help="results file suffix (default: the artifact folder's name)")
    args = parser.parse_args()

    from clipexport.artifact.manifest import Tower, check_graph_files, read_manifest
    from clipexport.runtime.backends.onnxruntime import OnnxRuntimeBackend

    manifest = read_manifest(args.artifact)
    rng = np.random.default_rng(0)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    for tower in Tower:
        artifact = manifest.tower(tower)
        # A variable-length text graph is timed at full context length here, like a fixed one.
        shape = [d if isinstance(d, int) else manifest.tokenizer.context_length for d in artifact.inputs[0].shape[1:]]
        for precision, graph in artifact.graphs.items():
            path = check_graph_files(args.artifact, graph)
            with OnnxRuntimeBackend(path, artifact, providers=["CPUExecutionProvider"]) as backend:
                for batch in batches:
                    if tower is Tower.VISION:
                        data = rng.normal(size=(batch, *shape)).astype(np.float32)
                    else:  # realistic prompts: a short caption, EOT, then padding
                        data = np.zeros((batch, *shape), np.int64)
                        data[:, 0], data[:, 1:9], data[:, 9] = 49406, rng.integers(300, 40000, (batch, 8)), 49407
                    seconds = best_time(lambda: backend.run(data), args.repeats)
                    rows.append(
                        {
                            "tower": tower.value,
                            "precision": precision,
                            "batch": batch,
                            "items_per_s": batch / seconds,
                            "ms_per_batch": 1000 * seconds,
                            "target": graph.details.target,
                        }
                    )
                    print(
                        f"{tower.value:<6} {precision:<5} batch {batch:>3}: {batch / seconds:8.1f} items/s", flush=True
                    )
    for row in rows:
        base = next(
            r for r in rows if r["tower"] == row["tower"] and r["batch"] == row["batch"] and r["precision"] == "fp32"
        )
        row["speedup_vs_fp32"] = row["items_per_s"] / base["items_per_s"]
    result = {
        "artifact": str(args.artifact.resolve()),
        "model": manifest.source.model,
        "machine": machine(),
        "settings": {
            "provider": "CPUExecutionProvider",
            "repeats": args.repeats,
            "statistic": "best of repeats after warm-up",
        },
        "results": rows,
    }
    print(f"wrote {write_result(f'precision-cpu-{args.name or args.artifact.name}', result)}")


if __name__ == "__main__":
    main()
