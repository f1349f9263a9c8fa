"""`clipexport serve`: a real NVIDIA Triton Inference Server on this machine.

The server is the `tritonserver` that NVIDIA's PyTriton wheel (`nvidia-pytriton`) bundles, with
its python backend; no container. clipexport writes a model repository into a private workspace:
`<name>_image` (encoded image bytes -> embedding) and `<name>_text` (UTF-8 text -> embedding),
python-backend models running `clipexport.runtime` on the artifact in place, with Triton's
dynamic batching. It starts the server on the requested ports (KServe v2 over HTTP and gRPC,
`/v2/health/ready`, Prometheus metrics), waits until the models are ready, and on Ctrl-C or
SIGTERM stops it and removes the workspace. Clients reach it through `front.Front`: HTTP is the
Starlette app of `app.py` (OpenAI-compatible and REST embeddings, search, KServe v2 re-framed),
gRPC a forwarder bounding every message; tritonserver's own HTTP and gRPC listen on private
loopback ports.

The workspace (`$TMPDIR/clipexport-serve-<pid>-*`) and the python backend's shared-memory regions
(`/dev/shm/clipexport<pid>_*`) carry the pid, so a start after a `kill -9` removes what the dead
run left, as export's staging folders are cleaned.

The python backend's stub embeds the shared libpython the dynamic linker finds. It must be the
running interpreter's own: a stub that loads another build of the same Python version fails in
the first model with errors like "'_thread.RLock' object has no attribute '_recursion_count'".
We put this interpreter's LIBDIR first on the library path and check, before starting, which
libpython the stub resolves to.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clipexport._deps import require
from clipexport.artifact.manifest import Tower, read_manifest
from clipexport.artifact.precision import Precision
from clipexport.errors import ClipExportError, DeviceUnavailableError, InputError, MissingDependencyError, StepFailed
from clipexport.files import fresh_staging_dir, remove_stale_staging
from clipexport.inputs import DEFAULT_MAX_REQUEST_BYTES, FETCH_TIMEOUT_S, served_name
from clipexport.progress import Progress, silent
from clipexport.runtime.backends import BackendKind
from clipexport.serving.pbtxt import Batching, ModelConfig, Tensor
from clipexport.serving.repository import DEFAULT_QUEUE_DELAY_US, write_python_model

SERVE_HINT = (
    "pip install 'clipexport[serve]' (NVIDIA PyTriton, which needs numpy<2) into a Python whose shared "
    "libpython matches it, e.g. Debian's: /usr/bin/python3.11 -m venv .venv-serve && "
    ".venv-serve/bin/pip install 'clipexport[serve]'"
)
READY_TIMEOUT_S = 180.0  # model load: two ONNX Runtime sessions per instance
STOP_TIMEOUT_S = 30.0
WORKSPACE_PREFIX = "clipexport-serve-"
MIN_REQUEST_BYTES = 64 * 1024  # below this even a small JPEG would be refused
SHM_PREFIX = "clipexport"  # + pid + "_": the python backend's shared-memory regions in /dev/shm


class ServerFailed(StepFailed):
    """tritonserver exited or never became ready."""


@dataclass(frozen=True)
class ServeOptions:
    artifact: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    precision: Precision = Precision.FP32
    backend: BackendKind = BackendKind.ONNXRUNTIME
    max_batch: int = 64
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    name: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    index: Path | None = None  # serve searches over this index (POST /search, the page at /)
    image_root: Path | None = None  # the search page shows result images from under this folder only
    allow_url_fetch: bool = False  # image inputs may be http(s) URLs the server fetches
    url_fetch_timeout_s: float = FETCH_TIMEOUT_S
    url_fetch_private: bool = False  # ... from loopback / private / link-local addresses too

    def __post_init__(self) -> None:  # Python callers may pass names: parsed here, once
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        object.__setattr__(self, "backend", BackendKind.parse(self.backend))


def client_host(host: str) -> str:
    """The address a client on this machine uses for a server listening on `host` (0.0.0.0 and
    :: listen everywhere, so loopback reaches them)."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def serve(
    options: ServeOptions, progress: Progress = silent, on_ready: Callable[[list[str]], None] | None = None
) -> None:
    """Run the server until interrupted (KeyboardInterrupt, which SIGTERM also raises in the CLI)
    or until tritonserver exits; the workspace is removed either way."""
    artifact = Path(options.artifact).resolve()
    manifest = read_manifest(artifact)
    _check(options, manifest)
    _check_artifact(artifact, manifest, options)
    dist = _tritonserver_dist()
    searcher, dataset = _open_index(options, artifact)
    name = served_name(options.name, artifact)
    _remove_stale_shm(progress)
    workspace = fresh_staging_dir(
        Path(tempfile.gettempdir()), WORKSPACE_PREFIX, "clipexport serve", "set TMPDIR to a writable folder", progress
    )
    process = None
    front = None
    try:
        server_dir = _prepare_server(dist, workspace)
        env = _server_env(dist)
        check_python_backend(server_dir, env)
        repo = workspace / "models"
        models = _write_serving_models(repo, artifact, name, manifest, options)
        internal_http, internal_grpc = free_local_ports(
            2, avoid={options.http_port, options.grpc_port, options.metrics_port}
        )
        command = [
            str(server_dir / "bin" / "tritonserver"),
            f"--model-repository={repo}",
            f"--backend-directory={server_dir / 'backends'}",
            f"--backend-config=python,shm-region-prefix-name={SHM_PREFIX}{os.getpid()}_",
            "--http-address=127.0.0.1",
            f"--http-port={internal_http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={internal_grpc}",
            f"--metrics-address={options.host}",
            f"--metrics-port={options.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={int(STOP_TIMEOUT_S)}",
        ]
        log = (workspace / "tritonserver.log").open("wb")
        progress(f"starting tritonserver ({len(models)} models: {', '.join(models)}; workspace {workspace})")
        # cwd: the workspace, so the python models never import a `clipexport` folder from the caller's directory.
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(workspace), preexec_fn=_die_with_parent
        )
        from clipexport.serving.app import build_app
        from clipexport.serving.front import Front, FrontOptions, PortTaken

        app = build_app(
            _app_options(options, artifact, manifest, name, (internal_http, internal_grpc), searcher, dataset)
        )
        # After tritonserver's start (a fork): no fork while the front's gRPC threads run.
        front = Front(
            app,
            FrontOptions(options.host, options.http_port, options.grpc_port, internal_grpc, options.max_request_bytes),
        )
        try:
            front.start()
        except PortTaken as exc:
            raise InputError(
                f"{exc.option} {exc.port} on {options.host} is not free ({exc.why}); choose a free port with {exc.option}"
            ) from None
        _wait_ready(process, internal_http, workspace / "tritonserver.log")
        if on_ready:
            on_ready(models)
        code = process.wait()
        raise ServerFailed(
            f"{_how_it_ended(process.pid, code)}; its last log line: {_last_error(workspace / 'tritonserver.log')}"
        )
    finally:
        if front is not None:
            front.stop()  # no new requests; those in flight are answered (Triton still runs)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S + 5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(workspace, ignore_errors=True)


