"""What the vision model gets from its CPUs when decode workers run beside it: ViT-B-32 (random
weights) on ONNX Runtime CPU FP32 at batch 32, images per second for several thread counts,
spinning or not, pinned to a CPU set or not, alone or with busy decode processes on the other
CPUs. A diagnostic for issue 30's 16-core gap (one JSON):

    python benchmarks/model_threads.py --out benchmarks/results/model-threads-16core.json
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from bulk_embed import random_vit_b32

CPUS = sorted(os.sched_getaffinity(0))


def _decode_forever(cpus: list[int]) -> None:
    from PIL import Image

    os.sched_setaffinity(0, cpus)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 800, 3), np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    while True:
        Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224))


def _rate(artifact: Path, threads: int | None, spin: bool, cpus: list[int] | None, seconds: float = 5.0) -> float:
    from clipexport.runtime import ClipRuntime

    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        with ClipRuntime.load(artifact, towers=("vision",), threads=threads, spin=spin) as runtime:
            batch = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
            runtime.encode_pixels(batch)
            runtime.encode_pixels(batch)
            n, start = 0, time.monotonic()
            while time.monotonic() - start < seconds:
                runtime.encode_pixels(batch)
                n += 32
            return n / (time.monotonic() - start)
    finally:
        os.sched_setaffinity(0, CPUS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifact", type=Path, default=Path("/tmp/clipexport-bulk-scaling/vit-b-32"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    random_vit_b32(args.artifact)
    n = len(CPUS)
    cases = [("default threads, spin", None, True, None, 0), (f"{n} threads, no spin", n, False, None, 0)]
    for t in sorted({t for t in (n - 2, n // 2, n - 5) if 1 <= t < n}, reverse=True):
        cases += [
            (f"{t} threads pinned, spin", t, True, CPUS[:t], 0),
            (f"{t} threads pinned, no spin", t, False, CPUS[:t], 0),
            (f"{t} threads pinned, spin, {n - t} decoders beside", t, True, CPUS[:t], n - t),
            (f"{t} threads unpinned, no spin, {n - t} decoders unpinned", t, False, None, -(n - t)),
        ]
    result = {"cpus": n, "model": "ViT-B-32 random, ONNX Runtime CPU FP32, batch 32", "images_per_s": {}}
    ctx = multiprocessing.get_context("spawn")
    for label, threads, spin, cpus, decoders in cases:
        busy = [
            ctx.Process(target=_decode_forever, args=(CPUS[len(cpus) :] if decoders > 0 else CPUS,), daemon=True)
            for _ in range(abs(decoders))
        ]
        for p in busy:
            p.start()
        time.sleep(1 if busy else 0)
        result["images_per_s"][label] = _rate(args.artifact, threads, spin, cpus)
        for p in busy:
            p.kill()
            p.join()
        print(label, round(result["images_per_s"][label], 1), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
