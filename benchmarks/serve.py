"""What the server costs and what dynamic batching buys: throughput and p50/p99 latency of image
and text embedding through `clipexport serve` (a real tritonserver, python backend, ONNX Runtime
CPU) at concurrency 1/8/32, against in-process `ClipRuntime` at batch 1 and 32, in one run on the
same machine. Clients send one item per request, as independent callers do; the server's dynamic
batcher groups them. Writes benchmarks/results/serve-<artifact>.json.

    .venv/bin/python benchmarks/serve.py ARTIFACT [--seconds 8] [--concurrency 1,8,32]
        [--serve-python .venv-serve/bin/python] [--max-queue-delay-us 2000]

The load generator runs on the same CPU as the server, so the server's figures include the
clients' cost; on a 2-core machine that is not small.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from precision import machine, write_result

REPO = Path(__file__).resolve().parent.parent


def _images(n: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _summary(latencies: list[float], items: int, seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "items_per_s": items / seconds,
        "p50_ms": 1e3 * statistics.median(ordered),
        "p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "requests": len(ordered),
    }


def _load(url: str, kind: str, payload: list, concurrency: int, seconds: float) -> dict[str, float]:
    from clipexport.client import ClipClient

    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        with ClipClient(url, model="bench") as client:
            call = client.encode_image if kind == "image" else client.encode_text
            call([payload[k % len(payload)]])  # warm the connection
            i = k
            while time.monotonic() < stop:
                start = time.perf_counter()
                call([payload[i % len(payload)]])
                with lock:
                    latencies.append(time.perf_counter() - start)
                i += concurrency

    return _summary(latencies, len(latencies), run_threads(worker, concurrency))


def run_threads(worker, count: int) -> float:
    """worker(0..count-1) on as many threads at once; the seconds until the last one is done."""
    begin = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - begin


def _in_process(artifact: Path, images: list[bytes], texts: list[str], seconds: float) -> dict:
    from clipexport.runtime import ClipRuntime

    out = {}
    with ClipRuntime.load(artifact) as runtime:
        for kind, payload, call in (("image", images, runtime.encode_image), ("text", texts, runtime.encode_text)):
            for batch in (1, 32):
                data = (payload * (32 // len(payload) + 1))[:batch]
                call(data)
                latencies, stop = [], time.monotonic() + seconds
                begin = time.monotonic()
                while time.monotonic() < stop:
                    start = time.perf_counter()
                    call(data, batch_size=batch)
                    latencies.append(time.perf_counter() - start)
                out[f"{kind}/batch{batch}"] = _summary(latencies, batch * len(latencies), time.monotonic() - begin)
                print(kind, batch, out[f"{kind}/batch{batch}"], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--serve-python", type=Path, default=REPO / ".venv-serve" / "bin" / "python")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    args = parser.parse_args()
    images = _images(32)
    texts = [f"a photo of a {w}, taken at dusk" for w in ("cat", "dog", "car", "tree", "boat", "house", "bird", "fish")]
    result = {
        "artifact": str(args.artifact),
        "machine": machine(),
        "seconds_per_point": args.seconds,
        "max_queue_delay_us": args.max_queue_delay_us,
        "in_process": _in_process(args.artifact, images, texts, args.seconds),
    }
    from clipexport.serving.server import free_local_ports

    http, grpc, metrics = free_local_ports(3)
    server = subprocess.Popen(
        serve_command(
            args.serve_python,
            args.artifact,
            (http, grpc, metrics),
            "--name",
            "bench",
            "--max-batch",
            "32",
            "--max-queue-delay-us",
            str(args.max_queue_delay_us),
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in server.stderr:
            if line.startswith("ready:"):
                break
        else:
            sys.exit(f"the server did not start (exit {server.wait()})")
        result["server"] = {}
        for kind, payload in (("image", images), ("text", texts)):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                point = _load(f"localhost:{http}", kind, payload, concurrency, args.seconds)
                result["server"][f"{kind}/c{concurrency}"] = point
                print(kind, concurrency, point, flush=True)
    finally:
        server.terminate()
        server.wait(60)
    top = max(int(c) for c in args.concurrency.split(","))
    result["server_vs_in_process_batch32"] = {
        kind: result["server"][f"{kind}/c{top}"]["items_per_s"] / result["in_process"][f"{kind}/batch32"]["items_per_s"]
        for kind in ("image", "text")
    }
    print(result["server_vs_in_process_batch32"])
    print(write_result(f"serve-{args.artifact.resolve().name}", result))


def serve_command(python: Path, artifact: Path, ports: tuple[int, int, int], *options: str) -> list[str]:
    """`clipexport serve ARTIFACT` in the serving venv's Python on (http, grpc, metrics) ports, quiet."""
    http, grpc, metrics = ports
    ports_given = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    return [str(python), "-m", "clipexport", "serve", str(artifact), *ports_given, *options, "-q"]


if __name__ == "__main__":
    main()
