"""serve's HTTP API: a Starlette application (run by uvicorn in `front.py`) in front of the
tritonserver `clipexport serve` starts, which keeps the models and the dynamic batching.

Routes (the request rules are `api.py`'s; the items are checked by the python models, so every
surface refuses the same things with the same line):

- `POST /v1/embeddings`, `GET /v1/models`: OpenAI's embeddings API (text; images with
  `"modality": "image"`, as infinity-emb takes them).
- `POST /embed/text` (a JSON list of strings), `POST /embed/image` (multipart files, or the raw
  image bytes as the body).
- `POST /search`, `GET /` (the search page), `GET /image/{row}` (a result's image, only from under
  `--image-root`): with `--index`.
- `GET /health` (the process answers), `GET /ready` (models and index loaded), `GET /metrics`
  (this front's Prometheus metrics: requests by route and status, latency, items per request;
  Triton's own stay on --metrics-port).
- `/v2/...`: KServe v2 for tritonclient users. Nothing a client sends reaches Triton as sent: the
  body is parsed here (JSON, plus the binary-tensor extension's tail) and forwarded as a request
  this app frames itself, with its own headers; so a form-encoded body or a header trick cannot
  reach Triton's HTTP library (a 5 MB form body used to crash it).

Every body is bounded while it streams (413 past --max-request-bytes; from Content-Length before
reading a byte) and must arrive within BODY_TIMEOUT_S. Embeddings are computed by Triton: a
request's items go in chunks of the served max batch, all at once, so concurrent requests batch
together.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import numpy as np

from clipexport.client import UNREACHABLE_GRPC_STATUSES, rename_items
from clipexport.errors import InputError, first_line
from clipexport.files import package_data
from clipexport.inputs import FETCH_TIMEOUT_S, too_large
from clipexport.serving.api import (
    DEFAULT_K,
    ImageSource,
    ModelNotFound,
    check_item_count,
    encode_embedding,
    non_public,
    parse_embeddings_request,
    parse_k,
    parse_search_request,
    parse_texts,
)

BODY_TIMEOUT_S = 60.0  # a body (or the rest of one) that does not arrive in this long: 408
DRAIN_BYTES = 256 * 1024 * 1024  # after a 413: how much of the unwanted body is read, so the client sees the answer
UPSTREAM_TIMEOUT_S = 600.0  # a request Triton has not answered in this long fails with 503
# Triton's HTTP frontend answers 500 for these, but each says the request body was malformed.
CLIENT_ERROR_PREFIXES = ("failed to parse the request JSON", "Unable to parse", "unable to parse")
# /v1/embeddings counts `usage` tokens on the event loop up to this many characters (short prompts:
# tens of microseconds), in a worker thread beyond (a long request must not hold other clients).
INLINE_TOKENIZE_CHARS = 4096
ITEM_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class AppOptions:
    model: str  # the served name: Triton's models are <model>_image and <model>_text
    dim: int
    precision: str
    upstream_http: int  # tritonserver's loopback HTTP port (the KServe routes, readiness)
    upstream_grpc: int  # tritonserver's loopback gRPC port (the embeddings: one HTTP/2 channel, protobuf)
    max_batch: int
    max_request_bytes: int
    allow_url_fetch: bool = False
    url_fetch_timeout_s: float = FETCH_TIMEOUT_S
    url_fetch_private: bool = False  # with allow_url_fetch: loopback / private / link-local addresses too
    tokenizer: Callable[[Sequence[str]], np.ndarray] | None = None  # counts `usage` tokens
    pad_id: int = 0
    searcher: Any = None  # a search.Searcher (with --index)
    dataset: Any = None  # the index's EmbeddingsDataset, for the rows' metadata (None: gone)
    image_root: Path | None = None
    created: int = field(default_factory=lambda: int(time.time()))


class Refused(Exception):
    """An answer of 4xx/5xx with one line; the app renders it in the route's error shape."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _error_response(path: str, status: int, message: str) -> Any:
    """Every refusal's answer: one line, in the shape the route's clients read."""
    from starlette.responses import JSONResponse

    if path.startswith("/v1/"):  # OpenAI's shape: the openai client raises with error.message
        kind = "invalid_request_error" if status < 500 else "server_error"
        code = "model_not_found" if status == 404 else None
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status)
    return JSONResponse({"error": message}, status)  # KServe's shape, and the REST routes'


