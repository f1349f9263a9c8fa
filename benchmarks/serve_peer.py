"""`clipexport serve` against infinity-emb, the server users pick instead for CLIP embeddings, on the
same Hugging Face CLIPModel (random weights, ViT-B/32 sizes), the same load generator and the same
2-core machine, in one run with the servers alternating per point. Text and images, one item per
request, concurrency 1/8/32; throughput, p50/p99, cold start, and resident memory (RSS summed over
each server's process tree). Writes benchmarks/results/serve-vs-infinity.json.

Both are called through the same OpenAI embeddings route (`/v1/embeddings` here, `/embeddings`
there; images as data URIs with "modality": "image", base64 answers). Two more paths into the same
clipexport server measure what its HTTP front costs: KServe v2 through the front (`/v2`, the
binary-tensor extension) and KServe v2 straight to tritonserver's private loopback port (read from
its command line), which no client can reach in production.

    .venv/bin/python benchmarks/serve_peer.py --infinity /tmp/venv-inf/bin/infinity_emb [--seconds 8]

infinity-emb is installed in its own venv (it pins torch and transformers versions of its own):
    python3 -m venv /tmp/venv-inf && /tmp/venv-inf/bin/pip install 'infinity-emb[server,torch,vision]' aiohttp
It needs `"max_length": 77` in the model's config.json, or it cuts CLIP text at 20 tokens; the
script writes the folder that way. The load generator runs on the same CPU as the servers.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from precision import machine, write_result
from serve import _images, _summary, run_threads, serve_command

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
TEXTS = [f"a photo of a {w}, taken at dusk" for w in ("cat", "dog", "car", "tree", "boat", "house", "bird", "fish")]


def _model_folder(folder: Path) -> Path:
    """A random CLIPModel of ViT-B/32 sizes with CLIP's tokenizer and image processor, offline."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from helpers import clip_vocab

    torch.manual_seed(0)
    config = CLIPConfig(projection_dim=512)  # defaults: ViT-B/32 vision (768, 12 layers, patch 32), 512-d text
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)
    vocab, merges = clip_vocab()
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    data["max_length"] = 77
    (folder / "config.json").write_text(json.dumps(data, indent=2))
    return folder


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class Target:
    """One server: how to start it and how one item is sent."""

    def __init__(self, name: str, command: list[str], port: int, ready_path: str, env: dict | None = None):
        self.name, self.command, self.port, self.ready_path, self.env = name, command, port, ready_path, env
        self.process: subprocess.Popen | None = None

    def start(self) -> float:
        begin = time.monotonic()
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env, start_new_session=True
        )
        deadline = begin + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"{self.name} exited with {self.process.returncode} while starting")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", self.ready_path)
                if connection.getresponse().status == 200 and self.warm():
                    return time.monotonic() - begin
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.25)
        sys.exit(f"{self.name} was not ready in 300 s")

    def warm(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            return self.send(connection, "text", TEXTS[0]) and self.send(connection, "image", _images(1)[0])
        except (OSError, http.client.HTTPException):
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)

    def request(self, kind: str, item) -> tuple[str, bytes, dict]:
        raise NotImplementedError

    def send(self, connection: http.client.HTTPConnection, kind: str, item) -> bool:
        path, body, headers = self.request(kind, item)
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status == 200


class Kserve(Target):
    """KServe v2 with the binary-tensor extension: tritonclient's own framing."""

    def request(self, kind: str, item) -> tuple[str, bytes, dict]:
        if kind == "text":
            data = item.encode()
        else:
            data = item
        tensor = len(data).to_bytes(4, "little") + data
        name = "TEXT" if kind == "text" else "IMAGE"
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": name,
                        "shape": [1, 1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(tensor)},
                    }
                ],
                "outputs": [{"name": "EMBEDDING", "parameters": {"binary_data": True}}],
            }
        ).encode()
        return (
            f"/v2/models/peer_{kind}/infer",
            header + tensor,
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
        )


class OpenAiRoute(Target):
    """OpenAI's embeddings schema, the same body for both servers (infinity's route has no /v1)."""

    route = "/v1/embeddings"

    def request(self, kind: str, item) -> tuple[str, bytes, dict]:
        if kind == "text":
            body = {"model": "peer", "input": [item], "encoding_format": "base64"}
            return self.route, json.dumps(body).encode(), {"Content-Type": "application/json"}
        uri = "data:image/jpeg;base64," + base64.b64encode(item).decode()
        body = {"model": "peer", "input": [uri], "modality": "image", "encoding_format": "base64"}
        return self.route, json.dumps(body).encode(), {"Content-Type": "application/json"}


class Infinity(OpenAiRoute):
    route = "/embeddings"


