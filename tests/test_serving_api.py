"""serve's HTTP API as users' own clients call it: the official `openai` client, `curl` (-F uploads,
-d without a Content-Type, a large upload with `Expect: 100-continue`), a search over an index and
its page in a real headless Chromium (Debian's, driven by Playwright), /health, /ready and metrics
that count client errors, and the bounds: schema mistakes, bombs, URLs (off, slow, huge), slow
clients, paths outside --image-root. Each mistake is a 4xx with one line and the next request is
answered."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from clipexport.runtime import ClipRuntime
from served import SERVER_MAX_ABS, Server, bomb, png

MAX_REQUEST_BYTES = 2_000_000  # the module server's --max-request-bytes
FETCH_TIMEOUT_S = 2  # the module server's --url-fetch-timeout
PICTURES = 12


@pytest.fixture(scope="module")
def corpus(tiny_vit: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An index over a folder of pictures, whose list also names a symlink out of the folder and a
    `..` path out of it (both real images: embed reads them; the page must not show them)."""
    from click.testing import CliRunner

    from clipexport.cli import main

    root = tmp_path_factory.mktemp("corpus")
    pics = root / "pics"
    pics.mkdir()
    paths = []
    for i in range(PICTURES):
        (pics / f"{i:02d}.png").write_bytes(png(500 + i, (64, 48)))
        paths.append(pics / f"{i:02d}.png")
    (root / "secret.png").write_bytes(png(900))
    (pics / "link.png").symlink_to(root / "secret.png")
    paths += [pics / "link.png", Path(f"{pics}/../secret.png")]
    (root / "list.txt").write_text("".join(f"{p}\n" for p in paths))
    for args in (
        ["embed", str(tiny_vit), "--image-list", str(root / "list.txt"), "-o", str(root / "ds"), "-q"],
        ["index", str(root / "ds"), "-o", str(root / "idx"), "-q"],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    return {"root": root, "pics": pics, "index": root / "idx", "paths": [str(p) for p in paths]}


@pytest.fixture(scope="module")
def api(tiny_vit: Path, serve_python: Path, corpus: dict):
    served = Server(
        tiny_vit,
        serve_python,
        "--max-batch",
        "8",
        "--max-request-bytes",
        str(MAX_REQUEST_BYTES),
        "--index",
        str(corpus["index"]),
        "--image-root",
        str(corpus["pics"]),
        "--allow-url-fetch",
        "--url-fetch-timeout",
        str(FETCH_TIMEOUT_S),
        "--url-fetch-private",  # the test's web server is on loopback
    )
    yield served
    if served.process.poll() is None:
        served.stop()


def _call(server: Server, path: str, body=None, headers: dict | None = None, method: str | None = None):
    """(status, parsed JSON or text) of one request."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(server.url + path, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw, kind = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    return status, (json.loads(raw) if "json" in kind else raw)


def _message(answer) -> str:
    error = answer["error"]
    return error["message"] if isinstance(error, dict) else error


def _curl(*args: str) -> tuple[int, dict]:
    done = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    body, status = done.stdout.rsplit("\n", 1)
    return int(status), json.loads(body)


def _data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(data).decode()


def test_openai_client_gets_the_runtimes_embeddings(api: Server, tiny_vit: Path) -> None:
    """The official client unchanged: text (its default base64 encoding and float), images as data
    URIs and bare base64 with infinity's "modality": "image"; /v1/models lists the served model."""
    from openai import OpenAI

    texts = ["a photo of a cat", "北京欢迎你", "", "a very long caption " * 40]
    images = [png(i) for i in range(3)]
    with ClipRuntime.load(tiny_vit) as runtime:
        want_text, want_image = runtime.encode_text(texts), runtime.encode_image(images)
    client = OpenAI(base_url=api.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["m"]
    for encoding in (None, "float", "base64"):  # None: the client asks for base64 and decodes it itself
        kwargs = {"encoding_format": encoding} if encoding else {}
        answer = client.embeddings.create(model="m", input=texts, **kwargs)
        rows = [row.embedding for row in answer.data]
        if encoding == "base64":  # asked for explicitly, the client hands the text over as it came
            rows = [np.frombuffer(base64.b64decode(row), "<f4") for row in rows]
        np.testing.assert_allclose(np.array(rows, np.float32), want_text, atol=SERVER_MAX_ABS, rtol=0)
        assert [row.index for row in answer.data] == list(range(len(texts)))
        assert answer.usage.prompt_tokens > len(texts) and answer.model == "m"
    one = client.embeddings.create(model="m", input="a photo of a cat")
    np.testing.assert_allclose(one.data[0].embedding, want_text[0], atol=SERVER_MAX_ABS)
    sent = [_data_uri(images[0]), base64.b64encode(images[1]).decode(), _data_uri(images[2])]
    answer = client.embeddings.create(model="m", input=sent, extra_body={"modality": "image"})
    got = np.array([row.embedding for row in answer.data], np.float32)
    np.testing.assert_allclose(got, want_image, atol=SERVER_MAX_ABS, rtol=0)
    many = client.embeddings.create(model="m", input=[f"caption {i}" for i in range(20)])  # split to batches of 8
    assert len(many.data) == 20


def test_openai_schema_mistakes_are_4xx_with_one_line(api: Server) -> None:
    import openai

    client = openai.OpenAI(base_url=api.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="serves the model 'm', not 'other'"):
        client.embeddings.create(model="other", input=["x"])
    for kwargs, words in (
        ({"input": []}, "holds no items"),
        ({"input": ["x"] * 2049}, "over the limit of 2048"),
        ({"input": [[1, 2, 3]]}, "token ids"),
        ({"input": ["x"], "dimensions": 16}, "not this model's 64"),
        ({"input": ["not base64!"], "extra_body": {"modality": "image"}}, "neither a data URI"),
        ({"input": [_data_uri(b"hello", "text/plain")], "extra_body": {"modality": "image"}}, "not an image"),
        ({"input": [_data_uri(b"hello")], "extra_body": {"modality": "image"}}, "input[0]: not a valid"),
        ({"input": [_data_uri(png(1)), _data_uri(bomb())], "extra_body": {"modality": "image"}}, "input[1]"),
        ({"input": ["x"], "extra_body": {"modality": "audio"}}, "'modality' must be one of"),
        ({"input": ["x"], "extra_body": {"inputs": ["y"]}}, "unknown field(s) 'inputs'"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model="m", **kwargs)
        message = caught.value.body["message"] if isinstance(caught.value.body, dict) else str(caught.value)
        assert words in message and "\n" not in message, (kwargs.get("extra_body"), message)
    for body, words in (
        (b"{not json", "not JSON"),
        (b"", "no body"),
        (b"[1, 2]", "JSON object"),
        (b'{"model": "m"}', "no 'input'"),
        (b'{"model": "m", "input": ["\\ud800"]}', "input[0]"),
    ):
        status, answer = _call(api, "/v1/embeddings", body, {"Content-Type": "application/json"})
        assert status == 400 and words in _message(answer), (body, status, answer)
    assert len(client.embeddings.create(model="m", input=["still fine"]).data) == 1


def test_curl_uploads_forms_and_expect_continue(api: Server, tiny_vit: Path, tmp_path: Path) -> None:
    """`curl -F file=@photo` (one or many), raw bytes, `curl -d` (form-encoded type) with JSON, and a
    1.9 MB photo, for which curl sends `Expect: 100-continue` (the old front hung 61 s on it)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    assert 1_000_000 < (tmp_path / "big.png").stat().st_size < MAX_REQUEST_BYTES
    (tmp_path / "a.png").write_bytes(png(1))
    (tmp_path / "b.png").write_bytes(png(2))
    with ClipRuntime.load(tiny_vit) as runtime:
        want = runtime.encode_image([tmp_path / "a.png", tmp_path / "b.png", tmp_path / "big.png"])
        want_text = runtime.encode_text(["a red circle", "a dog"])
    status, answer = _curl(
        "-F", f"file=@{tmp_path / 'a.png'}", "-F", f"file=@{tmp_path / 'b.png'}", f"{api.url}/embed/image"
    )
    assert status == 200 and answer["dim"] == 64 and answer["model"] == "m" and answer["precision"] == "fp32"
    np.testing.assert_allclose(answer["embeddings"], want[:2], atol=SERVER_MAX_ABS)
    start = time.monotonic()
    status, answer = _curl(
        "-H", "Expect: 100-continue", "-F", f"file=@{tmp_path / 'big.png'}", f"{api.url}/embed/image"
    )
    assert status == 200 and time.monotonic() - start < 10
    np.testing.assert_allclose(answer["embeddings"][0], want[2], atol=SERVER_MAX_ABS)
    status, answer = _curl(
        "-H", "Content-Type: image/png", "--data-binary", f"@{tmp_path / 'a.png'}", f"{api.url}/embed/image"
    )
    np.testing.assert_allclose(answer["embeddings"][0], want[0], atol=SERVER_MAX_ABS)
    status, answer = _curl("-d", '["a red circle", "a dog"]', f"{api.url}/embed/text")  # form-encoded type, JSON body
    assert status == 200
    np.testing.assert_allclose(answer["embeddings"], want_text, atol=SERVER_MAX_ABS)
    kserve = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["a dog"]}]}
    status, answer = _curl(
        "-d", json.dumps(kserve), f"{api.url}/v2/models/m_text/infer"
    )  # the repository README's line
    assert status == 200
    np.testing.assert_allclose(answer["outputs"][0]["data"], want_text[1], atol=SERVER_MAX_ABS)
    from clipexport.serving.repository import RepositoryOptions, write_repository

    write_repository(RepositoryOptions(artifact=tiny_vit, output=tmp_path / "repo", name="m"))
    readme = (tmp_path / "repo" / "README.md").read_text()
    line = readme[readme.index("curl -s localhost:8000/v2/models/") :].split("```")[0]  # as written, port aside
    done = subprocess.run(
        ["bash", "-c", line.replace("localhost:8000", f"127.0.0.1:{api.http}")], capture_output=True, text=True
    )
    assert json.loads(done.stdout)["outputs"][0]["shape"] == [1, 64], (line, done.stdout, done.stderr)
    (tmp_path / "huge.bin").write_bytes(b"\0" * (MAX_REQUEST_BYTES + 1_000_000))
    for args, code, words in (
        (
            ["-H", "Expect: 100-continue", "--data-binary", f"@{tmp_path / 'huge.bin'}", f"{api.url}/embed/image"],
            413,
            "over the server's limit",
        ),
        (["-F", "note=hello", f"{api.url}/embed/image"], 400, "holds no file"),
        (["-X", "POST", f"{api.url}/embed/image"], 400, "no body"),
        (["-d", '{"texts": ["x"]}', f"{api.url}/embed/text"], 400, "JSON list of strings"),
        (["-F", f"file=@{tmp_path / 'a.png'}", "-F", "file=@/etc/hostname", f"{api.url}/embed/image"], 400, "hostname"),
    ):
        status, answer = _curl(*args)
        assert status == code and words in answer["error"], (args, status, answer)


def test_search_route_image_root_and_page_in_a_browser(
    api: Server, corpus: dict, tiny_vit: Path, tmp_path: Path
) -> None:
    from clipexport.search.searcher import Searcher

    with Searcher(corpus["index"], artifact=tiny_vit) as searcher:
        want = searcher.search_text(["a photo of a cat"], k=5)[0]
        want_image = searcher.search_images([corpus["paths"][3]], k=3)[0]
    status, answer = _call(api, "/search", {"text": "a photo of a cat", "k": 5})
    assert status == 200 and answer["query"] == "text" and answer["k"] == 5
    assert [r["id"] for r in answer["results"]] == [h.id for h in want]
    np.testing.assert_allclose([r["score"] for r in answer["results"]], [h.score for h in want], atol=1e-5)
    first = answer["results"][0]
    assert (
        first["metadata"]["width"] == 64
        and first["metadata"]["height"] == 48
        and first["image"] == f"/image/{first['row']}"
    )
    status, answer = _curl("-F", f"file=@{corpus['paths'][3]}", "-F", "k=3", f"{api.url}/search")
    assert status == 200 and [r["id"] for r in answer["results"]] == [h.id for h in want_image]
    rows = len(corpus["paths"])
    for body, words in (
        ({"text": "x", "k": 0}, "positive integer"),
        ({"text": "x", "k": rows + 1}, f"at most {rows}"),
        ({"text": "x", "image": "y"}, "one query"),
        ({"k": 3}, "one query"),
        ({"image": "https://127.0.0.1:1/x.png"}, "failed"),
    ):
        status, answer = _call(api, "/search", body)
        assert status == 400 and words in answer["error"], (body, answer)
    ids = Searcher(corpus["index"], artifact=tiny_vit).ids
    inside = ids.index(corpus["paths"][0])
    status, raw = _call(api, f"/image/{inside}")
    assert status == 200 and raw == Path(corpus["paths"][0]).read_bytes()
    for escaped in (corpus["paths"][-2], corpus["paths"][-1]):  # the symlink out, the `..` path out
        status, answer = _call(api, f"/image/{ids.index(escaped)}")
        assert status == 403 and "outside --image-root" in answer["error"], (escaped, answer)
    for path in ("/image/999", "/image/-1", "/image/..%2Fsecret.png", "/image/%2e%2e/secret.png"):
        assert _call(api, path)[0] == 404, path
    _browse(api, tmp_path)


def _chromium() -> str:
    """Debian's chromium (installed here when missing and this machine can: .ci/run does the same)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(install, capture_output=True, timeout=900).returncode != 0:  # no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=900)
            subprocess.run(install, capture_output=True, timeout=900)
        found = shutil.which("chromium")
    if not found:
        pytest.skip("no chromium on this machine and no root apt-get to install it (apt install chromium)")
    return found


def _browse(api: Server, tmp_path: Path) -> None:
    """The page in a real browser: type a query, press Enter, see tiles with images and scores."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(api.url + "/")
            page.fill("#text", "a photo of a cat")
            page.press("#text", "Enter")
            page.wait_for_selector(".tile", timeout=20_000)
            assert page.locator(".tile").count() == 10
            assert page.locator(".tile img").count() >= 1 and page.locator(
                ".tile .score"
            ).first.inner_text().startswith("score ")
            page.wait_for_function("[...document.images].every(i => i.complete)", timeout=20_000)
            loaded = page.evaluate("[...document.images].filter(i => i.naturalWidth > 0).length")
            assert loaded >= 9, loaded  # every tile under the root shows its picture (the escapes do not)
            page.set_input_files("#file", _write(tmp_path))  # the image query, as the drop zone's chooser sends it
            page.wait_for_function("document.getElementById('status').textContent.includes('image query')")
            page.fill("#text", "")
            page.press("#text", "Enter")
            assert "type a description" in page.inner_text("#status")
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()


def _write(tmp_path: Path) -> str:
    (tmp_path / "query.png").write_bytes(png(501, (64, 48)))
    return str(tmp_path / "query.png")


class _Images(http.server.BaseHTTPRequestHandler):
    """A local web server for --allow-url-fetch: /ok.png, /slow.png (past the timeout), /huge.png
    (past the bound, streamed), /missing.png (404)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/slow.png":
            time.sleep(FETCH_TIMEOUT_S + 2)
        if self.path == "/missing.png":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        try:
            if self.path == "/huge.png":
                for _ in range(MAX_REQUEST_BYTES // 65536 + 10):
                    self.wfile.write(b"\0" * 65536)
            else:
                self.wfile.write(png(77))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_url_inputs_are_fetched_within_their_bounds(api: Server, tiny_vit: Path) -> None:
    import openai

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{web.server_address[1]}"
    client = openai.OpenAI(base_url=api.url + "/v1", api_key="unused", max_retries=0)
    try:
        with ClipRuntime.load(tiny_vit) as runtime:
            want = runtime.encode_image([png(77)])
        answer = client.embeddings.create(model="m", input=[f"{base}/ok.png"], extra_body={"modality": "image"})
        np.testing.assert_allclose(answer.data[0].embedding, want[0], atol=SERVER_MAX_ABS)
        for path, words in (
            ("/slow.png", "--url-fetch-timeout"),
            ("/huge.png", "over the server's limit"),
            ("/missing.png", "HTTP 404"),
        ):
            start = time.monotonic()
            with pytest.raises(openai.BadRequestError, match=words.replace("(", r"\(")):
                client.embeddings.create(model="m", input=[f"{base}{path}"], extra_body={"modality": "image"})
            assert time.monotonic() - start < FETCH_TIMEOUT_S + 5
    finally:
        web.shutdown()


def test_health_ready_and_metrics_count_client_errors(api: Server) -> None:
    def counted(route: str, status: str) -> float:
        _, text = _call(api, "/metrics")
        for line in text.decode().splitlines():
            if (
                line.startswith("clipexport_http_requests_total{")
                and f'route="{route}"' in line
                and f'status="{status}"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert _call(api, "/health") == (200, {"status": "live"})
    status, answer = _call(api, "/ready")
    assert status == 200 and answer["ready"] is True and answer["index_rows"] == PICTURES + 2
    before_400, before_413 = counted("/embed/text", "400"), counted("/embed/text", "413")
    for _ in range(3):
        assert _call(api, "/embed/text", {"not": "a list"})[0] == 400
    assert _call(api, "/embed/text", b"x" * (MAX_REQUEST_BYTES + 1), {"Content-Type": "application/json"})[0] == 413
    assert counted("/embed/text", "400") == before_400 + 3 and counted("/embed/text", "413") == before_413 + 1
    _, text = _call(api, "/metrics")
    assert b"clipexport_http_request_duration_seconds_bucket" in text and b"clipexport_http_items_per_request" in text


def test_slow_clients_cost_a_connection_each(api: Server) -> None:
    """100 clients that send half a request head and stop: everyone else is still answered at once."""
    stalled = []
    try:
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", api.http), timeout=5)
            s.sendall(b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Le")
            stalled.append(s)
        start = time.monotonic()
        status, answer = _call(api, "/embed/text", ["a cat"])
        assert status == 200 and time.monotonic() - start < 5
        half = socket.create_connection(("127.0.0.1", api.http), timeout=5)
        half.sendall(b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[")  # a body that stalls
        stalled.append(half)
        assert _call(api, "/health")[0] == 200
    finally:
        for s in stalled:
            s.close()


UNREACHABLE_SNIPPET = r"""
import asyncio, socket
from clipexport.serving.app import AppOptions, Refused, Upstream

with socket.socket() as s:  # a port nothing listens on: Triton gone
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]

async def main():
    upstream = Upstream(AppOptions("m", 4, "fp32", port, port, 8, 1 << 20))
    await upstream.open()
    try:
        await upstream.embed("text", [b"a photo"], ["input[0]"])
    except Refused as exc:
        print(exc.status, exc.message)
    finally:
        await upstream.close()

asyncio.run(main())
"""


def test_a_model_server_that_is_not_there_is_503_not_502(serve_python: Path) -> None:
    """tritonserver not answering (gRPC UNAVAILABLE) is the server's state, as /ready says: 503 and
    try again; 502 is for a model server that answered with a failure."""
    done = subprocess.run([str(serve_python), "-c", UNREACHABLE_SNIPPET], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("503 the model server is not answering"), done.stdout


FETCH_RULES_SNIPPET = r"""
import asyncio, http.server, json, threading
import clipexport.serving.app as app
from clipexport.errors import InputError

class Pages(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/hop"):  # /hopN: a redirect chain
            n = int(self.path[4:])
            self.send_response(302)
            self.send_header("Location", f"/hop{n + 1}" if n < 9 else "/ok")
        elif self.path == "/inside":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{PORT}/ok")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass

web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pages)
PORT = web.server_address[1]
threading.Thread(target=web.serve_forever, daemon=True).start()

async def fetched(url, private=False):
    options = app.AppOptions("m", 4, "fp32", 1, 1, 8, 1 << 20, allow_url_fetch=True, url_fetch_timeout_s=5,
                             url_fetch_private=private)
    upstream = app.Upstream(options)
    await upstream.open()
    try:
        return (await app._State(options, upstream).fetch(app.ImageSource(url=url), "input[0]")).decode()
    except InputError as exc:
        return str(exc)
    finally:
        await upstream.close()

async def main():
    out = {}
    for url in (f"http://127.0.0.1:{PORT}/ok", f"http://localhost:{PORT}/ok", f"http://[::ffff:127.0.0.1]:{PORT}/ok",
                "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/a.png"):
        out[url] = await fetched(url)
    out["private allowed"] = await fetched(f"http://127.0.0.1:{PORT}/ok", private=True)
    # A name that resolves to an inside address after the check (DNS rebinding): the connector's
    # resolver refuses it as it connects.
    checked = app._refuse_non_public
    async def passes(*args):
        return None
    app._refuse_non_public = passes
    out["rebound"] = await fetched(f"http://localhost:{PORT}/ok")
    app._refuse_non_public = checked
    # 127.0.0.1 taken for a public address, 127.0.0.2 not: a redirect into the inside is refused.
    app.non_public = lambda address: "loopback" if address == "127.0.0.2" else None
    out["redirect inside"] = await fetched(f"http://127.0.0.1:{PORT}/inside")
    out["redirect chain"] = await fetched(f"http://127.0.0.1:{PORT}/hop0")
    out["few redirects"] = await fetched(f"http://127.0.0.1:{PORT}/hop6")
    print(json.dumps(out))

asyncio.run(main())
"""


def test_url_fetch_reaches_public_addresses_only(serve_python: Path) -> None:
    """--allow-url-fetch must not let a client make the server reach what only it can reach: its own
    loopback ports (Triton's), a cloud's metadata service, the private network, by address, by name or
    through a redirect. --url-fetch-private allows them."""
    done = subprocess.run([str(serve_python), "-c", FETCH_RULES_SNIPPET], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    refused = {url: answer for url, answer in out.items() if url.startswith("http")}
    for url, answer in refused.items():
        assert "public addresses only" in answer and "--url-fetch-private" in answer, (url, answer)
    assert "loopback" in refused[next(u for u in refused if "localhost" in u)]
    assert "link-local" in refused["http://169.254.169.254/latest/meta-data/"]
    assert "private" in refused["http://10.1.2.3/a.png"]
    assert out["private allowed"] == "ok"
    assert "failed" in out["rebound"] and "loopback" in out["rebound"], out["rebound"]
    assert "127.0.0.2" in out["redirect inside"] and "public addresses only" in out["redirect inside"]
    assert "redirected more than 5 times" in out["redirect chain"], out
    assert out["few redirects"] == "ok"


def test_which_addresses_are_public() -> None:
    from clipexport.serving.api import non_public

    for address, kind in (
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-global"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("example.com", None),  # a name: judged by what it resolves to
    ):
        assert non_public(address) == kind, address