def _unreachable(exc: BaseException) -> Refused:
    return Refused(503, f"the model server is not answering ({type(exc).__name__}); try again")


# -- the body bound -------------------------------------------------------------------------------
class BoundedBody:
    """ASGI middleware: a body over `limit` is 413 (from Content-Length before reading; otherwise
    as soon as the streamed bytes pass it), a body that stalls is 408. After a refusal the rest of
    the body is read and dropped (up to DRAIN_BYTES), so a client still sending reads the answer
    instead of a reset; a client that asked `Expect: 100-continue` is answered before it sends."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _answer(scope, send, 400, f"Content-Length {declared[:40]!r} is not a number")
                return
            if int(declared) > self.limit:
                if "100-continue" not in headers.get("expect", "").lower():
                    await _drain(receive)
                await _answer(scope, send, 413, too_large(int(declared), self.limit, "the request"))
                return
        seen, done = 0, False

        async def bounded() -> dict:
            nonlocal seen, done
            if done:
                return await receive()  # the body is complete: what follows is a disconnect
            try:
                message = await asyncio.wait_for(receive(), BODY_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise Refused(408, f"the request body did not arrive within {BODY_TIMEOUT_S:.0f} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                done = not message.get("more_body", False)
                if seen > self.limit:
                    if not done:
                        await _drain(receive)
                    raise Refused(413, too_large(seen, self.limit, "the request"))
            return message

        await self.app(scope, bounded, send)


async def _drain(receive: Callable) -> None:
    read = 0
    try:
        while read < DRAIN_BYTES:
            message = await asyncio.wait_for(receive(), 10)
            if message["type"] != "http.request":
                return
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                return
    except asyncio.TimeoutError:
        return


async def _answer(scope: dict, send: Callable, status: int, message: str) -> None:
    await _error_response(scope.get("path", ""), status, message)(scope, _nothing, send)


async def _nothing() -> dict:
    return {"type": "http.disconnect"}


# -- metrics --------------------------------------------------------------------------------------
class Metrics:
    """ASGI middleware counting every request (refused ones included) by route template and status,
    with latency and items-per-request histograms, in its own Prometheus registry."""

    def __init__(self, app: Any, routes: Sequence[Any]):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.app, self.routes = app, routes
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "clipexport_http_requests", "HTTP requests by route and status", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "clipexport_http_request_duration_seconds", "Time to the response's end, by route", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.items = Histogram(
            "clipexport_http_items_per_request", "Items (texts, images) per embedding request", ["route"],
            buckets=ITEM_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def _route(self, scope: dict) -> str:
        from starlette.routing import Match

        for route in self.routes:
            if route.matches(scope)[0] is Match.FULL:
                return route.path
        return "other"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500
        route = self._route(scope)

        async def recorded(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recorded)
        finally:
            self.requests.labels(route, scope["method"], str(status)).inc()
            self.latency.labels(route).observe(time.perf_counter() - start)
            items = scope.get("state", {}).get("items")
            if items:
                self.items.labels(route).observe(items)


# -- Triton ----------------------------------------------------------------------------------------
class Upstream:
    """The app's pooled async clients: tritonclient's gRPC client to tritonserver's loopback gRPC
    port (the embeddings), aiohttp's session to its loopback HTTP port (readiness and the KServe
    routes' forwarded requests), and, with --allow-url-fetch, one aiohttp session for image URLs."""

    def __init__(self, options: AppOptions):
        self.options = options
        self.client: Any = None
        self.session: Any = None
        self.web: Any = None

    async def open(self) -> None:
        import aiohttp
        import tritonclient.grpc.aio as triton

        self.client = triton.InferenceServerClient(f"127.0.0.1:{self.options.upstream_grpc}")
        self.session = aiohttp.ClientSession(
            f"http://127.0.0.1:{self.options.upstream_http}",
            connector=aiohttp.TCPConnector(limit=256),
            timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S),
            auto_decompress=False,
        )
        if self.options.allow_url_fetch:
            # Every connection's addresses checked as it connects (a name that resolved to a public
            # address when fetch checked it may resolve elsewhere a moment later).
            resolver = None if self.options.url_fetch_private else _public_resolver()
            self.web = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.options.url_fetch_timeout_s),
                connector=aiohttp.TCPConnector(resolver=resolver),
            )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        for session in (self.session, self.web):
            if session is not None:
                await session.close()

    async def embed(self, tower: str, items: Sequence[bytes], names: Sequence[str]) -> np.ndarray:
        """Items of one tower ("image" / "text") → [N, dim] float32, in chunks of the max batch
        sent together (the dynamic batcher joins them with other clients' requests)."""
        size = self.options.max_batch
        chunks = [self._infer(tower, items[i : i + size], names[i : i + size]) for i in range(0, len(items), size)]
        return np.concatenate(await asyncio.gather(*chunks)) if chunks else np.zeros((0, self.options.dim), np.float32)

    async def _infer(self, tower: str, items: Sequence[bytes], names: Sequence[str]) -> np.ndarray:
        import tritonclient.grpc as triton
        from tritonclient.utils import InferenceServerException

        tensor = triton.InferInput("IMAGE" if tower == "image" else "TEXT", [len(items), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(list(items), dtype=object).reshape(-1, 1))
        try:
            result = await self.client.infer(
                f"{self.options.model}_{tower}",
                [tensor],
                outputs=[triton.InferRequestedOutput("EMBEDDING")],
                client_timeout=UPSTREAM_TIMEOUT_S,
            )
        except InferenceServerException as exc:
            message = rename_items(str(exc.message() or exc).strip(), names)
            if str(exc.status()) == "StatusCode.INVALID_ARGUMENT":
                raise InputError(message) from None
            if str(exc.status()) in UNREACHABLE_GRPC_STATUSES:  # Triton gone or not answering: 503, as /ready says
                raise _unreachable(exc) from None
            raise Refused(502, f"the model server failed: {first_line(Exception(message), 300)}") from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise _unreachable(exc) from None
        return result.as_numpy("EMBEDDING").astype(np.float32, copy=False)

    async def ready(self) -> bool:
        try:
            async with self.session.get("/v2/health/ready") as response:
                return response.status == 200
        except Exception:
            return False

    async def forward(self, method: str, path: str, query: str, body: bytes, headers: dict[str, str]) -> Any:
        from starlette.responses import Response

        url = f"{path}?{query}" if query else path
        headers = {**headers, "Accept-Encoding": "identity"}  # Triton's body passes on as it comes
        try:
            async with self.session.request(method, url, data=body or None, headers=headers) as response:
                payload = await response.read()
                status = response.status
                kept = {
                    k: v
                    for k, v in response.headers.items()
                    if k.lower() in ("content-type", "inference-header-content-length")
                }
        except (OSError, asyncio.TimeoutError) as exc:
            raise _unreachable(exc) from None
        if status == 500 and any(p in payload.decode(errors="replace") for p in CLIENT_ERROR_PREFIXES):
            status = 400
        return Response(payload, status, headers=kept)


# -- routes ----------------------------------------------------------------------------------------
Endpoint = Callable[[Any], Awaitable[Any]]


def _route(handler: Callable[[Any, Any], Awaitable[Any]], app_state: "_State") -> Endpoint:
    """A handler's InputError is the client's mistake (400; 404 for an unknown model), Refused its
    own status; the answer is one line in the route's error shape."""

    async def endpoint(request: Any) -> Any:
        try:
            return await handler(request, app_state)
        except Refused as exc:
            status, message = exc.status, exc.message
        except ModelNotFound as exc:
            status, message = 404, str(exc)
        except InputError as exc:
            status, message = 400, str(exc)
        return _error_response(request.url.path, status, message)

    return endpoint


@dataclass
class _State:
    options: AppOptions
    upstream: Upstream
    page: str = ""  # the search page, read once (with --index)

    async def fetch(self, source: ImageSource, name: str) -> bytes:
        """An image item's bytes; a URL (only parsed as one with --allow-url-fetch) is fetched within
        --url-fetch-timeout (the whole fetch, redirects included) and the request bound, on the app's
        one web session, from public addresses only unless --url-fetch-private (each redirect's
        target checked too)."""
        if not source.url:
            return source.data
        import aiohttp

        try:
            async with asyncio.timeout(self.options.url_fetch_timeout_s):
                return await self._fetch(source.url, name)
        except TimeoutError:
            raise InputError(
                f"{name}: fetching {source.url[:200]} took over {self.options.url_fetch_timeout_s:g} s (--url-fetch-timeout)"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise InputError(f"{name}: fetching {source.url[:200]} failed ({first_line(exc, 160)})") from None

    async def _fetch(self, first: str, name: str) -> bytes:
        from yarl import URL

        limit = self.options.max_request_bytes
        url = URL(first)
        for _ in range(MAX_URL_REDIRECTS + 1):
            if url.scheme not in ("http", "https") or not url.host:
                raise InputError(f"{name}: {first[:200]} redirected to {str(url)[:200]}, not an http(s) URL")
            if not self.options.url_fetch_private:
                await _refuse_non_public(url.host, url.port or 80, name)
            async with self.upstream.web.get(url, allow_redirects=False) as response:
                if response.status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                    url = url.join(URL(response.headers["Location"]))
                    continue
                if response.status != 200:
                    raise InputError(f"{name}: fetching {first[:200]} answered HTTP {response.status}")
                if (response.content_length or 0) > limit:
                    raise InputError(f"{name}: {too_large(response.content_length, limit, first[:200])}")
                data = bytearray()
                async for chunk in response.content.iter_chunked(256 * 1024):
                    data += chunk
                    if len(data) > limit:
                        raise InputError(f"{name}: {too_large(len(data), limit, first[:200])}")
                return bytes(data)
        raise InputError(f"{name}: fetching {first[:200]} redirected more than {MAX_URL_REDIRECTS} times")

    async def embed_images(self, sources: Sequence[ImageSource], names: Sequence[str]) -> np.ndarray:
        data = await asyncio.gather(*(self.fetch(s, n) for s, n in zip(sources, names)))
        return await self.upstream.embed("image", data, names)

    async def embed_texts(self, texts: Sequence[str], names: Sequence[str]) -> np.ndarray:
        return await self.upstream.embed("text", [t.encode("utf-8") for t in texts], names)

    def tokens(self, texts: Sequence[str]) -> int:
        """`usage`: the tokens the model reads (the artifact's own tokenizer, padding not counted)."""
        if self.options.tokenizer is None or not texts:
            return 0
        return int(np.count_nonzero(self.options.tokenizer(list(texts)) != self.options.pad_id))


MAX_URL_REDIRECTS = 5


def _not_public_message(host: str, address: str, kind: str) -> str:
    shown_address = "" if host == address else f" ({address})"
    return (
        f"{host}{shown_address} is a {kind} address: this server fetches image URLs from public addresses only "
        "(the operator may allow others with --url-fetch-private)"
    )


async def _refuse_non_public(host: str, port: int, name: str) -> None:
    """InputError when `host` is, or resolves to, an address that is not public (`api.non_public`).
    An IP literal comes back from getaddrinfo as itself, without a lookup (aiohttp's resolver never
    sees one: this is its only check)."""
    import socket

    for *_, sockaddr in await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM):
        kind = non_public(sockaddr[0])
        if kind:
            raise InputError(f"{name}: {_not_public_message(host, sockaddr[0], kind)}")


def _public_resolver() -> Any:
    """aiohttp's default resolver, refusing (OSError) a name that resolves to a non-public address."""
    import errno

    from aiohttp.abc import AbstractResolver
    from aiohttp.resolver import DefaultResolver

    class PublicOnly(AbstractResolver):
        def __init__(self) -> None:
            self.inner = DefaultResolver()

        async def resolve(self, host: str, port: int = 0, family: int = 0) -> Any:
            found = await self.inner.resolve(host, port, family)
            for entry in found:
                kind = non_public(entry["host"])
                if kind:
                    # errno and strerror both: aiohttp's connection error shows the strerror.
                    raise OSError(errno.EACCES, _not_public_message(host, entry["host"], kind))
            return found

        async def close(self) -> None:
            await self.inner.close()

    return PublicOnly()


async def _json(request: Any) -> Any:
    body = await request.body()
    if not body.strip():
        raise InputError("the request has no body; send JSON")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"the body is not JSON ({first_line(exc, 120)})") from None