def _triton_port(serve_pid: int) -> int:
    """tritonserver's private loopback HTTP port, from its command line (a child of serve)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == serve_pid and args and args[0].endswith(b"tritonserver"):
            for arg in args:
                if arg.startswith(b"--http-port="):
                    return int(arg.split(b"=", 1)[1])
    sys.exit("no tritonserver child found")


def _load(target: Target, kind: str, payload: list, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=120)
        target.send(connection, kind, payload[k % len(payload)])
        i = k
        while time.monotonic() < stop:
            start = time.perf_counter()
            ok = target.send(connection, kind, payload[i % len(payload)])
            with lock:
                latencies.append(time.perf_counter() - start)
                failures[0] += not ok
            i += concurrency

    seconds = run_threads(worker, concurrency)
    return {**_summary(latencies, len(latencies), seconds), "failed": failures[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--infinity", type=Path, required=True, help="the infinity_emb executable of its own venv")
    parser.add_argument("--serve-python", type=Path, default=REPO / ".venv-serve" / "bin" / "python")
    parser.add_argument("--work", type=Path, default=Path("/tmp/clipexport-serve-peer"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    from clipexport.serving.server import free_local_ports

    folder = _model_folder(args.work / "peer")
    artifact = args.work / "artifact"
    if not (artifact / "manifest.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "clipexport", "export", str(folder), "-o", str(artifact), "-q"], check=True
        )
    ours_http, grpc, metrics, theirs_http = free_local_ports(4)
    env = dict(os.environ, HF_HUB_OFFLINE="1", INFINITY_ANONYMOUS_USAGE_STATS="0", DO_NOT_TRACK="1")
    ours = OpenAiRoute(
        "clipexport serve",
        serve_command(args.serve_python, artifact, (ours_http, grpc, metrics), "--name", "peer", "--max-batch", "32"),
        ours_http,
        "/ready",
    )
    theirs = Infinity(
        "infinity-emb",
        [
            str(args.infinity),
            "v2",
            "--model-id",
            str(folder),
            "--served-model-name",
            "peer",
            "--port",
            str(theirs_http),
            "--engine",
            "torch",
            "--device",
            "cpu",
            "--batch-size",
            "32",
            "--no-bettertransformer",
        ],
        theirs_http,
        "/health",
        env,
    )
    started = [ours, theirs]
    images = _images(16)
    result = {
        "model": "random HF CLIPModel, ViT-B/32 sizes",
        "machine": machine(),
        "seconds_per_point": args.seconds,
        "servers": {t.name: {} for t in started},
    }
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    for target in started:
        target.result = result["servers"][target.name]
        target.result["cold_start_s"] = target.start()
        target.result["rss_idle_mb"] = _tree_rss_mb(target.process.pid)
        print(
            target.name,
            "ready in",
            round(target.result["cold_start_s"], 1),
            "s; RSS",
            round(target.result["rss_idle_mb"]),
            "MB",
            flush=True,
        )
    # The same clipexport server through KServe v2: via the front, and straight to tritonserver.
    front = Kserve("clipexport serve, KServe v2 via the front", [], ours_http, "/ready")
    direct = Kserve("tritonserver direct, KServe v2", [], _triton_port(ours.process.pid), "/v2/health/ready")
    targets = [ours, theirs, front, direct]
    for target in (front, direct):
        target.result = result["servers"][target.name] = {}
    try:
        for kind, payload in (("text", TEXTS), ("image", images)):
            for concurrency in concurrencies:
                for target in targets if concurrency % 2 else targets[::-1]:  # alternate who goes first
                    point = _load(target, kind, payload, concurrency, args.seconds)
                    target.result[f"{kind}/c{concurrency}"] = point
                    print(target.name, kind, concurrency, {k: round(v, 1) for k, v in point.items()}, flush=True)
        for target in started:
            target.result["rss_after_load_mb"] = _tree_rss_mb(target.process.pid)
    finally:
        for target in started:
            target.stop()
    points = [f"{kind}/c{c}" for kind in ("text", "image") for c in concurrencies]

    def ratio(a: Target, b: Target) -> dict[str, float]:
        return {p: a.result[p]["items_per_s"] / b.result[p]["items_per_s"] for p in points}

    result["ratio_clipexport_over_infinity"] = ratio(ours, theirs)
    result["ratio_clipexport_over_infinity"]["rss_after_load"] = (
        ours.result["rss_after_load_mb"] / theirs.result["rss_after_load_mb"]
    )
    result["ratio_openai_route_over_triton_direct"] = ratio(ours, direct)
    result["ratio_kserve_via_front_over_triton_direct"] = ratio(front, direct)
    for key in (
        "ratio_clipexport_over_infinity",
        "ratio_openai_route_over_triton_direct",
        "ratio_kserve_via_front_over_triton_direct",
    ):
        print(key, json.dumps({k: round(v, 3) for k, v in result[key].items()}), flush=True)
    print(write_result("serve-vs-infinity", result))


if __name__ == "__main__":
    main()
