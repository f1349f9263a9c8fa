"""The client-facing listeners of `clipexport serve`, on one event loop in one thread:

- HTTP: uvicorn running `app.build_app` (HTTP/1.1 keep-alive, pipelining, chunked bodies, HEAD and
  `Expect: 100-continue` are its business; header size bound MAX_HEAD_BYTES; at most
  MAX_CONNECTIONS connections and requests at once, past which new requests get 503; an idle
  keep-alive connection is closed after KEEP_ALIVE_S);
- gRPC: a small forwarder to tritonserver's loopback gRPC port that refuses any message over the
  request bound before Triton sees it (grpc's own `max_receive_message_length`: RESOURCE_EXHAUSTED),
  since tritonserver has no such option and one 400 MB message left it at 1 GB of memory. Messages
  pass as bytes (Triton parses them); every method of KServe's GRPCInferenceService is unary
  except the bidirectional ModelStreamInfer.

The sockets are bound in `start()`, so a taken port is an OSError there, before anything runs.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from typing import Any

MAX_HEAD_BYTES = 64 * 1024  # request line + headers
MAX_CONNECTIONS = 1024  # connections + requests in flight; more get 503 (each slow client costs one)
KEEP_ALIVE_S = 30
GRPC_OVERHEAD_BYTES = 64 * 1024  # protobuf framing beside the items: the python models word the bound itself
UPSTREAM_TIMEOUT_S = 600.0
STREAMING = ("/inference.GRPCInferenceService/ModelStreamInfer",)


@dataclass(frozen=True)
class FrontOptions:
    host: str
    http_port: int
    grpc_port: int
    upstream_grpc: int  # tritonserver's loopback gRPC port
    max_request_bytes: int


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Forward:
    """A grpc generic handler: every method forwarded as bytes to the same method upstream."""

    def __init__(self, channel: Any):
        self.channel = channel

    def service(self, details: Any) -> Any:
        import grpc

        method = details.method
        if method in STREAMING:
            upstream = self.channel.stream_stream(method)

            async def stream(requests: Any, context: Any) -> Any:
                call = upstream(requests, timeout=UPSTREAM_TIMEOUT_S)
                try:
                    async for answer in call:
                        yield answer
                except grpc.aio.AioRpcError as exc:
                    await context.abort(exc.code(), exc.details() or "")

            return grpc.stream_stream_rpc_method_handler(stream)
        upstream = self.channel.unary_unary(method)

        async def unary(request: bytes, context: Any) -> bytes:
            remaining = context.time_remaining()
            try:
                return await upstream(request, timeout=min(remaining or UPSTREAM_TIMEOUT_S, UPSTREAM_TIMEOUT_S))
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")

        return grpc.unary_unary_rpc_method_handler(unary)


class Front:
    """`start()` binds both ports (OSError naming the port when one is taken) and serves from a
    thread; `stop()` closes the listeners, letting requests in flight finish."""

    def __init__(self, app: Any, options: FrontOptions):
        self.app, self.options = app, options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="clipexport-front", daemon=True)
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._socket: socket.socket | None = None

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.options.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are
        # TCP; with proto 0 every keep-alive response waited ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.options.host, self.options.http_port))
            sock.listen(2048)
        except OSError as exc:
            sock.close()
            raise PortTaken("--http-port", self.options.http_port, exc.strerror or str(exc)) from None
        sock.setblocking(False)
        self._socket = sock
        self._thread.start()
        self._started.wait(60)
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start() when it happens before the listeners run
            self._failure = self._failure or exc
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        import grpc
        import uvicorn

        self._stop = asyncio.Event()
        limit = self.options.max_request_bytes + GRPC_OVERHEAD_BYTES
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{self.options.upstream_grpc}",
            options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", -1)],
        )
        grpc_server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a second server on the port is refused, not load-balanced
            ]
        )
        grpc_server.add_generic_rpc_handlers((_Forward(channel),))
        try:
            bound = grpc_server.add_insecure_port(_grpc_address(self.options.host, self.options.grpc_port))
        except RuntimeError as exc:
            bound, why = 0, str(exc)
        else:
            why = "in use"
        if not bound:
            self._failure = PortTaken("--grpc-port", self.options.grpc_port, why)
            self._started.set()
            await channel.close()
            return
        await grpc_server.start()
        config = uvicorn.Config(
            self.app,
            lifespan="on",
            log_level="warning",
            access_log=False,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=KEEP_ALIVE_S,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            server_header=False,
        )
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve(sockets=[self._socket]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if serving.done():
            self._failure = RuntimeError(f"the HTTP front did not start: {serving.exception() or 'it stopped'}")
            self._started.set()
            await grpc_server.stop(0)
            return
        self._started.set()
        await self._stop.wait()
        server.should_exit = True
        await asyncio.gather(serving, grpc_server.stop(5), return_exceptions=True)
        await channel.close()

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
        if self._socket is not None:
            self._socket.close()


class PortTaken(OSError):
    def __init__(self, option: str, port: int, why: str):
        super().__init__(f"{option} {port} is not free ({why})")
        self.option, self.port, self.why = option, port, why