def _is_multipart(request: Any) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def _uploads(request: Any) -> tuple[list[bytes], list[str], dict[str, str]]:
    """A multipart body's files (with their names) and its plain fields."""
    try:
        form = await request.form(max_files=4096, max_fields=64)
    except Exception as exc:  # python-multipart's parse errors, Starlette's limits
        raise InputError(f"the multipart body cannot be read ({first_line(exc, 120)})") from None
    files, names, fields = [], [], {}
    for key, value in form.multi_items():
        if hasattr(value, "read"):
            files.append(await value.read())
            names.append(value.filename or key)
        else:
            fields[key] = value
    await form.close()
    return files, names, fields


async def v1_models(request: Any, state: _State) -> Any:
    from starlette.responses import JSONResponse

    model = {"id": state.options.model, "object": "model", "created": state.options.created, "owned_by": "clipexport"}
    return JSONResponse({"object": "list", "data": [model]})


async def v1_embeddings(request: Any, state: _State) -> Any:
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    options = state.options
    parsed = parse_embeddings_request(await _json(request), options.model, options.dim, options.allow_url_fetch)
    request.state.items = parsed.count
    names = [f"input[{i}]" for i in range(parsed.count)]
    if parsed.images:
        vectors, tokens = await state.embed_images(parsed.images, names), 0
    elif sum(map(len, parsed.texts)) <= INLINE_TOKENIZE_CHARS:  # a thread's hop would cost more than the count
        vectors, tokens = await state.embed_texts(parsed.texts, names), state.tokens(parsed.texts)
    else:
        vectors, tokens = await asyncio.gather(
            state.embed_texts(parsed.texts, names), run_in_threadpool(state.tokens, parsed.texts)
        )
    data = [
        {"object": "embedding", "index": i, "embedding": encode_embedding(row, parsed.encoding)}
        for i, row in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return JSONResponse({"object": "list", "data": data, "model": options.model, "usage": usage})


def _embeddings_answer(state: _State, vectors: np.ndarray) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(
        {
            "embeddings": vectors.tolist(),  # float32 from Upstream.embed
            "dim": state.options.dim,
            "model": state.options.model,
            "precision": state.options.precision,
        }
    )


async def embed_text(request: Any, state: _State) -> Any:
    texts = parse_texts(await _json(request))
    request.state.items = len(texts)
    return _embeddings_answer(state, await state.embed_texts(texts, [f"text #{i}" for i in range(len(texts))]))


async def embed_image(request: Any, state: _State) -> Any:
    if _is_multipart(request):
        files, names, _ = await _uploads(request)
        if not files:
            raise InputError("the multipart body holds no file; send one with curl -F file=@photo.jpg")
    else:
        body = await request.body()
        files, names = [body], ["the body"]
        if not body:
            raise InputError("the request has no body; send an image (curl --data-binary @photo.jpg) or -F file=@...")
    check_item_count(len(files))
    request.state.items = len(files)
    return _embeddings_answer(state, await state.upstream.embed("image", files, names))


async def search(request: Any, state: _State) -> Any:
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    searcher = state.options.searcher
    if searcher is None:
        raise Refused(404, "this server has no index; start it with clipexport serve ARTIFACT --index INDEX_DIR")
    if _is_multipart(request):
        files, names, fields = await _uploads(request)
        if len(files) + ("text" in fields) != 1:
            raise InputError("send one query: a text field or one image file")
        k = parse_k(fields.get("k", min(DEFAULT_K, searcher.rows)), searcher.rows)
        text, image = fields.get("text"), (ImageSource(data=files[0]) if files else None)
        name = names[0] if files else "text"
    else:
        parsed = parse_search_request(await _json(request), searcher.rows, state.options.allow_url_fetch)
        k, text, image, name = parsed.k, parsed.text, parsed.image, "image" if parsed.image else "text"
    request.state.items = 1
    if text is not None:
        vector = await state.embed_texts([text], ["text"])
    else:
        vector = await state.embed_images([image], [name])
    hits = (await run_in_threadpool(searcher.search, vector, k))[0]
    rows = [hit.row for hit in hits]
    metadata = (
        await run_in_threadpool(state.options.dataset.row_metadata, rows) if state.options.dataset else [{}] * len(rows)
    )
    results = []
    for hit, meta in zip(hits, metadata):
        meta = {key: value for key, value in meta.items() if key != "id"}
        item = {"id": hit.id, "score": round(hit.score, 6), "row": hit.row, "metadata": meta}
        if state.options.image_root is not None:
            item["image"] = f"/image/{hit.row}"
        results.append(item)
    return JSONResponse(
        {"query": "text" if text is not None else "image", "k": k, "results": results, "notes": searcher.notes}
    )


def image_path(root: Path, id_: str) -> Path:
    """The file a result's id names, if it is a regular file under `root` (the id resolved against
    it when relative; symlinks followed, and the file they reach must be under `root` too)."""
    from clipexport.inputs import regular_file

    candidate = Path(id_)
    candidate = candidate if candidate.is_absolute() else root / candidate
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise Refused(404, "the image is not there") from None
    if not resolved.is_relative_to(root.resolve()):
        raise Refused(403, "the image is outside --image-root; the server shows only files under it")
    try:
        regular_file(resolved)
    except InputError as exc:
        raise Refused(404, str(exc)) from None
    return resolved


async def image(request: Any, state: _State) -> Any:
    from starlette.responses import FileResponse

    root, searcher = state.options.image_root, state.options.searcher
    if root is None or searcher is None:
        raise Refused(404, "this server shows no images; start it with --index INDEX_DIR --image-root FOLDER")
    row = request.path_params["row"]
    if not 0 <= row < searcher.rows:
        raise Refused(404, f"row {row} is outside the index's {searcher.rows} rows")
    path = image_path(root, searcher.ids[row])
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not kind.startswith("image/"):
        raise Refused(403, "the row's file is not an image")
    return FileResponse(path, media_type=kind, headers={"X-Content-Type-Options": "nosniff"})


async def page(request: Any, state: _State) -> Any:
    from starlette.responses import HTMLResponse

    if state.options.searcher is None:
        raise Refused(404, "no search page: this server has no index (start it with --index INDEX_DIR)")
    return HTMLResponse(state.page)


async def health(request: Any, state: _State) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"status": "live"})


