"""A real `clipexport serve` in a subprocess, for the serving tests: started on free ports from the
serving venv, ready when it says so, stopped with SIGTERM."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clipexport.serving.server import free_local_ports

READY_S = 240
# In-process runtime and server run the same ONNX Runtime graph on the same CPU: only batch
# composition differs, which moves float32 results by a few ulps.
SERVER_MAX_ABS = 1e-6


def png(seed: int, size=(80, 60)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb() -> bytes:
    """A small PNG whose header claims 40000x40000 pixels: refused from the header, never decoded."""
    import struct
    import zlib

    data = bytearray(png(3, (8, 8)))
    ihdr = data[12:29]  # b"IHDR" + width, height, depth, colour, compression, filter, interlace
    ihdr[4:12] = struct.pack(">II", 40000, 40000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


class Server:
    """`ports_from_env`: the ports come from CLIPEXPORT_SERVE_HTTP_PORT and friends (what a container
    sets), not from the command line."""

    def __init__(
        self, artifact: Path, python: Path, *extra: str, cwd: Path | None = None, ports_from_env: bool = False
    ):
        self.http, self.grpc, self.metrics = free_local_ports(3)
        self.log = artifact.parent / f"serve-{self.http}.log"
        ports = {"--http-port": self.http, "--grpc-port": self.grpc, "--metrics-port": self.metrics}
        env = dict(os.environ)
        args: list[str] = []
        for option, port in ports.items():
            if ports_from_env:
                env["CLIPEXPORT_SERVE_" + option[2:].upper().replace("-", "_")] = str(port)
            else:
                args += [option, str(port)]
        self.process = subprocess.Popen(
            [str(python), "-m", "clipexport", "serve", str(artifact), "--name", "m", *args, *extra],
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            cwd=str(cwd or artifact.parent),
            env=env,
        )
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            if "ready:" in self.log.read_text():
                return
            time.sleep(0.2)
        raise AssertionError(f"server not ready: {self.log.read_text()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    @property
    def workspace(self) -> Path:
        line = next(x for x in self.log.read_text().splitlines() if "workspace " in x)
        return Path(line.rsplit("workspace ", 1)[1].rstrip(")"))

    def stop(self) -> tuple[int, float]:
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        return code, time.monotonic() - start
