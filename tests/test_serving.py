"""Serving: the generated Triton repository parses with Triton's own schema, and a real
tritonserver (NVIDIA PyTriton's bundle, CPU) serves the artifact over HTTP and gRPC, batches
concurrent requests, refuses bad requests one at a time, and stops cleanly on SIGTERM.

The server needs a Python with nvidia-pytriton and numpy<2: the `serve_python` fixture builds
`.venv-serve` (tests/serve_env.py) when it is missing, and skips only where this machine has no
suitable system Python. The module's server starts from a folder holding a `clipexport` folder (the
parent of a clone), which once made the package a namespace package."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from clipexport.runtime import ClipRuntime
from clipexport.serving.server import free_local_ports
from served import SERVER_MAX_ABS, Server, bomb, png

REPO = Path(__file__).resolve().parent.parent
MAX_REQUEST_BYTES = 2_000_000  # the module server's --max-request-bytes
TEXTS = ["a photo of a cat", "a diagram", "北京欢迎你", "a very long caption " * 30, "emoji 😎"]


# ---- the generated repository --------------------------------------------------------------------


def _parse(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_repository_configs_parse_with_tritons_schema(tiny_vit: Path, tmp_path: Path) -> None:
    from clipexport.serving.repository import InstanceKind, RepositoryOptions, write_repository

    repo = tmp_path / "repo"
    models = write_repository(
        RepositoryOptions(
            artifact=tiny_vit,
            output=repo,
            name="tiny",
            preferred_batch_sizes=(4, 16),
            instance_kind=InstanceKind.CPU,
            instances=2,
        )
    )
    assert set(models) == {
        f"tiny_{m}" for m in ("vision_tower", "text_tower", "preprocess", "tokenize", "image", "text")
    }
    configs = {m: _parse(repo / m / "config.pbtxt") for m in models}
    vision, text = configs["tiny_vision_tower"], configs["tiny_text_tower"]
    assert vision.platform == "onnxruntime_onnx" and vision.max_batch_size == 64
    assert list(vision.input[0].dims) == [3, 64, 64] and list(vision.dynamic_batching.preferred_batch_size) == [4, 16]
    assert vision.instance_group[0].count == 2 and (repo / "tiny_vision_tower" / "1" / "model.onnx").is_file()
    assert list(text.input[0].dims) == [-1]  # the variable-length text graph: the tokenize model buckets lengths
    assert configs["tiny_preprocess"].backend == "python"
    assert configs["tiny_tokenize"].parameters["buckets"].string_value == "16,32"
    steps = configs["tiny_image"].ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["tiny_preprocess", "tiny_vision_tower"]
    assert "docker run" in (repo / "README.md").read_text()


def test_tensorrt_repository_pins_the_engine_to_its_gpu(tiny_vit: Path, tmp_path: Path) -> None:
    """A (stand-in) built engine with its provenance: tensorrt_plan, the file pinned to the
    compute capability it was built for, max batch from the profile and never above it."""
    from clipexport.artifact.layout import engine_file
    from clipexport.artifact.provenance import EngineProvenance, write_sidecar
    from clipexport.errors import InputError
    from clipexport.files import sha256_file
    from clipexport.runtime.backends import BackendKind
    from clipexport.serving.repository import RepositoryOptions, write_repository

    artifact = tmp_path / "artifact"
    shutil.copytree(tiny_vit, artifact)
    for tower, name, shape in (("vision", "image", [3, 64, 64]), ("text", "input_ids", [77])):
        plan = artifact / engine_file(tower, "fp16")
        plan.parent.mkdir(exist_ok=True)
        plan.write_bytes(b"plan bytes")
        write_sidecar(
            plan,
            EngineProvenance(
                engine=plan.name,
                engine_sha256=sha256_file(plan),
                engine_bytes=plan.stat().st_size,
                tower=tower,
                precision="fp16",
                tensorrt_version="10.3.0",
                gpu_name="NVIDIA L4",
                compute_capability="8.9",
                onnx_file=f"{tower}.onnx",
                onnx_sha256="0" * 64,
                profiles={name: {"min": [1, *shape], "opt": [8, *shape], "max": [32, *shape]}},
                flags={},
                build_seconds=1.0,
                created="2026-11-24T00:00:00Z",
                recipe="test",
            ),
        )
    from clipexport.precision.pipeline import QuantizeOptions, quantize_artifact
    from clipexport.artifact.precision import Precision

    quantize_artifact(QuantizeOptions(artifact=artifact, precision=Precision.FP16))
    repo = tmp_path / "repo"
    write_repository(
        RepositoryOptions(
            artifact=artifact,
            output=repo,
            name="t",
            platform=BackendKind.TENSORRT,
            precision=Precision.FP16,
            cuda_graphs=True,
        )
    )
    vision = _parse(repo / "t_vision_tower" / "config.pbtxt")
    assert vision.platform == "tensorrt_plan" and vision.max_batch_size == 32
    assert dict(vision.cc_model_filenames) == {"8.9": "model_sm89.plan"} and vision.optimization.cuda.graphs
    assert (repo / "t_vision_tower" / "1" / "model_sm89.plan").read_bytes() == b"plan bytes"
    with pytest.raises(InputError, match="exceeds the vision engine's profile"):
        write_repository(
            RepositoryOptions(
                artifact=artifact,
                output=tmp_path / "r2",
                platform=BackendKind.TENSORRT,
                precision=Precision.FP16,
                max_batch_size=64,
            )
        )


def test_repository_output_is_never_someone_elses_folder(tiny_vit: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from clipexport.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["triton", str(tiny_vit), "-o", str(mine), "--overwrite"])
    assert result.exit_code == 2 and "refusing" in result.output and (mine / "notes.txt").read_text() == "keep me"
    result = CliRunner().invoke(main, ["triton", str(tiny_vit), "-o", str(tmp_path / "r"), "--precision", "int8"])
    assert result.exit_code == 2 and "no int8 graph" in result.output
    assert CliRunner().invoke(main, ["triton", str(tiny_vit), "-o", str(tmp_path / "r")]).exit_code == 0
    assert CliRunner().invoke(main, ["triton", str(tiny_vit), "-o", str(tmp_path / "r"), "--overwrite"]).exit_code == 0


def test_serve_without_pytriton_is_one_line(tiny_vit: Path) -> None:
    pytest.importorskip("clipexport")
    if __import__("importlib").util.find_spec("pytriton") is not None:
        pytest.skip("pytriton is installed in this Python")
    proc = subprocess.run(
        [sys.executable, "-m", "clipexport", "serve", str(tiny_vit)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 3 and "clipexport[serve]" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ---- a real server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_vit: Path, serve_python: Path, tmp_path_factory: pytest.TempPathFactory):
    parent = tmp_path_factory.mktemp("clone-parent")
    (parent / "clipexport").mkdir()  # a clone named clipexport beside the working directory
    served = Server(
        tiny_vit,
        serve_python,
        "--max-batch",
        "8",
        "--max-queue-delay-us",
        "20000",
        "--max-request-bytes",
        str(MAX_REQUEST_BYTES),
        cwd=parent,
    )
    yield served
    if served.process.poll() is None:
        served.stop()


def test_http_and_grpc_equal_the_runtime(server: Server, tiny_vit: Path) -> None:
    from clipexport.client import ClipClient

    images = [png(i) for i in range(5)]
    with ClipRuntime.load(tiny_vit) as runtime:
        want_text, want_image = runtime.encode_text(TEXTS), runtime.encode_image(images)
    for url in (f"localhost:{server.http}", f"grpc://localhost:{server.grpc}"):
        with ClipClient(url, model="m") as client:
            assert client.ready()
            np.testing.assert_allclose(client.encode_text(TEXTS), want_text, atol=SERVER_MAX_ABS, rtol=0)
            np.testing.assert_allclose(
                client.encode_image(images, batch_size=2), want_image, atol=SERVER_MAX_ABS, rtol=0
            )


def test_concurrent_clients_are_batched_and_all_answered(server: Server, tiny_vit: Path) -> None:
    from clipexport.client import ClipClient

    with ClipRuntime.load(tiny_vit) as runtime:
        texts = [f"a photo of a {w}" for w in ("cat", "dog", "car", "tree", "boat", "house", "bird", "fish")]
        want_text = dict(zip(texts, runtime.encode_text(texts)))
        images = [png(100 + i) for i in range(8)]
        want_image = runtime.encode_image(images)

    def client_job(k: int) -> int:
        url = f"localhost:{server.http}" if k % 2 else f"grpc://localhost:{server.grpc}"
        with ClipClient(url, model="m") as client:
            for j in range(6):
                if (k + j) % 2:
                    text = texts[(k + j) % len(texts)]
                    np.testing.assert_allclose(client.encode_text([text])[0], want_text[text], atol=SERVER_MAX_ABS)
                else:
                    i = (k * 3 + j) % len(images)
                    np.testing.assert_allclose(client.encode_image([images[i]])[0], want_image[i], atol=SERVER_MAX_ABS)
        return 6

    before = _stats(server)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(client_job, range(16))) == 96  # every response came back and was right
    after = _stats(server)
    for model in ("m_image", "m_text"):
        requests = after[model]["inference_count"] - before[model]["inference_count"]
        executions = after[model]["execution_count"] - before[model]["execution_count"]
        assert requests == 48 and executions < requests, (model, requests, executions)  # batches of more than one


def _stats(server: Server) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/v2/models/stats", timeout=10) as response:
        data = json.load(response)
    return {m["name"]: m for m in data["model_stats"]}


def test_bad_requests_fail_alone(server: Server) -> None:
    """Every per-item client mistake is 400 / INVALID_ARGUMENT with the runtime's one-line reason,
    and the next request is answered."""
    import tritonclient.http as http

    from clipexport.client import ClipClient, RequestRefused

    for url in (f"localhost:{server.http}", f"grpc://localhost:{server.grpc}"):
        with ClipClient(url, model="m") as client:
            with pytest.raises(RequestRefused, match="b.png: not a valid or complete image"):
                client.encode_image([png(1), b"definitely not a png"], names=["a.png", "b.png"])
            with pytest.raises(RequestRefused, match="is empty"):
                client.encode_image([b""])
            with pytest.raises(RequestRefused, match="decompression bomb|over the limit"):
                client.encode_image([bomb()])
            assert client.encode_image([png(1)]).shape == (1, 64)
            assert client.encode_text(["x"] * 9, batch_size=9).shape == (9, 64)  # split to the max batch of 8
            assert client.encode_text([]).shape == (0, 64)
    raw = http.InferenceServerClient(f"localhost:{server.http}")
    wrong = http.InferInput("TEXT", [1, 1], "INT64")
    wrong.set_data_from_numpy(np.zeros((1, 1), np.int64))
    with pytest.raises(Exception, match="(?i)data.?type|datatype|expected"):
        raw.infer("m_text", [wrong])
    for body in (b"{not json", b"", b'{"inputs": 5}'):
        assert _post(server, "/v2/models/m_text/infer", body)[0] == 400, body
    status, answer = _post(server, "/v2/models/m_text/infer", _text_body(b"\xff\xfe not utf-8"))
    assert status == 400 and "not valid UTF-8" in answer, answer
    with ClipClient(f"localhost:{server.http}", model="m") as client:
        assert client.encode_text(["still fine"]).shape == (1, 64)


def test_blank_texts_embed_on_the_server_as_in_the_runtime(server: Server, tiny_vit: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from clipexport.cli import main

    texts = ["a cat", "", "   ", "\u00a0", "a dog"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    for server_args in ((), ("--server", f"localhost:{server.http}", "--model", "m")):
        out = tmp_path / f"t{len(server_args)}.npy"
        result = CliRunner().invoke(
            main,
            [
                "embed",
                str(tiny_vit),
                "--texts",
                str(tmp_path / "texts.txt"),
                "-o",
                str(out),
                "--batch-size",
                "32",
                *server_args,
            ],
        )
        assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "t4.npy"), np.load(tmp_path / "t0.npy"), atol=SERVER_MAX_ABS)


def _text_body(raw: bytes) -> bytes:
    """A KServe v2 binary-tensor request with one BYTES item (any bytes, not only valid UTF-8)."""
    tensor = len(raw).to_bytes(4, "little") + raw
    header = json.dumps(
        {
            "inputs": [
                {"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(tensor)}}
            ]
        }
    ).encode()
    return header + tensor, len(header)


def _post(
    server: Server, path: str, body, content_type: str | None = "application/json", headers: dict | None = None
) -> tuple[int, str]:
    headers = headers or ({} if content_type is None else {"Content-Type": content_type})
    if isinstance(body, tuple):
        body, header_length = body
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}
    request = urllib.request.Request(f"http://127.0.0.1:{server.http}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_requests_that_crashed_or_held_the_server_are_refused(server: Server) -> None:
    """A form-encoded body (urllib's default type, curl -d's; a 5 MB one used to segfault tritonserver): the
    front parses the JSON itself and forwards a request of its own framing, so it is answered; header
    tricks (a binary-tensor header length past the body, a multipart or compressed body) are 4xx;
    a request over --max-request-bytes is 413 over HTTP (from Content-Length, or while a chunked body
    streams), RESOURCE_EXHAUSTED over gRPC before Triton sees it; a long text under the bound costs
    what its first words cost; and the server keeps answering."""
    from clipexport.client import ClipClient, RequestRefused

    text = json.dumps({"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["x " * 800_000]}]})
    status, answer = _post(server, "/v2/models/m_text/infer", text.encode(), content_type=None)  # urllib's form default
    assert status == 200 and json.loads(answer)["outputs"][0]["shape"] == [1, 64], (status, answer[:300])
    for headers, code, words in (
        (
            {"Content-Type": "application/x-www-form-urlencoded", "Inference-Header-Content-Length": "99999999"},
            400,
            "does not fit",
        ),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "not KServe v2"),
        ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, 415, "uncompressed"),
    ):
        status, answer = _post(server, "/v2/models/m_text/infer", text.encode()[:1000], headers=headers)
        assert status == code and words in answer, (headers, status, answer)
    huge = json.dumps({"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["x " * 25_000_000]}]})
    status, answer = _post(server, "/v2/models/m_text/infer", huge.encode())  # 50 MB
    assert status == 413 and "--max-request-bytes" in answer, (status, answer)

    def chunks():
        for _ in range(50):
            yield b"x" * 100_000  # 5 MB, no Content-Length

    request = urllib.request.Request(f"{server.url}/embed/image", data=chunks(), method="POST")
    request.add_header("Transfer-Encoding", "chunked")
    try:
        urllib.request.urlopen(request, timeout=60)
        raise AssertionError("a chunked body over the bound was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 413 and "over the server's limit" in exc.read().decode()
    with ClipClient(f"grpc://localhost:{server.grpc}", model="m") as client:
        with pytest.raises(RequestRefused, match="over the server's limit"):
            client.encode_text(["y" * (MAX_REQUEST_BYTES + 10)])  # under the front's bound: the model's words
        with pytest.raises(RequestRefused, match="over the server's limit"):
            client.encode_text(["y" * (5 * MAX_REQUEST_BYTES)])  # refused by the gRPC front itself
        start = time.monotonic()
        long_text = client.encode_text(["a photo of a cat " * 100_000])  # 1.7 MB, under the bound
        assert time.monotonic() - start < 10 and long_text.shape == (1, 64)
    for url in (f"localhost:{server.http}", f"grpc://localhost:{server.grpc}"):
        with ClipClient(url, model="m") as client:
            assert client.encode_text(["still serving"]).shape == (1, 64)
    assert server.process.poll() is None


def test_one_http_client_shared_by_eight_threads(server: Server, tiny_vit: Path) -> None:
    from clipexport.client import ClipClient

    texts = [f"a photo of a {w}" for w in ("cat", "dog", "car", "tree")]
    with ClipRuntime.load(tiny_vit) as runtime:
        want = runtime.encode_text(texts)
    shared = ClipClient(f"localhost:{server.http}", model="m", timeout=20)

    def job(k: int) -> int:
        for j in range(10):
            count = 1 + (k + j) % len(texts)
            np.testing.assert_allclose(shared.encode_text(texts[:count]), want[:count], atol=SERVER_MAX_ABS)
        return 10

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(job, k) for k in range(8)]
        assert sum(f.result(timeout=90) for f in futures) == 80
    shared.close()


def test_client_mistakes_and_unreachable_servers_have_their_exit_codes(
    server: Server, tiny_vit: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from clipexport.cli import main

    (tmp_path / "t.txt").write_text("a\n")
    cases = [
        (("--server", f"localhost:{free_local_ports(1)[0]}"), 3, "no answer from a Triton server"),
        (("--server", f"localhost:{server.http}", "--model", "other"), 3, "does not serve other_text"),
        (("--server", "https://"), 2, "is not host:port"),
        (("--server", "localhost:8000/v2"), 2, "is not host:port"),
    ]
    for args, code, message in cases:
        result = CliRunner().invoke(
            main, ["embed", str(tiny_vit), "--texts", str(tmp_path / "t.txt"), "-o", str(tmp_path / "o.npy"), *args]
        )
        assert result.exit_code == code and message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o.npy").exists()


def test_sigterm_stops_cleanly(tiny_vit: Path, serve_python: Path) -> None:
    """A container's stop: SIGTERM ends serve with status 0 and a line saying so, no `error:`; its
    ports came from the environment (CLIPEXPORT_SERVE_HTTP_PORT, ...), as a container sets them."""
    served = Server(tiny_vit, serve_python, ports_from_env=True)
    workspace = served.workspace
    assert workspace.is_dir() and _listening(served.http) and _listening(served.grpc)
    code, seconds = served.stop()
    log = served.log.read_text()
    assert code == 0 and seconds < 40, (code, seconds, log)
    assert "stopped on SIGTERM" in log and "error:" not in log, log
    assert not workspace.exists()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _listening(served.http):
        time.sleep(0.2)
    assert not _listening(served.http)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_generated_python_models_load_and_answer_in_tritonserver(
    tiny_vit: Path, tmp_path: Path, serve_python: Path
) -> None:
    """The repository's preprocess and tokenize models in the bundled tritonserver (its python
    backend only: the towers' onnxruntime / TensorRT backends are what the NGC container adds)."""
    from clipexport.runtime.text_length import trim
    from clipexport.serving.repository import RepositoryOptions, write_repository

    repo = tmp_path / "repo"
    write_repository(RepositoryOptions(artifact=tiny_vit, output=repo, name="g"))
    python_only = tmp_path / "python-only"
    python_only.mkdir()
    for model in ("g_preprocess", "g_tokenize"):
        shutil.copytree(repo / model, python_only / model)
    http, grpc, metrics = free_local_ports(3)
    launcher = (
        "import subprocess, sys, pathlib\n"
        "from clipexport.serving import server as s\n"
        f"ws = pathlib.Path({str(tmp_path / 'workspace')!r})\n"  # the test's: tritonserver is a 22 MB copy
        "ws.mkdir()\n"
        "d = s._prepare_server(s._tritonserver_dist(), ws)\n"
        "env = s._server_env(s._tritonserver_dist())\n"
        "s.check_python_backend(d, env)\n"
        f"sys.exit(subprocess.call([str(d / 'bin' / 'tritonserver'), '--model-repository={python_only}',"
        f" '--backend-directory=' + str(d / 'backends'), '--http-port={http}', '--grpc-port={grpc}',"
        f" '--metrics-port={metrics}', '--http-address=127.0.0.1', '--grpc-address=127.0.0.1'], env=env))\n"
    )
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen([str(serve_python), "-c", launcher], stdout=log, stderr=log, start_new_session=True)
    try:
        import tritonclient.http as client_lib

        client = client_lib.InferenceServerClient(f"localhost:{http}")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not _ready(client):
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.3)
        assert client.is_model_ready("g_preprocess") and client.is_model_ready("g_tokenize")
        with ClipRuntime.load(tiny_vit) as runtime:
            image = png(7, (123, 77))
            pixels = _infer(client_lib, client, "g_preprocess", "IMAGE", [image], "PIXELS")
            np.testing.assert_allclose(pixels[0], runtime.preprocessor(image)[0], atol=1e-6)
            ids = _infer(client_lib, client, "g_tokenize", "TEXT", ["a photo of a cat", "a dog"], "INPUT_IDS")
            full = runtime.tokenizer(["a photo of a cat", "a dog"])
            assert (
                ids.shape == (2, 16)
                and trim(full, runtime.manifest.tower("text").properties, runtime.manifest.tokenizer).shape[1] <= 16
            )
            np.testing.assert_array_equal(ids, full[:, :16])
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)


