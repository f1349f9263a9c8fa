"""Text fast path: throughput of short prompts through a variable-length text graph cut after the
last end-of-text token, vs the same prompts at the full 77 tokens (and vs a fixed-length export
when given), same run, ONNX Runtime CPU. Parity of the cut run vs the full-length run is checked.
Writes benchmarks/results/text-fast-path-<name>.json.

    .venv/bin/python benchmarks/text_fast_path.py ARTIFACT [--fixed-artifact DIR] [--batch-sizes 1,8,64]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from precision import best_time, machine, write_result  # noqa: E402

LABELS = (
    "cat dog car bird horse ship truck frog deer airplane tench goldfinch shark banana pizza "
    "strawberry orange lemon pineapple bus bicycle canoe locomotive volcano reef lighthouse castle "
    "pretzel espresso teapot toaster laptop keyboard mouse cellphone microwave refrigerator sofa piano "
    "violin backpack umbrella wristwatch kite skateboard tractor ambulance helicopter tiger penguin "
    "zebra giraffe camel owl parrot jellyfish snail lobster crab butterfly ladybug mushroom daisy"
).split()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--fixed-artifact", type=Path, default=None, help="a fixed-length export of the same model")
    parser.add_argument("--batch-sizes", default="1,8,64")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()

    from clipexport.artifact.manifest import Tower, check_graph_files, read_manifest
    from clipexport.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from clipexport.runtime.text_length import trim
    from clipexport.runtime.tokenizer import ClipTokenizer
    from clipexport.parity.stats import embedding_parity

    manifest = read_manifest(args.artifact)
    text = manifest.tower(Tower.TEXT)
    if not text.properties.variable_length:
        raise SystemExit(f"{args.artifact}'s text graph is fixed-length: re-export it with this clipexport")
    prompts = [f"a photo of a {label}." for label in LABELS]
    ids = ClipTokenizer.from_manifest(manifest.tokenizer)(prompts)
    graph = check_graph_files(args.artifact, text.graph(args.precision))
    rows = []
    with OnnxRuntimeBackend(graph, text, providers=["CPUExecutionProvider"]) as backend:
        full_out = np.concatenate([backend.run(ids[i : i + 8]) for i in range(0, len(ids), 8)])
        cut_out = np.concatenate(
            [backend.run(trim(ids[i : i + 8], text.properties, manifest.tokenizer)) for i in range(0, len(ids), 8)]
        )
        parity = embedding_parity(full_out, cut_out)
        fixed = None
        if args.fixed_artifact:
            fixed_manifest = read_manifest(args.fixed_artifact)
            fixed_text = fixed_manifest.tower(Tower.TEXT)
            fixed = OnnxRuntimeBackend(
                check_graph_files(args.fixed_artifact, fixed_text.graph(args.precision)),
                fixed_text,
                providers=["CPUExecutionProvider"],
            )
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            data = np.resize(ids, (batch, ids.shape[1]))
            cut = trim(data, text.properties, manifest.tokenizer)
            timings = {
                "full_length": best_time(lambda: backend.run(data), args.repeats),
                "fast_path": best_time(lambda: backend.run(cut), args.repeats),
            }
            if fixed is not None:
                timings["fixed_length_export"] = best_time(lambda: fixed.run(data), args.repeats)
            baseline = timings.get("fixed_length_export", timings["full_length"])
            row = {
                "batch": batch,
                "tokens_after_cut": int(cut.shape[1]),
                **{f"{k}_texts_per_s": batch / v for k, v in timings.items()},
                "speedup": baseline / timings["fast_path"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        if fixed is not None:
            fixed.close()
    result = {
        "artifact": str(args.artifact.resolve()),
        "model": manifest.source.model,
        "precision": args.precision,
        "prompts": "a photo of a {label}. for 64 labels",
        "parity_fast_vs_full": parity.to_dict(),
        "baseline": "fixed-length export" if args.fixed_artifact else "the same graph at full context length",
        "machine": machine(),
        "results": rows,
    }
    out = write_result(f"text-fast-path-{args.name or args.artifact.name}", result)
    print(f"parity fast vs full: min cos {parity.min_cosine:.8f}; wrote {out}")


if __name__ == "__main__":
    main()
