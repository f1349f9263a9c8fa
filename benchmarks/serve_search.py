"""`clipexport serve --index`: text searches per second through POST /search on the demo scenes (the
demo CLIP, its 500 retrieval pictures embedded and indexed), at concurrency 1/8/32, against the same
queries in-process (`Searcher.search_text`, one query per call) as the baseline of the same run.
Writes benchmarks/results/serve-search.json.

    .venv/bin/python benchmarks/serve_search.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from precision import machine, write_result
from serve import _summary, run_threads, serve_command

REPO = Path(__file__).resolve().parent.parent
QUERIES = [
    f"a photo of a {c} {s}" for c in ("red", "blue", "green", "yellow") for s in ("circle", "square", "star", "ring")
]


def _prepare(work: Path) -> Path:
    """The demo artifact, its scenes embedded and indexed (made once)."""
    from clipexport.files import package_data

    if (work / "idx" / "_index.json").is_file():
        return work / "idx"
    work.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "clipexport"]
    subprocess.run([*cli, "export", "demo", "-o", str(work / "demo"), "-q", "--overwrite"], check=True)
    scenes = sorted(str(p) for p in package_data("demo", "retrieval").rglob("*.png"))
    (work / "list.txt").write_text("\n".join(scenes) + "\n")
    subprocess.run(
        [*cli, "embed", str(work / "demo"), "--image-list", str(work / "list.txt"), "-o", str(work / "ds"), "-q"],
        check=True,
    )
    subprocess.run([*cli, "index", str(work / "ds"), "-o", str(work / "idx"), "-q"], check=True)
    return work / "idx"


def _load(port: int, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = k
        while time.monotonic() < stop:
            body = json.dumps({"text": QUERIES[i % len(QUERIES)], "k": 10})
            start = time.perf_counter()
            connection.request("POST", "/search", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            with lock:
                latencies.append(time.perf_counter() - start)
                failures[0] += response.status != 200
            i += concurrency

    seconds = run_threads(worker, concurrency)
    return {**_summary(latencies, len(latencies), seconds), "failed": failures[0]}


def _in_process(index: Path, artifact: Path, seconds: float) -> dict[str, float]:
    from clipexport.search.searcher import Searcher

    with Searcher(index, artifact=artifact) as searcher:
        searcher.search_text(QUERIES[:1], k=10)
        latencies, stop, begin, i = [], time.monotonic() + seconds, time.monotonic(), 0
        while time.monotonic() < stop:
            start = time.perf_counter()
            searcher.search_text([QUERIES[i % len(QUERIES)]], k=10)
            latencies.append(time.perf_counter() - start)
            i += 1
        return _summary(latencies, len(latencies), time.monotonic() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve-python", type=Path, default=REPO / ".venv-serve" / "bin" / "python")
    parser.add_argument("--work", type=Path, default=Path("/tmp/clipexport-serve-search"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    from clipexport.serving.server import free_local_ports

    index = _prepare(args.work)
    artifact = args.work / "demo"
    http_port, grpc_port, metrics_port = free_local_ports(3)
    command = serve_command(args.serve_python, artifact, (http_port, grpc_port, metrics_port), "--index", str(index))
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=2)
                connection.request("GET", "/ready")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"serve did not start: {server.stderr.read() if server.poll() is not None else 'timeout'}")
            time.sleep(0.25)
        result = {"index": "demo scenes, 500 rows, Flat", "machine": machine(), "seconds_per_point": args.seconds}
        result["in_process_one_query_per_call"] = _in_process(index, artifact, args.seconds)
        print("in-process", result["in_process_one_query_per_call"], flush=True)
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            point = _load(http_port, concurrency, args.seconds)
            result[f"served/c{concurrency}"] = point
            print("served", concurrency, {k: round(v, 1) for k, v in point.items()}, flush=True)
    finally:
        server.terminate()
        server.wait(60)
    print(write_result("serve-search", result))


if __name__ == "__main__":
    main()