def _ready(client) -> bool:
    try:
        return client.is_server_ready()
    except Exception:
        return False


def _infer(lib, client, model: str, name: str, items: list, output: str) -> np.ndarray:
    data = np.array([i.encode() if isinstance(i, str) else i for i in items], dtype=np.object_).reshape(-1, 1)
    tensor = lib.InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor]).as_numpy(output)


def test_embed_command_on_the_server(server: Server, tiny_vit: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from clipexport.cli import main

    (tmp_path / "texts.txt").write_text("a photo of a cat\na dog\n")
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(png(i))
    (folder / "3-bad.png").write_bytes(b"not an image")
    url = f"grpc://localhost:{server.grpc}"
    result = CliRunner().invoke(
        main,
        [
            "embed",
            str(tiny_vit),
            "--texts",
            str(tmp_path / "texts.txt"),
            "-o",
            str(tmp_path / "t.npy"),
            "--server",
            url,
            "--model",
            "m",
        ],
    )
    assert result.exit_code == 0, result.output
    with ClipRuntime.load(tiny_vit) as runtime:
        np.testing.assert_allclose(
            np.load(tmp_path / "t.npy"), runtime.encode_text(["a photo of a cat", "a dog"]), atol=SERVER_MAX_ABS
        )
    result = CliRunner().invoke(
        main,
        [
            "embed",
            str(tiny_vit),
            "--images",
            str(folder),
            "-o",
            str(tmp_path / "i.npy"),
            "--server",
            url,
            "--model",
            "m",
            "--skip-bad",
        ],
    )
    assert result.exit_code == 0 and "3-bad.png" in result.output, result.output
    assert np.load(tmp_path / "i.npy").shape == (3, 64)
    result = CliRunner().invoke(
        main,
        [
            "embed",
            str(tiny_vit),
            "--images",
            str(folder),
            "-o",
            str(tmp_path / "j.npy"),
            "--server",
            url,
            "--model",
            "m",
            "--batch-size",
            "32",
        ],
    )
    assert result.exit_code == 2 and f"{folder / '3-bad.png'}: not a valid or complete image" in result.output
    assert not (tmp_path / "j.npy").exists()


def test_second_server_on_the_same_ports_is_one_line(server: Server, tiny_vit: Path, serve_python: Path) -> None:
    proc = subprocess.run(
        [
            str(serve_python),
            "-m",
            "clipexport",
            "serve",
            str(tiny_vit),
            "--http-port",
            str(server.http),
            "--grpc-port",
            str(server.grpc),
            "--metrics-port",
            str(server.metrics),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "is not free" in proc.stderr and "ready" not in proc.stdout, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and server.process.poll() is None


def test_serve_refuses_what_the_runtime_refuses_with_the_same_line(
    tiny_vit: Path, serve_python: Path, tmp_path: Path
) -> None:
    """A tampered graph (2), a backend that cannot run here (3), an edited embed_dim (2) and a bad
    --name (2): the in-process line and exit code, not "failed to load all models"."""
    ports = [str(p) for p in free_local_ports(3)]
    port_args = ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_vit, tampered)
    with open(tampered / "text.onnx", "ab") as handle:
        handle.write(b"x")
    edited = tmp_path / "edited"
    shutil.copytree(tiny_vit, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["embed_dim"] = 999
    (edited / "manifest.json").write_text(json.dumps(manifest))
    cases = [
        ((str(tampered),), 2, "does not match the manifest"),
        ((str(tiny_vit), "--backend", "tensorrt"), 3, "clipexport[tensorrt]"),
        ((str(edited), "--name", "e"), 2, "manifest says embed_dim 999"),
        ((str(tiny_vit), "--name", "ünï"), 2, "is not a usable model name"),
        ((str(tiny_vit), "--name", "x" * 300), 2, "is not a usable model name"),
        ((str(tiny_vit), "--url-fetch-private"), 2, "--url-fetch-private widens --allow-url-fetch"),
    ]
    for args, code, message in cases:
        proc = subprocess.run(
            [str(serve_python), "-m", "clipexport", "serve", *args, *port_args, "-q"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == code and message in proc.stderr, (args, proc.returncode, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_sigkill_leftovers_are_removed_at_the_next_start(tiny_vit: Path, serve_python: Path) -> None:
    first = Server(tiny_vit, serve_python)
    workspace = first.workspace
    first.process.kill()  # SIGKILL: no cleanup runs
    first.process.wait(30)
    assert workspace.is_dir()
    second = Server(tiny_vit, serve_python)
    try:
        assert not workspace.exists() and f"removed {workspace.name}" in second.log.read_text()
    finally:
        second.stop()
