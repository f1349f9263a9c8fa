"""A table of user mistakes run through the CLI: each ends in exit 2 with exactly one `error:`
line and no traceback, and leaves nothing half-written."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import CONFIGS
from clipexport.cli import main


@pytest.fixture(scope="module")
def workspace(tiny_vit: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files the mistakes point at, made once."""
    root = tmp_path_factory.mktemp("mistakes")
    (root / "empty_dir").mkdir()
    (root / "x.jpg").mkdir()  # a folder named like an image
    (root / "user_dir").mkdir()
    (root / "user_dir" / "notes.txt").write_text("mine")
    (root / "a_file.txt").write_text("not a folder")
    (root / "empty.txt").write_text("")
    (root / "paths.csv").write_text("path\nok.png\n")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.new("RGB", (40, 30), (0, 200, 0)).save(root / "ok.png")
    (root / "no_config").mkdir()
    (root / "no_config" / "weights.bin").write_bytes(b"x")
    (root / "hf_like").mkdir()
    (root / "hf_like" / "config.json").write_text("{}")
    # An artifact whose text graph is garbage but whose manifest records the garbage's sha256.
    damaged = root / "damaged"
    shutil.copytree(tiny_vit, damaged)
    (damaged / "text.onnx").write_bytes(b"not an onnx protobuf")
    manifest = json.loads((damaged / "manifest.json").read_text())
    manifest["towers"]["text"]["graphs"]["fp32"]["sha256"] = hashlib.sha256(b"not an onnx protobuf").hexdigest()
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    for name, classes, map_text in (
        ("labelled", ("red", "blue"), None),
        ("labelled_tab", ("red", "blue"), "red\t\n"),
        ("labelled_underscore", ("_", "blue"), None),
    ):
        for folder in classes:
            (root / name / folder).mkdir(parents=True)
            Image.new("RGB", (40, 30), (200, 0, 0)).save(root / name / folder / "1.png")
        if map_text is not None:
            (root / name / "classes.txt").write_text(map_text)
    (root / "empty_manifest").mkdir()
    (root / "empty_manifest" / "manifest.json").write_text("{}")
    return {"root": root, "art": tiny_vit}


CFG = str(CONFIGS / "tiny-vit.json")
PROGRESS = re.compile(r"^\[\s*\d+\.\ds\] ")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
Args = Callable[[dict[str, Path]], list[str]]