def _open_index(options: ServeOptions, artifact: Path) -> tuple[object, object]:
    """--index: the Searcher (the checks `search` makes: files against their sha256, the dataset
    unchanged, the artifact's dim) and the dataset for the rows' metadata (None where it is gone)."""
    if options.index is None:
        if options.image_root is not None:
            raise InputError("--image-root shows the images of search results: it needs --index INDEX_DIR")
        return None, None
    from clipexport.bulk.dataset import read_embeddings
    from clipexport.search.searcher import Searcher

    if options.image_root is not None and not Path(options.image_root).is_dir():  # before the index's reads
        raise InputError(f"--image-root {options.image_root} is not a folder")
    searcher = Searcher(options.index, artifact=artifact, precision=options.precision, backend=options.backend)
    searcher.check_artifact()
    dataset = None
    recorded = searcher.manifest.get("dataset")
    if recorded and Path(recorded).is_dir():
        dataset = read_embeddings(Path(recorded), what="the index's dataset")
    return searcher, dataset


def _app_options(
    options: ServeOptions, artifact: Path, manifest, name: str, upstream: tuple[int, int], searcher, dataset
):
    from clipexport.runtime.hf_tokenizer import load_tokenizer
    from clipexport.serving.app import AppOptions

    return AppOptions(
        model=name,
        dim=manifest.embed_dim,
        precision=options.precision.value,
        upstream_http=upstream[0],
        upstream_grpc=upstream[1],
        max_batch=options.max_batch,
        max_request_bytes=options.max_request_bytes,
        allow_url_fetch=options.allow_url_fetch,
        url_fetch_timeout_s=options.url_fetch_timeout_s,
        url_fetch_private=options.url_fetch_private,
        tokenizer=load_tokenizer(artifact, manifest.tokenizer),
        pad_id=manifest.tokenizer.pad_id,
        searcher=searcher,
        dataset=dataset,
        image_root=Path(options.image_root).resolve() if options.image_root is not None else None,
    )


