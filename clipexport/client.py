"""`ClipClient`: image and text embeddings from a Triton server that serves a clipexport model
(`clipexport serve`, or a repository from `clipexport triton`), over KServe v2 HTTP or gRPC with
`tritonclient`, so callers never build protobufs or JSON bodies.

    client = ClipClient("localhost:8000", model="vit-b-32")     # or "grpc://localhost:8001"
    texts = client.encode_text(["a photo of a cat"])             # float32 [1, D], L2-normalised
    images = client.encode_image(["cat.jpg", png_bytes])

Images go as their encoded file bytes (the server decodes and preprocesses them exactly as the
runtime does); a request the server refuses raises `ServerError` with the server's message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clipexport._deps import require
from clipexport.errors import InputError, StepFailed

DEFAULT_TIMEOUT_S = 60.0


class ServerError(StepFailed):
    """The server answered a request with an error (bad input, or the model failed)."""


class ClipClient:
    def __init__(self, url: str, model: str, timeout: float = DEFAULT_TIMEOUT_S):
        """`url`: host:port for HTTP, or grpc://host:port (http:// also accepted). `model`: the
        name prefix of the served models (`<model>_image`, `<model>_text`)."""
        self.model = model
        self.timeout = timeout
        if url.startswith("grpc://"):
            self.protocol, address = "grpc", url.removeprefix("grpc://")
            self._lib = require("tritonclient.grpc", "talking to a Triton server (pip install 'clipexport[client]')")
        else:
            self.protocol, address = "http", url.removeprefix("http://")
            self._lib = require("tritonclient.http", "talking to a Triton server (pip install 'clipexport[client]')")
        self.url = address.rstrip("/")
        self._client = self._lib.InferenceServerClient(url=self.url, **({"network_timeout": timeout} if self.protocol == "http" else {}))

    def ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except Exception:
            return False

    def encode_text(self, texts: str | Sequence[str], batch_size: int = 32) -> np.ndarray:
        items = [texts] if isinstance(texts, str) else list(texts)
        for index, text in enumerate(items):
            if not isinstance(text, str):
                raise InputError(f"text #{index} is a {type(text).__name__}, not a string")
        payload = [t.encode("utf-8") for t in items]
        return self._run(f"{self.model}_text", "TEXT", payload, batch_size)

    def encode_image(self, images: Any, batch_size: int = 8) -> np.ndarray:
        """Paths, encoded bytes, or PIL images (sent as PNG)."""
        items = [images] if isinstance(images, (str, os.PathLike, bytes, bytearray)) or hasattr(images, "save") else list(images)
        return self._run(f"{self.model}_image", "IMAGE", [_image_bytes(item, i) for i, item in enumerate(items)], batch_size)

    def _run(self, model: str, input_name: str, payload: list[bytes], batch_size: int) -> np.ndarray:
        if batch_size < 1:
            raise InputError("batch_size must be at least 1")
        chunks = [self._infer(model, input_name, payload[i:i + batch_size]) for i in range(0, len(payload), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)

    def _infer(self, model: str, input_name: str, items: list[bytes]) -> np.ndarray:
        data = np.array(items, dtype=np.object_).reshape(-1, 1)
        tensor = self._lib.InferInput(input_name, list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        try:
            kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
            result = self._client.infer(model, [tensor], outputs=[self._lib.InferRequestedOutput("EMBEDDING")], **kwargs)
        except Exception as exc:  # tritonclient's InferenceServerException, or a connection error
            raise ServerError(f"{model} at {self.url}: {_message(exc)}") from None
        return result.as_numpy("EMBEDDING").astype(np.float32, copy=False)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "ClipClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _image_bytes(item: Any, index: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise InputError(f"image {path} does not exist")
        return path.read_bytes()
    if hasattr(item, "save"):  # a PIL image
        import io

        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        return buffer.getvalue()
    raise InputError(f"image #{index} is a {type(item).__name__}; pass a path, encoded bytes or a PIL image")


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None)
    text = text() if callable(text) else text
    return str(text or exc).strip().splitlines()[0][:500] if str(text or exc).strip() else type(exc).__name__