# (id, arguments built from the workspace, a phrase the error line must contain)
MISTAKES: list[tuple[str, Args, str]] = [
    ("export-unknown-model", lambda w: ["export", "ViT-B-23", "-o", str(w["root"] / "o1")], "unknown OpenCLIP model"),
    ("export-opset-too-old", lambda w: ["export", CFG, "--opset", "13", "-o", str(w["root"] / "o2")], "opset 13"),
    ("export-opset-too-new", lambda w: ["export", CFG, "--opset", "99", "-o", str(w["root"] / "o3")], "opset 99"),
    ("export-output-is-file", lambda w: ["export", CFG, "-o", str(w["root"] / "a_file.txt")], "is a file"),
    (
        "export-overwrite-user-folder",
        lambda w: ["export", CFG, "-o", str(w["root"] / "user_dir"), "--overwrite"],
        "only replaces a clipexport artifact",
    ),
    (
        "export-folder-without-config",
        lambda w: ["export", str(w["root"] / "no_config"), "-o", str(w["root"] / "o4")],
        "without config.json",
    ),
    (
        "export-hf-with-pretrained",
        lambda w: ["export", str(w["root"] / "hf_like"), "--pretrained", "x.pt", "-o", str(w["root"] / "o5")],
        "--pretrained does not apply",
    ),
    ("export-unwritable-output", lambda w: ["export", CFG, "-o", "/proc/clipexport-test/out"], "cannot"),
    (
        "export-zero-opset-is-not-default",
        lambda w: ["export", CFG, "--opset", "0", "-o", str(w["root"] / "o6")],
        "opset 0",
    ),
    ("verify-missing-artifact", lambda w: ["verify", str(w["root"] / "nope")], "does not exist"),
    ("verify-missing-precision", lambda w: ["verify", str(w["art"]), "--precision", "int8"], "no int8 graph"),
    ("verify-unknown-precision", lambda w: ["verify", str(w["art"]), "--precision", "bf16"], "--precision"),
    ("verify-batch-size-zero", lambda w: ["verify", str(w["art"]), "--batch-size", "0"], "--batch-size"),
    ("verify-num-images-zero", lambda w: ["verify", str(w["art"]), "--num-images", "0"], "--num-images"),
    (
        "verify-images-missing",
        lambda w: ["verify", str(w["art"]), "--images", str(w["root"] / "nope")],
        "does not exist",
    ),
    ("verify-texts-empty", lambda w: ["verify", str(w["art"]), "--texts", str(w["root"] / "empty.txt")], "no captions"),
    ("verify-empty-manifest", lambda w: ["verify", str(w["root"] / "empty_manifest")], "not a clipexport manifest"),
    ("quantize-fp32", lambda w: ["quantize", str(w["art"]), "--precision", "fp32"], "--precision"),
    (
        "quantize-calibration-size-zero",
        lambda w: ["quantize", str(w["art"]), "--precision", "int8", "--calibration-size", "0"],
        "--calibration-size",
    ),
    (
        "quantize-unknown-tower",
        lambda w: ["quantize", str(w["art"]), "--precision", "fp16", "--towers", "audio"],
        "--towers",
    ),
    (
        "quantize-empty-calibration-folder",
        lambda w: [
            "quantize",
            str(w["art"]),
            "--precision",
            "int8",
            "--calibration-images",
            str(w["root"] / "empty_dir"),
        ],
        "has no images",
    ),
    (
        "embed-batch-size-zero",
        lambda w: [
            "embed",
            str(w["art"]),
            "--texts",
            str(w["root"] / "a_file.txt"),
            "-o",
            str(w["root"] / "e1.npy"),
            "--batch-size",
            "0",
        ],
        "--batch-size",
    ),
    (
        "embed-output-is-a-user-folder",
        lambda w: ["embed", str(w["art"]), "--texts", str(w["root"] / "a_file.txt"), "-o", str(w["root"] / "user_dir")],
        "holds other files",
    ),
    (
        "embed-output-is-a-file",
        lambda w: [
            "embed",
            str(w["art"]),
            "--texts",
            str(w["root"] / "a_file.txt"),
            "-o",
            str(w["root"] / "a_file.txt"),
        ],
        "is a file",
    ),
    (
        "embed-duplicate-inputs",
        lambda w: [
            "embed",
            str(w["art"]),
            "--images",
            str(w["root"] / "ok.png"),
            "--images",
            str(w["root"] / "ok.png"),
            "-o",
            str(w["root"] / "d1"),
        ],
        "listed twice",
    ),
    (
        "embed-table-without-the-column",
        lambda w: [
            "embed",
            str(w["art"]),
            "--image-table",
            str(w["root"] / "paths.csv"),
            "--path-column",
            "url",
            "-o",
            str(w["root"] / "d2"),
        ],
        "has no column 'url'",
    ),
    (
        "embed-dataset-with-server",
        lambda w: [
            "embed",
            str(w["art"]),
            "--texts",
            str(w["root"] / "a_file.txt"),
            "-o",
            str(w["root"] / "d3"),
            "--server",
            "localhost:8000",
        ],
        "writes a .npy file",
    ),
    (
        "embed-images-and-texts",
        lambda w: [
            "embed",
            str(w["art"]),
            "--texts",
            str(w["root"] / "a_file.txt"),
            "--images",
            str(w["root"] / "ok.png"),
            "-o",
            str(w["root"] / "e2.npy"),
        ],
        "either",
    ),
    (
        "embed-texts-missing",
        lambda w: ["embed", str(w["art"]), "--texts", str(w["root"] / "nope.txt"), "-o", str(w["root"] / "e3.npy")],
        "does not exist",
    ),
    (
        "embed-texts-empty",
        lambda w: ["embed", str(w["art"]), "--texts", str(w["root"] / "empty.txt"), "-o", str(w["root"] / "e4.npy")],
        "is empty",
    ),
    (
        "embed-image-folder-without-images",
        lambda w: ["embed", str(w["art"]), "--images", str(w["root"] / "empty_dir"), "-o", str(w["root"] / "e5.npy")],
        "has no images",
    ),
    (
        "embed-corrupt-image",
        lambda w: ["embed", str(w["art"]), "--images", str(w["root"] / "corrupt.jpg"), "-o", str(w["root"] / "e6.npy")],
        "cannot read",
    ),
    (
        "embed-missing-precision",
        lambda w: [
            "embed",
            str(w["art"]),
            "--images",
            str(w["root"] / "ok.png"),
            "--precision",
            "int8",
            "-o",
            str(w["root"] / "e7.npy"),
        ],
        "no int8 graph",
    ),
    (
        "embed-damaged-graph",
        lambda w: [
            "embed",
            str(w["root"] / "damaged"),
            "--texts",
            str(w["root"] / "a_file.txt"),
            "-o",
            str(w["root"] / "e8.npy"),
        ],
        "damaged",
    ),
    (
        "classify-empty-folder",
        lambda w: ["classify", str(w["art"]), str(w["root"] / "empty_dir"), "--labels", "a,b"],
        "has no images",
    ),
    (
        "classify-folder-named-like-image",
        lambda w: ["classify", str(w["art"]), str(w["root"] / "x.jpg"), "--labels", "a,b"],
        "has no images",
    ),
    (
        "classify-missing-image",
        lambda w: ["classify", str(w["art"]), str(w["root"] / "nope.png"), "--labels", "a,b"],
        "does not exist",
    ),
    (
        "classify-template-without-braces",
        lambda w: ["classify", str(w["art"]), str(w["root"] / "ok.png"), "--labels", "a,b", "--template", "a photo"],
        "exactly one {}",
    ),
    (
        "classify-template-named-field",
        lambda w: ["classify", str(w["art"]), str(w["root"] / "ok.png"), "--labels", "a,b", "--template", "{name}"],
        "exactly one {}",
    ),
    (
        "classify-template-two-fields",
        lambda w: ["classify", str(w["art"]), str(w["root"] / "ok.png"), "--labels", "a,b", "--template", "{0} {1}"],
        "exactly one {}",
    ),
    (
        "classify-template-format-spec",
        lambda w: ["classify", str(w["art"]), str(w["root"] / "ok.png"), "--labels", "a,b", "--template", "{:d}"],
        "exactly one {}",
    ),
    (
        "classify-template-broken",
        lambda w: ["classify", str(w["art"]), str(w["root"] / "ok.png"), "--labels", "a,b", "--template", "a {"],
        "template",
    ),
    (
        "classify-no-labels",
        lambda w: ["classify", str(w["art"]), str(w["root"] / "ok.png"), "--labels", ","],
        "no labels",
    ),
    (
        "classify-duplicate-labels",
        lambda w: ["classify", str(w["art"]), str(w["root"] / "ok.png"), "--label", "cat", "--label", "cat"],
        "duplicate label",
    ),
    ("bench-output-is-file", lambda w: ["bench", str(w["art"]), "-o", str(w["root"] / "a_file.txt")], "is a file"),
    ("bench-batch-size-zero", lambda w: ["bench", str(w["art"]), "--batch-sizes", "0"], "--batch-sizes"),
    ("bench-unknown-precision", lambda w: ["bench", str(w["art"]), "--precisions", "int4"], "unknown precision"),
    ("build-unknown-recipe", lambda w: ["build", str(w["art"]), "--recipe", "no-such", "--dry-run"], "not found"),
    ("build-unknown-tower", lambda w: ["build", str(w["art"]), "--towers", "audio", "--dry-run"], "--towers"),
    ("recipes-unknown", lambda w: ["recipes", "no-such"], "not found"),
    (
        "verify-accuracy-drop-nan",
        lambda w: [
            "verify",
            str(w["art"]),
            "--labeled-images",
            str(w["root"] / "labelled"),
            "--max-accuracy-drop",
            "nan",
        ],
        "finite number of points",
    ),
    (
        "quantize-accuracy-drop-nan",
        lambda w: [
            "quantize",
            str(w["art"]),
            "--precision",
            "int8",
            "--labeled-images",
            str(w["root"] / "labelled"),
            "--max-accuracy-drop",
            "nan",
        ],
        "finite number of points",
    ),
    (
        "verify-classes-txt-empty-prompt",
        lambda w: ["verify", str(w["art"]), "--labeled-images", str(w["root"] / "labelled_tab")],
        "must both be non-empty",
    ),
    (
        "verify-class-folder-underscore",
        lambda w: ["verify", str(w["art"]), "--labeled-images", str(w["root"] / "labelled_underscore")],
        "gives an empty prompt",
    ),
    (
        "triton-name-not-ascii",
        lambda w: ["triton", str(w["art"]), "-o", str(w["root"] / "r1"), "--name", "ünï"],
        "not a usable model name",
    ),
    (
        "triton-name-too-long",
        lambda w: ["triton", str(w["art"]), "-o", str(w["root"] / "r2"), "--name", "x" * 300],
        "not a usable model name",
    ),
    (
        "embed-server-url-malformed",
        lambda w: [
            "embed",
            str(w["art"]),
            "--texts",
            str(w["root"] / "a_file.txt"),
            "-o",
            str(w["root"] / "e.npy"),
            "--server",
            "https://",
        ],
        "is not host:port",
    ),
]


