"""`ClipClient`: image and text embeddings from a Triton server that serves a clipexport model
(`clipexport serve`, or a repository from `clipexport triton`), over KServe v2 HTTP or gRPC with
`tritonclient`, so callers never build protobufs or JSON bodies.

    client = ClipClient("localhost:8000", model="vit-b-32")     # or "grpc://localhost:8001", "https://..."
    texts = client.encode_text(["a photo of a cat"])             # float32 [1, D], L2-normalised
    images = client.encode_image(["cat.jpg", png_bytes])

Images go as their encoded file bytes (the server decodes and preprocesses them exactly as the
runtime does). Batches are split to the served model's max batch size. One client may be shared
by threads: tritonclient's HTTP client is not thread-safe (gevent), so each thread gets its own
connection; gRPC channels are thread-safe and shared.

Errors, by whose they are: `RequestRefused` (exit 2) when the server says the input is wrong
(HTTP 400 / INVALID_ARGUMENT; the message names the caller's item: its path or file:line when
given), `ServerUnreachable` (exit 3) when nothing answers or the model is not served, and
`ServerError` (exit 4) when the server failed on good input.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clipexport._deps import require
from clipexport.errors import EXIT_USER, EnvironmentProblem, InputError, StepFailed, first_line
from clipexport.inputs import check_texts, item_name

DEFAULT_TIMEOUT_S = 60.0
_ITEM = re.compile(r"\b(image|text) #(\d+)")


class ServerError(StepFailed):
    """The server failed on a request (a fault on its side, exit 4); base of the client's errors."""


class RequestRefused(InputError, ServerError):
    """The server refused the request as the client's mistake (HTTP 400 / INVALID_ARGUMENT)."""

    exit_code = EXIT_USER


class ServerUnreachable(EnvironmentProblem, ServerError):
    """No server answers at the URL, or it does not serve the model."""


def parse_url(url: str) -> tuple[str, str, bool]:
    """(protocol, host:port, tls) from host:port, http(s)://host:port or grpc(s)://host:port."""
    if not isinstance(url, str) or not url.strip():
        raise InputError("server URL is empty; pass host:port (HTTP), https://host:port or grpc://host:port")
    text = url.strip()
    parsed = urllib.parse.urlsplit(text if "://" in text else f"http://{text}")
    schemes = {"http": ("http", False), "https": ("http", True), "grpc": ("grpc", False), "grpcs": ("grpc", True)}
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if (
        parsed.scheme not in schemes
        or not parsed.hostname
        or port is None
        or port < 1
        or parsed.path.strip("/")
        or parsed.query
    ):
        raise InputError(
            f"server URL '{url}' is not host:port, http(s)://host:port or grpc(s)://host:port "
            "(e.g. localhost:8000 or grpc://localhost:8001)"
        )
    protocol, tls = schemes[parsed.scheme]
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return protocol, f"{host}:{port}", tls


