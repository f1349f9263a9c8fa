"""What MobileCLIP's reparameterization buys: the image graph exported with and without
`export --no-reparameterize`, its node count and ONNX Runtime CPU latency, in one run.
Writes benchmarks/results/reparameterize-<model>.json.

    .venv/bin/python benchmarks/reparameterize.py [--model MobileCLIP-S1] [--batch-sizes 1,8] [--repeats 5]

Random weights (the folding is exact either way; only the graph's shape matters here).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from precision import best_time, machine, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="MobileCLIP-S1")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import onnx
    import onnxruntime as ort

    from clipexport.export.pipeline import ExportOptions, export_model
    from clipexport.parity.stats import embedding_parity

    batches = [int(b) for b in args.batch_sizes.split(",")]
    rows, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for folded in (False, True):
            name = "reparameterized" if folded else "as_trained"
            out = Path(tmp) / name
            manifest = export_model(
                ExportOptions(model=args.model, output=out, pretrained="random", reparameterize=folded)
            ).manifest
            graph = out / manifest.tower("vision").graph("fp32").file
            model = onnx.load(str(graph))
            session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
            h, w = manifest.preprocess.image_size
            rng = np.random.default_rng(0)
            latency = {}
            for batch in batches:
                x = rng.standard_normal((batch, 3, h, w), dtype=np.float32)
                latency[str(batch)] = best_time(lambda: session.run(None, {"image": x}), args.repeats) * 1e3
                if batch == batches[-1]:
                    outputs[name] = session.run(None, {"image": x})[0]
            rows[name] = {
                "nodes": len(model.graph.node),
                "conv_nodes": sum(n.op_type == "Conv" for n in model.graph.node),
                "latency_ms": latency,
                "adjustments": list(manifest.tower("vision").graph("fp32").details.adjustments),
            }
            print(name, rows[name], flush=True)
    same = embedding_parity(outputs["as_trained"], outputs["reparameterized"])
    result = {
        "model": args.model,
        "weights": "random",
        "machine": machine(),
        "repeats": args.repeats,
        "variants": rows,
        "speedup": {
            b: rows["as_trained"]["latency_ms"][b] / rows["reparameterized"]["latency_ms"][b]
            for b in rows["as_trained"]["latency_ms"]
        },
        "node_ratio": rows["reparameterized"]["nodes"] / rows["as_trained"]["nodes"],
        "agreement": same.to_dict(),
    }
    print(write_result(f"reparameterize-{args.model.lower()}", result))


if __name__ == "__main__":
    main()