@pytest.mark.parametrize("case", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_one_line_exit_2(case: tuple[str, Args, str], workspace: dict[str, Path]) -> None:
    _, build_args, phrase = case
    before = sorted(p.name for p in workspace["root"].iterdir())
    result = CliRunner().invoke(main, build_args(workspace))
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output and result.exception is None or isinstance(result.exception, SystemExit), output
    # Besides progress lines ("[  0.0s] loading ..."), the output is the one error line.
    lines = [line for line in output.splitlines() if line.strip() and not PROGRESS.match(line)]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and len(lines) == 1, output
    assert phrase in errors[0], errors[0]
    assert sorted(p.name for p in workspace["root"].iterdir()) == before  # nothing half-written
    assert (workspace["root"] / "user_dir" / "notes.txt").read_text() == "mine"


def test_the_table_is_large_enough() -> None:
    assert len(MISTAKES) >= 30


def _without(module: str, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a process where `module` cannot be imported (an extra that is not installed)."""
    code = (
        f"import sys\nsys.modules[{module!r}] = None\nsys.argv = ['clipexport', *{list(args)!r}]\n"
        "from clipexport.cli import main\nmain()\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_help_needs_no_extra_and_a_missing_one_is_one_line(tmp_path: Path) -> None:
    assert _without("PIL", "--help").returncode == 0  # the core install (numpy, click) runs --help
    done = _without("PIL", "embed", str(tmp_path / "art"), "--images", str(tmp_path), "-o", str(tmp_path / "out"))
    assert done.returncode in (2, 3), done.stderr  # the missing artifact may be found first
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr


def test_a_library_missing_at_a_module_top_is_the_install_line(tiny_vit: Path, tmp_path: Path) -> None:
    done = _without("PIL", "embed", str(tiny_vit), "--images", str(EXAMPLES), "-o", str(tmp_path / "out"))
    assert done.returncode == 3 and "'pillow'" in done.stderr and "clipexport[runtime]" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_embed_into_a_log_prints_progress_lines(tiny_vit: Path, tmp_path: Path) -> None:
    """Piped to a file or a CI log (no terminal), a long job prints progress lines, not one word."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipexport",
            "embed",
            str(tiny_vit),
            "--images",
            str(EXAMPLES),
            "-o",
            str(tmp_path / "out"),
            "--batch-size",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("embedding ")]
    total = len([p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg")])
    assert lines and lines[0].startswith("embedding 2/") and lines[-1].startswith(f"embedding {total}/{total} (100%)")


def test_embed_index_and_classify_print_json_for_scripts(tiny_vit: Path, tmp_path: Path) -> None:
    """--json: stdout is JSON and nothing else (skips, warnings and progress stay on stderr)."""
    from clipexport.cli import main

    runner = CliRunner()
    embedded = runner.invoke(
        main, ["embed", str(tiny_vit), "--images", str(EXAMPLES), "-o", str(tmp_path / "ds"), "--json", "-q"]
    )
    assert embedded.exit_code == 0, embedded.output
    result = json.loads(embedded.stdout)
    assert result["rows"] == result["inputs"] == len(list(EXAMPLES.glob("*.png"))) and result["skipped"] == []
    indexed = runner.invoke(main, ["index", str(tmp_path / "ds"), "-o", str(tmp_path / "idx"), "--json", "-q"])
    assert indexed.exit_code == 0, indexed.output
    index = json.loads(indexed.stdout)
    assert index["rows"] == result["rows"] and index["index"]["exact"] and index["target_met"] is True
    labels = ["red circle", "a blue square"]  # a label with spaces stays one value
    classified = runner.invoke(
        main, ["classify", str(tiny_vit), str(EXAMPLES / "red-circle.png"), "--labels", ",".join(labels), "--json"]
    )
    assert classified.exit_code == 0, classified.output
    (row,) = [json.loads(line) for line in classified.stdout.splitlines()]
    assert row["image"].endswith("red-circle.png") and {t["label"] for t in row["top"]} == set(labels)
    assert abs(sum(t["probability"] for t in row["top"]) - 1) < 1e-5


def test_verify_recipes_and_models_print_json_for_scripts(tiny_vit: Path, tmp_path: Path) -> None:
    from clipexport.cli import main

    runner = CliRunner()
    verified = runner.invoke(main, ["verify", str(tiny_vit), "--num-images", "4", "--json", "-q"])
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout)
    assert report["passed"] is True and report == json.loads((tiny_vit / "parity.json").read_text())
    listed = [json.loads(line) for line in runner.invoke(main, ["recipes", "--json"]).stdout.splitlines()]
    assert len(listed) >= 5 and {"name", "precision", "description", "source"} <= set(listed[0])
    one = runner.invoke(main, ["recipes", listed[0]["name"], "--json"])
    assert json.loads(one.stdout) == listed[0]
    names = [json.loads(line)["model"] for line in runner.invoke(main, ["models", "--json"]).stdout.splitlines()]
    assert "ViT-B-32" in names


def test_a_library_installed_but_broken_is_not_sent_to_install_the_extra(tmp_path, monkeypatch) -> None:
    """[serve] with [bulk] once gave pyarrow 26 beside numpy 1.26: pyarrow is installed but does not
    import, and "install clipexport[bulk]" was the wrong advice."""
    import sys

    from clipexport import _deps
    from clipexport.errors import MissingDependencyError

    package = tmp_path / "brokenlib"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('brokenlib requires NumPy 2.0 or newer, found 1.26.4')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(_deps._HINTS, "brokenlib", ("brokenlib", "bulk"))
    with pytest.raises(MissingDependencyError) as caught:
        _deps.require("brokenlib", "writing the dataset")
    message = str(caught.value)
    assert "installed but does not import here" in message and "NumPy 2.0" in message
    assert "clipexport[bulk]" not in message
    sys.modules.pop("brokenlib", None)
    monkeypatch.setitem(_deps._HINTS, "absentlib", ("absentlib", "bulk"))  # not there at all: the extra brings it
    with pytest.raises(MissingDependencyError, match=r"not importable .* pip install 'clipexport\[bulk\]'"):
        _deps.require("absentlib", "writing the dataset")
