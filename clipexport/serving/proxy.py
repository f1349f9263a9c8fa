"""The HTTP front of `clipexport serve`: a small streaming reverse proxy between clients and
tritonserver's HTTP endpoint, which listens on a private loopback port.

It exists because two requests can take the bundled tritonserver down or hold it, and Triton
has no option against either (`tritonserver --help` of PyTriton 0.7's build lists none):

- a body sent as `application/x-www-form-urlencoded` (urllib's default) is parsed by Triton's
  HTTP library as form fields; a 5 MB one crashes the whole server with SIGSEGV. The proxy answers
  415 and names the fix. `multipart/form-data` likewise;
- a request has no size bound (a 50 MB text held the text model for 24 s). The proxy answers 413
  past `--max-request-bytes`, before reading the body.

And it puts two of Triton's answers right: an inference request with an empty body (which Triton
runs as if it held an item) is 400, and the request-JSON parse errors Triton reports as 500 are
the client's, so 400.

Everything else passes through byte for byte (KServe v2 JSON, the binary-tensor extension,
health, metadata, metrics-free endpoints), one upstream connection per client connection, with
keep-alive. Stalled or slow clients cost a coroutine each, never another client's time.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass

from clipexport.inputs import too_large

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; larger is 431
HEAD_TIMEOUT_S = 60.0  # a client that sends no complete request head in this long is dropped
UPSTREAM_TIMEOUT_S = 600.0  # a request Triton has not answered in this long fails with 504
CHUNK = 256 * 1024
DRAIN_BYTES, DRAIN_TIMEOUT_S = 256 * 1024 * 1024, 10.0  # after a refusal: how much of the body we read and drop
# Triton's HTTP frontend answers 500 for these, but each says the request body was malformed.
CLIENT_ERROR_PREFIXES = ("failed to parse the request JSON", "Unable to parse", "unable to parse")
REFUSED_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@dataclass(frozen=True)
class ProxyOptions:
    host: str
    port: int
    upstream_port: int
    max_request_bytes: int


class _Refused(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class HttpFront:
    """Runs the proxy on its own event loop thread: `start()` binds (raising OSError when the port
    is taken), `stop()` closes the listener and every connection."""

    def __init__(self, options: ProxyOptions):
        self.options = options
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="clipexport-http-front", daemon=True)

    def start(self) -> None:
        self._server = self._loop.run_until_complete(
            asyncio.start_server(
                self._client, self.options.host, self.options.port, limit=MAX_HEAD_BYTES, reuse_address=True
            )
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return

        async def close() -> None:
            self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await _refuse(
                        writer,
                        _Refused(
                            431, "Request Header Fields Too Large", f"request headers over {MAX_HEAD_BYTES} bytes"
                        ),
                    )
                    return
                try:
                    method, headers = _parse_head(head)
                    length, chunked = self._check(headers)
                    if method == "POST" and _is_infer(head) and not length and not chunked:
                        raise _Refused(
                            400,
                            "Bad Request",
                            "the inference request has no body; send the KServe v2 "
                            "JSON (inputs: name, shape, datatype, data)",
                        )
                except _Refused as refused:
                    await _refuse(writer, refused)
                    await _drain(reader)  # a client still sending its body would see a reset, not our answer
                    return
                if upstream is None or upstream[1].is_closing():
                    upstream = await asyncio.open_connection(
                        "127.0.0.1", self.options.upstream_port, limit=MAX_HEAD_BYTES
                    )
                try:
                    keep = await asyncio.wait_for(
                        self._forward(reader, writer, upstream, head, method, headers, length, chunked),
                        UPSTREAM_TIMEOUT_S,
                    )
                except _Refused as refused:
                    await _refuse(writer, refused)
                    await _drain(reader)
                    return
                except asyncio.TimeoutError:
                    await _refuse(writer, _Refused(504, "Gateway Timeout", "the server did not answer in time"))
                    return
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            for stream in (writer, upstream[1] if upstream else None):
                if stream is not None:
                    stream.close()

    def _check(self, headers: dict[str, str]) -> tuple[int, bool]:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in REFUSED_TYPES:
            raise _Refused(
                415,
                "Unsupported Media Type",
                f"request bodies sent as {content_type} are refused (the server would parse them as form "
                "fields); send the KServe v2 JSON with Content-Type: application/json, or the binary "
                "tensor extension with application/octet-stream",
            )
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            raise _Refused(400, "Bad Request", "Content-Length is not a number") from None
        if length < 0:
            raise _Refused(400, "Bad Request", "Content-Length is negative")
        if length > self.options.max_request_bytes:
            raise _Refused(
                413, "Payload Too Large", too_large(length, self.options.max_request_bytes, "the request body")
            )
        return length, chunked

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        head: bytes,
        method: str,
        headers: dict[str, str],
        length: int,
        chunked: bool,
    ) -> bool:
        up_reader, up_writer = upstream
        if chunked:  # Triton gets a plain Content-Length body: read it whole, counting
            body = await self._read_chunked(reader)
            head = _rewrite_length(head, len(body))
            up_writer.write(head + body)
        else:
            up_writer.write(head)
            await _copy(reader, up_writer, length, "client")
        await up_writer.drain()
        response_head = await up_reader.readuntil(b"\r\n\r\n")
        _, response_headers = _parse_head(response_head, response=True)
        if response_head.startswith(b"HTTP/1.1 500") and int(response_headers.get("content-length", "0") or 0) < 65536:
            body = await up_reader.readexactly(int(response_headers.get("content-length", "0") or 0))
            if _client_error(body):
                response_head = response_head.replace(
                    b"HTTP/1.1 500 Internal Server Error", b"HTTP/1.1 400 Bad Request", 1
                )
            writer.write(response_head + body)
        else:
            writer.write(response_head)
            await _relay_body(up_reader, writer, response_headers, method)
        await writer.drain()
        closing = "close" in (headers.get("connection", "") + response_headers.get("connection", "")).lower()
        return not closing

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _Refused(400, "Bad Request", "malformed chunked body") from None
            if size == 0:  # then optional trailer lines, then an empty line
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return bytes(body)
            if len(body) + size > self.options.max_request_bytes:
                raise _Refused(
                    413,
                    "Payload Too Large",
                    too_large(len(body) + size, self.options.max_request_bytes, "the request body"),
                )
            body += await reader.readexactly(size)
            await reader.readexactly(2)


def _is_infer(head: bytes) -> bool:
    path = head.split(b"\r\n", 1)[0].split(b" ")[1] if b" " in head else b""
    return path.split(b"?")[0].rstrip(b"/").endswith(b"/infer")


def _client_error(body: bytes) -> bool:
    try:
        message = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        return False
    return isinstance(message, str) and message.startswith(CLIENT_ERROR_PREFIXES)


def _parse_head(head: bytes, response: bool = False) -> tuple[str, dict[str, str]]:
    try:
        lines = head.decode("latin-1").split("\r\n")
        first = lines[0].split(" ")
        if len(first) < 2 or (not response and len(first) != 3):
            raise ValueError(lines[0])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    except ValueError:
        raise _Refused(400, "Bad Request", "malformed HTTP request line or headers") from None
    return first[0].upper(), headers


def _rewrite_length(head: bytes, length: int) -> bytes:
    lines = [
        line
        for line in head.split(b"\r\n")
        if line and not line.lower().startswith((b"transfer-encoding:", b"content-length:"))
    ]
    return b"\r\n".join(lines + [b"Content-Length: %d" % length]) + b"\r\n\r\n"


async def _relay_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str], method: str
) -> None:
    if method == "HEAD":
        return
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            writer.write(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            writer.write(await reader.readexactly(size + 2))
            if size == 0:
                return
    await _copy(reader, writer, int(headers.get("content-length", "0") or 0), "upstream")


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, length: int, side: str) -> None:
    """`length` bytes from one stream to the other, CHUNK at a time, never buffering much more."""
    remaining = length
    while remaining:
        part = await reader.read(min(CHUNK, remaining))
        if not part:
            raise ConnectionError(f"{side} went away mid-body")
        writer.write(part)
        remaining -= len(part)
        if writer.transport.get_write_buffer_size() > 4 * CHUNK:
            await writer.drain()


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read and drop what the client still sends after a refusal, within DRAIN_BYTES / DRAIN_TIMEOUT_S."""
    dropped = 0
    try:
        while dropped < DRAIN_BYTES:
            part = await asyncio.wait_for(reader.read(CHUNK), DRAIN_TIMEOUT_S)
            if not part:
                return
            dropped += len(part)
    except (asyncio.TimeoutError, ConnectionError):
        return


async def _refuse(writer: asyncio.StreamWriter, refused: _Refused) -> None:
    body = json.dumps({"error": refused.message}).encode()
    writer.write(
        f"HTTP/1.1 {refused.status} {refused.reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    try:
        await writer.drain()
    except ConnectionError:
        pass