async def ready(request: Any, state: _State) -> Any:
    from starlette.responses import JSONResponse

    models = await state.upstream.ready()
    body = {"ready": models, "models": [f"{state.options.model}_image", f"{state.options.model}_text"]}
    if state.options.searcher is not None:
        body["index_rows"] = state.options.searcher.rows
    return JSONResponse(body, 200 if models else 503)


async def metrics(request: Any, state: _State) -> Any:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.responses import Response

    return Response(generate_latest(request.app.state.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def kserve(request: Any, state: _State) -> Any:
    """/v2/...: parsed here, forwarded as a request of our own framing."""
    path, query = request.url.path, request.url.query
    if request.method in ("GET", "HEAD"):
        answer = await state.upstream.forward("GET", path, query, b"", {})
        if request.method == "HEAD":
            answer.body = b""
        return answer
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise Refused(415, "compressed request bodies are not accepted; send the body uncompressed")
    if _is_multipart(request):
        raise Refused(415, "a multipart body is not KServe v2; send its JSON (inputs: name, shape, datatype, data)")
    body = await request.body()
    declared = request.headers.get("inference-header-content-length")
    if declared is not None:
        if not declared.strip().isdigit() or int(declared) > len(body):
            raise InputError(
                f"Inference-Header-Content-Length {declared[:20]!r} does not fit the {len(body)}-byte body"
            )
        head, tail = body[: int(declared)], body[int(declared) :]
    else:
        head, tail = body, b""
    if not head.strip():
        raise InputError(
            "the request has no body; send the KServe v2 JSON (inputs: name, shape, datatype, data)"
            if path.endswith("/infer")
            else "the request has no body; send JSON"
        )
    try:
        parsed = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"the body is not KServe v2 JSON ({first_line(exc, 120)})") from None
    if not isinstance(parsed, dict):
        raise InputError("the body must be a KServe v2 JSON object (inputs: name, shape, datatype, data)")
    framed = json.dumps(parsed, separators=(",", ":")).encode()
    if path.endswith("/infer"):
        request.state.items = _kserve_items(parsed)
    headers = {"Content-Type": "application/json"}
    if tail:
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(framed))}
    return await state.upstream.forward("POST", path, query, framed + tail, headers)