class ClipClient:
    def __init__(self, url: str, model: str, timeout: float = DEFAULT_TIMEOUT_S):
        """`url`: host:port or http(s)://host:port for HTTP, grpc(s)://host:port for gRPC. `model`:
        the name prefix of the served models (`<model>_image`, `<model>_text`). `timeout`: seconds
        for connecting and for each request."""
        from clipexport.inputs import check_model_name

        self.model = check_model_name(model)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
            raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.protocol, self.url, self.tls = parse_url(url)
        hint = "talking to a Triton server (pip install 'clipexport[client]')"
        self._lib = require(f"tritonclient.{self.protocol}", hint)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._configs: dict[str, tuple[int, int]] = {}

    def _client(self) -> Any:
        """This thread's tritonclient client (gRPC: one for all threads)."""
        client = getattr(self._local, "client", None) if self.protocol == "http" else (self._clients or [None])[0]
        if client is None:
            with self._lock:
                if self.protocol == "grpc" and self._clients:
                    return self._clients[0]
                if self.protocol == "http":
                    client = self._lib.InferenceServerClient(
                        url=self.url, connection_timeout=self.timeout, network_timeout=self.timeout, ssl=self.tls
                    )
                    self._local.client = client
                else:
                    client = self._lib.InferenceServerClient(url=self.url, ssl=self.tls)
                self._clients.append(client)
        return client

    def ready(self) -> bool:
        try:
            kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
            return bool(self._client().is_server_ready(**kwargs))
        except Exception:
            return False

    def encode_text(
        self, texts: str | Sequence[str], batch_size: int = 32, names: Sequence[str] | None = None
    ) -> np.ndarray:
        """Texts (the runtime's rules: any string, the empty one too); `names` (a file:line per
        text) is what errors name."""
        items = check_texts(texts, names)
        return self._run(
            f"{self.model}_text",
            "TEXT",
            [t.encode("utf-8") for t in items],
            batch_size,
            names or [item_name("text", i) for i in range(len(items))],
        )

    def encode_image(self, images: Any, batch_size: int = 8, names: Sequence[str] | None = None) -> np.ndarray:
        """Paths, encoded bytes, or PIL images (sent as PNG)."""
        single = isinstance(images, (str, os.PathLike, bytes, bytearray)) or hasattr(images, "save")
        items = [images] if single else list(images)
        payload = [_image_bytes(item, item_name("image", i, names)) for i, item in enumerate(items)]
        default = [
            str(item) if isinstance(item, (str, os.PathLike)) else item_name("image", i) for i, item in enumerate(items)
        ]
        return self._run(f"{self.model}_image", "IMAGE", payload, batch_size, list(names or default))

    def model_limits(self, model: str) -> tuple[int, int]:
        """(max batch size, embedding width) of a served model, from its config (cached)."""
        if model not in self._configs:
            try:
                if self.protocol == "grpc":
                    config = self._client().get_model_config(model, as_json=True, client_timeout=self.timeout)["config"]
                else:
                    config = self._client().get_model_config(model)
            except Exception as exc:
                raise self._classify(exc, model) from None
            dims = [int(d) for d in (config.get("output") or [{}])[0].get("dims", [0])]
            self._configs[model] = (int(config.get("max_batch_size", 0) or 0), dims[-1] if dims else 0)
        return self._configs[model]

    def _run(self, model: str, input_name: str, payload: list[bytes], batch_size: int, names: list[str]) -> np.ndarray:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        max_batch, dim = self.model_limits(model)
        step = min(batch_size, max_batch) if max_batch > 0 else batch_size
        chunks = [
            self._infer(model, input_name, payload[i : i + step], names[i : i + step])
            for i in range(0, len(payload), step)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)

    def _infer(self, model: str, input_name: str, items: list[bytes], names: list[str]) -> np.ndarray:
        data = np.array(items, dtype=np.object_).reshape(-1, 1)
        tensor = self._lib.InferInput(input_name, list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        try:
            kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
            result = self._client().infer(
                model, [tensor], outputs=[self._lib.InferRequestedOutput("EMBEDDING")], **kwargs
            )
        except Exception as exc:  # tritonclient's InferenceServerException, or a connection error
            raise self._classify(exc, model, names) from None
        return result.as_numpy("EMBEDDING").astype(np.float32, copy=False)

    def _classify(self, exc: BaseException, model: str, names: Sequence[str] | None = None) -> ServerError:
        """The error class says whose problem it is; item numbers become the caller's names."""
        message = rename_items(_message(exc), names)
        status = str(_call(getattr(exc, "status", None)) or "")
        lowered = message.lower()
        if "unknown model" in lowered or ("not found" in lowered and model in message) or "NOT_FOUND" in status:
            return ServerUnreachable(
                f"{self.url} does not serve {model} ({message}); check --model / --name "
                "(the served names are <name>_image and <name>_text)"
            )
        if status in ("400", "413", "StatusCode.INVALID_ARGUMENT"):
            return RequestRefused(f"{model} at {self.url} refused the request: {message}")
        if status == "StatusCode.RESOURCE_EXHAUSTED":  # serve's gRPC front: a message over its bound
            return RequestRefused(
                f"{model} at {self.url} refused the request: it is over the server's limit per request ({message}); "
                "send fewer or smaller items per request"
            )
        if (
            isinstance(exc, (OSError, TimeoutError))
            or status in UNREACHABLE_GRPC_STATUSES
            or any(
                word in lowered
                for word in (
                    "connection refused",
                    "timed out",
                    "failed to connect",
                    "unavailable",
                    "connection reset",
                    "name or service not known",
                )
            )
        ):
            return ServerUnreachable(
                f"no answer from a Triton server at {self.url} ({message}); is clipexport serve running there?"
            )
        return ServerError(f"{model} at {self.url}: {message}")

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                try:
                    client.close()
                except Exception:
                    pass
            self._clients.clear()
        self._local = threading.local()

    def __enter__(self) -> "ClipClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _image_bytes(item: Any, name: str) -> bytes:
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
    raise InputError(f"{name} is a {type(item).__name__}; pass a path, encoded bytes or a PIL image")


def _call(value: Any) -> Any:
    return value() if callable(value) else value


# gRPC statuses that say the server is not there (or not answering in time), not that it failed.
UNREACHABLE_GRPC_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")


def rename_items(message: str, names: Sequence[str] | None) -> str:
    """A server's "image #3" / "text #0" (its place in the request) as the caller's own name for it."""
    if not names:
        return message
    return _ITEM.sub(lambda m: names[int(m.group(2))] if int(m.group(2)) < len(names) else m.group(0), message, count=1)


def _message(exc: BaseException) -> str:
    text = str(_call(getattr(exc, "message", None)) or exc).strip()
    return first_line(Exception(text), 500) if text else type(exc).__name__