def _how_it_ended(pid: int, code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"tritonserver (pid {pid}) was killed by {name}"
    return f"tritonserver (pid {pid}) exited with status {code}"


def _check_artifact(artifact: Path, manifest, options: ServeOptions) -> None:
    """What the python models would fail on, checked here where the error keeps its one line and
    exit code: the graphs against their sha256, the backend's libraries, the tokenizer."""
    from clipexport.artifact.manifest import check_graph_files
    from clipexport.runtime.backends import require_available
    from clipexport.runtime.hf_tokenizer import check_tokenizer_file

    require_available(options.backend)
    for tower in Tower:
        check_graph_files(artifact, manifest.tower(tower).graph(options.precision))
    if manifest.tokenizer.file:  # the file is what can be damaged; the parent needs no tokenizer of its own
        check_tokenizer_file(artifact, manifest.tokenizer)


def _remove_stale_shm(progress: Progress, root: Path = Path("/dev/shm")) -> None:
    """Shared-memory regions of a serve that was killed (its pid is gone)."""
    for region in remove_stale_staging(root, SHM_PREFIX, separator="_", folders=False):
        progress(f"removed {region}, left by an interrupted clipexport serve")


def free_local_ports(count: int, host: str = "127.0.0.1", avoid: set[int] = frozenset()) -> list[int]:
    """`count` distinct ports the OS has free right now (for --http-port and friends in tests and
    benchmarks: several servers side by side), none of them in `avoid`: ports chosen but not yet
    bound look free to the OS, which may hand the same one out again (tritonserver given one port
    for HTTP and gRPC refuses to start)."""
    sockets: list[socket.socket] = []
    try:
        while len([s for s in sockets if s.getsockname()[1] not in avoid]) < count:
            sockets.append(socket.socket())
            sockets[-1].bind((host, 0))
        return [s.getsockname()[1] for s in sockets if s.getsockname()[1] not in avoid][:count]
    finally:
        for s in sockets:
            s.close()


def _check(options: ServeOptions, manifest) -> None:
    for port, what in (
        (options.http_port, "--http-port"),
        (options.grpc_port, "--grpc-port"),
        (options.metrics_port, "--metrics-port"),
    ):
        if not 0 < port < 65536:
            raise InputError(f"{what} {port} is not a port number (1-65535)")
    if len({options.http_port, options.grpc_port, options.metrics_port}) != 3:
        raise InputError("--http-port, --grpc-port and --metrics-port must differ")
    for port, what in (
        (options.http_port, "--http-port"),
        (options.grpc_port, "--grpc-port"),
        (options.metrics_port, "--metrics-port"),
    ):
        # Before starting: another server on the port would answer our readiness probe.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((options.host, port))
            except OSError as exc:
                raise InputError(
                    f"{what} {port} on {options.host} is not free ({exc.strerror}); another server "
                    f"(a second clipexport serve?) uses it: choose a free port with {what}"
                ) from None
    if options.max_batch < 1 or options.instances < 1 or options.max_queue_delay_us < 0:
        raise InputError("--max-batch and --instances must be at least 1, --max-queue-delay-us at least 0")
    if options.url_fetch_private and not options.allow_url_fetch:
        raise InputError("--url-fetch-private widens --allow-url-fetch: pass both, or neither")
    if not 0 < options.url_fetch_timeout_s <= 600:
        raise InputError(f"--url-fetch-timeout must be in (0, 600] seconds, got {options.url_fetch_timeout_s}")
    if options.max_request_bytes < MIN_REQUEST_BYTES:
        raise InputError(
            f"--max-request-bytes {options.max_request_bytes} is too small to carry an image; "
            f"use at least {MIN_REQUEST_BYTES}"
        )
    for tower in Tower:
        if options.precision not in manifest.tower(tower).graphs:
            raise InputError(
                f"no {options.precision.value} graph for the {tower.value} tower; create it with: "
                f"clipexport quantize ARTIFACT --precision {options.precision.value}"
            )
    if manifest.tokenizer.kind not in ("clip_bpe", "hf_json"):
        raise InputError(
            f"the artifact's tokenizer ({manifest.tokenizer.kind}) has no torch-free implementation; "
            "re-export with a tokenizer that has a tokenizer.json"
        )


def _tritonserver_dist() -> Path:
    try:
        require("pytriton", "serving on Triton")
    except MissingDependencyError:
        raise MissingDependencyError(
            f"clipexport serve needs NVIDIA PyTriton's bundled tritonserver: {SERVE_HINT}"
        ) from None
    from pytriton.triton import TRITONSERVER_DIST_DIR

    return Path(TRITONSERVER_DIST_DIR)


def _prepare_server(dist: Path, workspace: Path) -> Path:
    """tritonserver and its python backend, with the stub for this Python version (what PyTriton does)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise DeviceUnavailableError(f"PyTriton has no python-backend stub for Python {version}; use Python 3.8-3.13")
    server_dir = workspace / "tritonserver"
    shutil.copytree(dist, server_dir, ignore=shutil.ignore_patterns("python_backend_stubs", "__pycache__"))
    shutil.copy2(stub, server_dir / "backends" / "python" / "triton_python_backend_stub")
    return server_dir


def _server_env(dist: Path) -> dict[str, str]:
    libs = dist.parent.parent / "nvidia_pytriton.libs"
    own = sysconfig.get_config_var("LIBDIR") or ""
    env = os.environ.copy()
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (own, str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    # The stub's embedded Python finds this environment (its site-packages: clipexport, numpy, ...) through PATH.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def check_python_backend(server_dir: Path, env: dict[str, str]) -> None:
    """The libpython the python backend's stub will load must be this interpreter's build."""
    stub = server_dir / "backends" / "python" / "triton_python_backend_stub"
    try:
        out = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, env=env, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return  # no ldd: the first model load reports a mismatch itself
    match = re.search(r"libpython[\d.]+\.so[\d.]*\s+=>\s+(\S+)", out)
    if not match or match.group(1) == "not":
        raise DeviceUnavailableError(
            f"the python backend finds no shared libpython for Python "
            f"{sys.version_info[0]}.{sys.version_info[1]}; {SERVE_HINT}"
        )
    found = _libpython_version(Path(match.group(1)))
    running = sys.version.split()[0]
    if found is not None and found != running:
        raise DeviceUnavailableError(
            f"this Python ({running}, {sys.executable}) is not the build whose shared libpython Triton's python "
            f"backend loads ({match.group(1)} is {found}), so models would fail to start; {SERVE_HINT}"
        )


def _libpython_version(path: Path) -> str | None:
    """The version string compiled into a libpython ("3.11.2"), read from the file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    found = re.search(rb"(\d+\.\d+\.\d+)(?:[a-z]+\d*)? \((?:main|default|tags/[^,]*)?[^)]*\) \[GCC", data)
    return found.group(1).decode() if found else None


def _write_serving_models(repo: Path, artifact: Path, name: str, manifest, options: ServeOptions) -> list[str]:
    batching = Batching(options.max_batch, (), options.max_queue_delay_us)
    parameters = {
        "artifact": str(artifact),
        "precision": options.precision.value,
        "backend": options.backend.value,
        "max_request_bytes": str(options.max_request_bytes),
    }
    names = []
    for suffix, tensor, model_class in (("image", "IMAGE", "ImageEmbedModel"), ("text", "TEXT", "TextEmbedModel")):
        config = ModelConfig(
            f"{name}_{suffix}",
            [Tensor(tensor, "bytes", (1,))],
            [Tensor("EMBEDDING", "float32", (manifest.embed_dim,))],
            options.max_batch,
            backend="python",
            batching=batching,
            instance_kind="KIND_CPU",
            instances=options.instances,
            parameters=parameters,
        )
        write_python_model(repo, config, model_class)
        names.append(config.name)
    return names


def _wait_ready(process: subprocess.Popen, port: int, log: Path) -> None:
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            # A crash loses the log's buffered tail: how it ended says what the log may not.
            raise _load_failure(log) or ServerFailed(
                f"{_how_it_ended(process.pid, process.returncode)} while starting; its last log line: {_last_error(log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise ServerFailed(f"tritonserver was not ready after {READY_TIMEOUT_S:.0f} s: {_last_error(log)}")


def _load_failure(log: Path) -> ClipExportError | None:
    """A python model that failed to initialize raised one of our errors: the same line and exit
    code as in-process (the model writes `clipexport-error: <Class>: <message>` to the log)."""
    import clipexport.errors as errors

    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    found = re.search(r"clipexport-error: (\w+): ([^\n\"]+)", text)
    if not found:
        return None
    kind = getattr(errors, found.group(1), None)
    if not (isinstance(kind, type) and issubclass(kind, ClipExportError)):
        kind = ServerFailed
    return kind(found.group(2).strip())


_GLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")
_GLOG_ERROR = re.compile(r"^[EF]\d{4} \d\d:\d\d:\d\d")


def _last_error(log: Path) -> str:
    """The most telling line of the server's log: the last error, else the last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    # Triton logs in glog's format: `E1204 15:01:02.123 ...` is an error, `I...` / `W...` info and
    # warnings, whose text may well say "error" (a config dump, a start-up notice): the last
    # error-level line first; lines outside the log format (a Python traceback's last line) next.
    errors = [line for line in lines if _GLOG_ERROR.match(line)]
    if not errors:
        errors = [
            line
            for line in lines
            if not _GLOG_LINE.match(line) and ("error" in line.lower() or "failed" in line.lower())
        ]
    picked = (errors or lines or ["no output"])[-1]
    if any(line.startswith("Usage: tritonserver") for line in lines):
        picked = lines[-1]  # an option it refused: its usage text (whose help says "error"), then why
    if "Address already in use" in "\n".join(lines):
        picked = "a port is already in use; choose free ones with --http-port / --grpc-port / --metrics-port"
    return picked[:400]


def _die_with_parent() -> None:
    """The server goes when `clipexport serve` goes, even on SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    from clipexport.process import die_with_parent

    die_with_parent(signal.SIGTERM)