def _kserve_items(request: dict[str, Any]) -> int | None:
    """Items in a KServe inference request: its first input's first dimension (Triton checks the rest)."""
    inputs = request.get("inputs")
    shape = inputs[0].get("shape") if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) else None
    return shape[0] if isinstance(shape, list) and shape and isinstance(shape[0], int) and shape[0] > 0 else None


def build_app(options: AppOptions) -> Any:
    """The ASGI application (its lifespan opens and closes the clients to Triton)."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.routing import Route

    upstream = Upstream(options)
    page_html = package_data("serve", "index.html").read_text(encoding="utf-8") if options.searcher else ""
    state = _State(options, upstream, page_html.replace("{{MODEL}}", options.model))
    routes = [
        Route("/v1/embeddings", _route(v1_embeddings, state), methods=["POST"]),
        Route("/v1/models", _route(v1_models, state), methods=["GET"]),
        Route("/embed/text", _route(embed_text, state), methods=["POST"]),
        Route("/embed/image", _route(embed_image, state), methods=["POST"]),
        Route("/search", _route(search, state), methods=["POST"]),
        Route("/image/{row:int}", _route(image, state), methods=["GET", "HEAD"]),
        Route("/", _route(page, state), methods=["GET", "HEAD"]),
        Route("/health", _route(health, state), methods=["GET", "HEAD"]),
        Route("/ready", _route(ready, state), methods=["GET", "HEAD"]),
        Route("/metrics", _route(metrics, state), methods=["GET"]),
        Route("/v2", _route(kserve, state), methods=["GET", "HEAD", "POST"]),
        Route("/v2/{rest:path}", _route(kserve, state), methods=["GET", "HEAD", "POST"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await upstream.open()
        try:
            yield
        finally:
            await upstream.close()

    app = Starlette(routes=routes, lifespan=lifespan)

    async def not_found(request: Any, exc: Any) -> Any:
        status = getattr(exc, "status_code", 500)
        message = {404: f"no route {request.url.path[:200]}", 405: f"{request.method} is not allowed here"}.get(
            status, str(getattr(exc, "detail", exc))
        )
        return _error_response(request.url.path, status, message)

    async def refused(request: Any, exc: Refused) -> Any:  # raised by the body bound, outside a route's handler
        return _error_response(request.url.path, exc.status, exc.message)

    from starlette.exceptions import HTTPException

    app.add_exception_handler(HTTPException, not_found)
    app.add_exception_handler(Refused, refused)
    bounded = BoundedBody(app, options.max_request_bytes)
    counted = Metrics(bounded, routes)
    app.state.metrics = counted
    return counted
