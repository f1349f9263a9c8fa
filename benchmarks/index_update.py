"""`index --update` against a rebuild (issue 28): a dataset of N rows grown by 10% with `embed
--append`, its approximate index updated in place vs built again from scratch — time and the
recall@10 against exact search each measures on its own-row sample. Rows are synthetic unit
vectors from a mixture of clusters (CLIP embeddings cluster by content), the appended 10% drawn
from the same mixture ("same") or from clusters the index was not trained on ("new clusters",
where a rebuild is due).

    python benchmarks/index_update.py --rows 100000 > benchmarks/results/index-update-2core.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from clipexport.bulk.dataset import DatasetState, Identity, write_shard
from clipexport.search.index import IndexOptions, build_index
from clipexport.search.plan import IndexKind

DIM = 512
SHARD = 10_000


def _mixture(rng: np.random.Generator, centres: np.ndarray, rows: int) -> np.ndarray:
    picked = centres[rng.integers(0, len(centres), rows)]
    vectors = picked + 0.35 * rng.standard_normal((rows, DIM)).astype(np.float32) / np.sqrt(DIM)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _dataset(folder: Path, parts: list[np.ndarray]) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    segments: list[Identity] = []
    first_input = 0
    for number, vectors in enumerate(parts):
        identity = Identity(
            "image", "0" * 64, "fp32", "onnxruntime", True, DIM, "float32", f"{number:064d}", len(vectors), SHARD
        )
        identity = dataclasses.replace(
            identity, first_input=first_input, first_shard=segments[-1].shard_end if segments else 0
        )
        state = DatasetState(folder, identity, "synthetic", earlier=tuple(segments))
        for index in range(identity.first_shard, identity.shard_end):
            first, end = state.local_range(index)
            write_shard(state, index, [f"row-{first_input + i}" for i in range(first, end)], vectors[first:end], [])
        segments.append(identity)
        first_input += len(vectors)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/clipexport-index-update"))
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    base = _mixture(rng, centres, args.rows)
    runs = {}
    same = _mixture(rng, centres, args.rows // 10)
    unseen = _mixture(rng, -centres[:20] + 0.5 * centres[20:40], args.rows // 10)
    pq_budget = args.rows * 192  # 192 bytes a row (of 2,048 as float32): IVF-PQ codes
    for case, more, budget in (
        ("IVF-Flat, same mixture", same, None),
        ("IVF-Flat, new clusters", unseen, None),
        ("IVF-PQ, same mixture", same, pq_budget),
        ("IVF-PQ, new clusters", unseen, pq_budget),
    ):
        ds = _dataset(args.work / "ds", [base])
        index = args.work / "index"
        shutil.rmtree(index, ignore_errors=True)
        options = IndexOptions(
            dataset=ds, output=index, kind=IndexKind.APPROXIMATE, max_memory=budget, accept_low_recall=True
        )
        began = time.perf_counter()
        first = build_index(options)
        built = time.perf_counter() - began
        _dataset(args.work / "ds", [base, more])  # the same rows, then the appended 10%
        began = time.perf_counter()
        updated = build_index(dataclasses.replace(options, update=True))
        update_s = time.perf_counter() - began
        began = time.perf_counter()
        rebuilt = build_index(dataclasses.replace(options, output=args.work / "rebuilt", overwrite=True))
        rebuild_s = time.perf_counter() - began
        runs[case] = {
            "first build": {"seconds": round(built, 2), "recall_at_10": first.recall, "nprobe": first.nprobe},
            "update": {
                "seconds": round(update_s, 2),
                "recall_at_10": updated.recall,
                "nprobe": updated.nprobe,
                "target_met": updated.target_met,
                "added": updated.added,
            },
            "rebuild": {"seconds": round(rebuild_s, 2), "recall_at_10": rebuilt.recall, "nprobe": rebuilt.nprobe},
            "update_over_rebuild_time": round(update_s / rebuild_s, 3),
            "factory": first.plan.factory,
        }
    print(
        json.dumps(
            {
                "benchmark": "index_update",
                "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
                "rows": args.rows,
                "appended": args.rows // 10,
                "dim": DIM,
                "data": "unit vectors around 200 random cluster centres; appended rows from the same mixture, or from 20 clusters the index never saw",
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
