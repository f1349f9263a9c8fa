"""Zero-shot accuracy on labelled images (`verify --labeled-images`), and the demo CLIP trained in
this repository: it classifies the shipped examples right and its variants keep their accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipexport.datasets import DEFAULT_TEMPLATES, load_labelled_folder
from clipexport.errors import InputError
from clipexport.parity.report import AccuracyResult, ParityReport
from clipexport.parity.stats import class_embeddings, zero_shot_accuracy
from clipexport.verify.run import VerifyOptions, verify_artifact

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "clipexport" / "data" / "demo"
HELDOUT = DEMO / "heldout"
EXAMPLES = REPO / "examples"
# The shipped demo model reached 84.2% zero-shot top-1 on train.py's 960 held-out scenes (training.json;
# the issue aimed at 90%): a floor just under it catches a regressed checkpoint or pipeline. Its
# variants are held to the README's bounds.
DEMO_MIN_TOP1 = 0.80
FP16_MAX_DROP_POINTS = 0.1
INT8_CPU_MAX_DROP_POINTS = 1.0


def _folder(tmp_path: Path, classes: dict[str, int]) -> Path:
    from PIL import Image

    root = tmp_path / "labelled"
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (32, 32), (40 * i % 255, 90, 200)).save(root / name / f"{i}.png")
    return root


def test_labelled_folder_rules(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"golden_retriever": 2, "tabby_cat": 1})
    labelled = load_labelled_folder(root)
    assert labelled.prompts == ("golden retriever", "tabby cat") and labelled.labels == (0, 0, 1)
    assert labelled.templates == DEFAULT_TEMPLATES
    (root / "classes.txt").write_text("tabby_cat\ta tabby cat\n")
    (root / "templates.txt").write_text("a photo of {}.\n\nart of {}\n")
    labelled = load_labelled_folder(root)
    assert labelled.prompts == ("golden retriever", "a tabby cat") and labelled.templates == (
        "a photo of {}.",
        "art of {}",
    )
    (root / "classes.json").write_text(json.dumps({"golden_retriever": "a dog"}))
    assert load_labelled_folder(root).prompts == ("a dog", "tabby cat")  # JSON wins over classes.txt


@pytest.mark.parametrize(
    ("problem", "needle"),
    [
        ("missing", "does not exist"),
        ("one_class", "at least 2"),
        ("empty_class", "has no images"),
        ("bad_template", "exactly one {}"),
        ("unknown_class", "do not exist"),
        ("duplicate_prompt", "share a prompt"),
    ],
)
def test_labelled_folder_mistakes_are_one_line(tmp_path: Path, problem: str, needle: str) -> None:
    root = _folder(tmp_path, {"a": 1} if problem == "one_class" else {"a": 1, "b": 1})
    templates = None
    if problem == "missing":
        root = tmp_path / "nope"
    elif problem == "empty_class":
        (root / "c").mkdir()
    elif problem == "bad_template":
        templates = tmp_path / "t.txt"
        templates.write_text("no placeholder\n")
    elif problem == "unknown_class":
        (root / "classes.txt").write_text("zebra\ta zebra\n")
    elif problem == "duplicate_prompt":
        (root / "classes.txt").write_text("a\tsame\nb\tsame\n")
    with pytest.raises(InputError, match=needle):
        load_labelled_folder(root, templates)


def test_prompt_ensembling_and_top_k() -> None:
    # Two classes x two templates; images closest to class 1, then class 0.
    text = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1]], dtype=np.float32)
    classes = class_embeddings(text, templates=2)
    assert classes.shape == (2, 3) and np.allclose(np.linalg.norm(classes, axis=1), 1)
    result = zero_shot_accuracy(np.array([[0, 1, 0], [1, 0.2, 0]], np.float32), classes, np.array([1, 1]))
    assert result.top1 == 0.5 and result.top5 == 1.0 and result.predictions == (1, 0)


def test_accuracy_gate_fails_the_report() -> None:
    ok = AccuracyResult("fp16", "onnxruntime", 0.9, 1.0, 0.05, 1.0, {}, max_drop_points=1.0, measured=40)
    bad = AccuracyResult("int8", "onnxruntime", 0.8, 1.0, 10.0, 0.9, {"x": 0.9}, max_drop_points=1.0, measured=40)
    assert ParityReport("a", "now", {}, accuracy=[ok]).passed
    report = ParityReport("a", "now", {}, accuracy=[ok, bad])
    assert not report.passed and "FAIL: drop over 1.0 pt" in report.table()


def test_verify_labeled_images_on_a_tiny_model(tiny_vit: Path, tmp_path: Path) -> None:
    """Any ImageFolder: PyTorch FP32 and the ONNX graph give the same accuracy, recorded in parity.json."""
    import shutil

    artifact = tmp_path / "artifact"
    shutil.copytree(tiny_vit, artifact)
    root = _folder(tmp_path, {"red": 3, "green": 2, "blue": 2})
    report = verify_artifact(VerifyOptions(artifact=artifact, labeled_images=root, max_accuracy_drop=0.0))
    pytorch, onnx = report.accuracy
    assert (pytorch.backend, onnx.backend) == ("pytorch", "onnxruntime")
    assert onnx.top1 == pytorch.top1 and onnx.drop_points == 0 and onnx.agreement == 1.0 and report.passed
    assert set(onnx.per_class_agreement) == {"red", "green", "blue"}
    saved = json.loads((artifact / "parity.json").read_text())["accuracy"]
    assert saved["inputs"]["images"] == 7 and saved["inputs"]["templates"] == len(DEFAULT_TEMPLATES)
    assert [r["backend"] for r in saved["results"]] == ["pytorch", "onnxruntime"]


# ---- the demo model ------------------------------------------------------------------------------

needs_demo = pytest.mark.skipif(not (DEMO / "demo-clip.safetensors").is_file(), reason="demo checkpoint not trained")


@pytest.fixture(scope="module")
def demo(demo_quantized: Path) -> Path:
    """The demo CLIP exported and quantized once per test run (conftest): fp16, int8 --target cpu, fp8."""
    return demo_quantized


@needs_demo
def test_shipped_checkpoint_matches_its_record() -> None:
    from clipexport.files import sha256_file

    record = json.loads((DEMO / "training.json").read_text())
    assert sha256_file(DEMO / "demo-clip.safetensors") == record["sha256"]
    assert (DEMO / "demo-clip.safetensors").stat().st_size <= 5 * 1024 * 1024
    assert record["heldout"]["top1"] >= DEMO_MIN_TOP1 and record["heldout"]["classes"] == 48


@needs_demo
def test_demo_classifies_the_shipped_examples(demo: Path) -> None:
    from clipexport.demo.shapes import CLASSES
    from clipexport.runtime import ClipRuntime

    examples = sorted(EXAMPLES.glob("*.png"))
    assert examples
    with ClipRuntime.load(demo) as runtime:
        probs = runtime.classify(examples, list(CLASSES), templates=["a {}."])
    for path, row in zip(examples, probs):
        assert CLASSES[int(row.argmax())] == path.stem.replace("-", " "), path.name


@needs_demo
def test_demo_accuracy_per_precision_on_the_shipped_heldout(demo: Path) -> None:
    """The trained model where FP16 and INT8 actually bite: each variant keeps its accuracy."""
    from clipexport.artifact.manifest import Tower, read_manifest
    from clipexport.artifact.precision import Precision, Target

    manifest = read_manifest(demo)  # made by the shared fixture exactly as these calls would make them
    for precision, target in ((Precision.FP16, None), (Precision.INT8, Target.CPU)):
        assert manifest.tower(Tower.VISION).graph(precision).details.target == target
    report = verify_artifact(
        VerifyOptions(artifact=demo, precisions=("fp32", "fp16", "int8"), labeled_images=HELDOUT, write_report=False)
    )  # the shared artifact's parity.json is search's
    accuracy = {a.precision if a.backend != "pytorch" else "pytorch": a for a in report.accuracy}
    assert accuracy["pytorch"].top1 >= DEMO_MIN_TOP1, report.table()
    assert accuracy["fp32"].drop_points == 0
    assert accuracy["fp16"].drop_points <= FP16_MAX_DROP_POINTS, report.table()
    assert accuracy["int8"].drop_points <= INT8_CPU_MAX_DROP_POINTS, report.table()
    assert report.passed, report.table()


@needs_demo
def test_demo_tensorrt_placement_int8_loads_on_onnxruntime(demo: Path, tmp_path: Path) -> None:
    """The trained demo's TensorRT-placement INT8 graphs (16 attention nodes restored by the cosine
    fallback) crashed onnxruntime 1.24's CPU session at ORT_ENABLE_ALL; they load and run now. With
    the cosine fallback alone they lose 1.6 top-1 points on the held-out set; the accuracy-targeted
    fallback, validated on a separate generated folder, brings the held-out drop within 1 point."""
    import shutil

    from clipexport.demo.shapes import write_labelled_folder
    from clipexport.precision.accuracy import AccuracyTarget
    from clipexport.precision.calibrated import Target
    from clipexport.precision.pipeline import Precision, QuantizeOptions, quantize_artifact

    artifact = tmp_path / "demo"
    shutil.copytree(demo, artifact, ignore=shutil.ignore_patterns("*.int8.onnx", "*.fp16.onnx"))
    write_labelled_folder(tmp_path / "validation", per_class=2, seed=20_000)
    target = AccuracyTarget(
        load_labelled_folder(tmp_path / "validation", HELDOUT / "templates.txt"), INT8_CPU_MAX_DROP_POINTS
    )
    quantize_artifact(
        QuantizeOptions(artifact=artifact, precision=Precision.INT8, target=Target.TENSORRT, accuracy=target)
    )
    report = verify_artifact(
        VerifyOptions(
            artifact=artifact, precisions=("int8",), labeled_images=HELDOUT, max_accuracy_drop=INT8_CPU_MAX_DROP_POINTS
        )
    )
    assert report.passed, report.table()


def test_quantize_targets_labelled_accuracy(tiny_vit: Path, tmp_path: Path) -> None:
    """`quantize --labeled-images` with a zero-point bound: the INT8 graphs it writes lose no top-1
    against PyTorch on that folder (verify measures it independently), and the manifest says how."""
    import shutil

    from clipexport.artifact.manifest import Tower, read_manifest
    from clipexport.precision.accuracy import AccuracyTarget
    from clipexport.precision.calibrated import Target
    from clipexport.precision.pipeline import Precision, QuantizeOptions, quantize_artifact

    artifact = tmp_path / "artifact"
    shutil.copytree(tiny_vit, artifact)
    root = _folder(tmp_path, {"red": 4, "green": 3, "blue": 3})
    target = AccuracyTarget(load_labelled_folder(root), max_drop_points=0.0)
    quantize_artifact(QuantizeOptions(artifact=artifact, precision=Precision.INT8, target=Target.CPU, accuracy=target))
    manifest = read_manifest(artifact)
    records = [manifest.tower(t).graph(Precision.INT8).details for t in Tower]
    record = records[0].accuracy_fallback
    assert record == records[1].accuracy_fallback and record.images == 10 and record.max_drop_points == 0.0
    steps = record.steps
    assert steps[0].restored == 0 and steps[-1].drop_points <= 0.0
    assert all(s.drop_points > 0.0 for s in steps[:-1])  # it stopped at the first step within the bound
    extra = sum(len(d.high_precision_nodes["accuracy_fallback"]) for d in records)
    assert extra == steps[-1].restored
    report = verify_artifact(
        VerifyOptions(artifact=artifact, precisions=("int8",), labeled_images=root, max_accuracy_drop=0.0)
    )
    assert report.passed, report.table()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--precision", "fp16", "--labeled-images", "LABELLED"], "applies to int8, fp8"),
        (["--precision", "int8", "--max-accuracy-drop", "1"], "need --labeled-images"),
        (["--precision", "int8", "--labeled-images", "LABELLED", "--max-accuracy-drop", "-1"], ">= 0"),
        (["--precision", "int8", "--labeled-images", "nowhere"], "does not exist"),
    ],
)
def test_quantize_accuracy_mistakes_are_one_line(tiny_vit: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    from click.testing import CliRunner

    from clipexport.cli import main

    root = _folder(tmp_path, {"a": 1, "b": 1})
    args = [str(root) if a == "LABELLED" else str(tmp_path / a) if a == "nowhere" else a for a in args]
    result = CliRunner().invoke(main, ["quantize", str(tiny_vit), *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not any(tiny_vit.glob("*.int8.onnx")) and not any(tiny_vit.glob("*.fp16.onnx"))


def test_demo_training_is_reproducible(tmp_path: Path) -> None:
    """Same seed, steps, threads and libraries: the same weights, byte for byte (a short run of the
    shipped recipe; the full one is what made clipexport/data/demo)."""
    import subprocess
    import sys

    digests = []
    runs = {
        run: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clipexport.demo.train",
                "--steps",
                "6",
                "--batch",
                "32",
                "--pool",
                "256",
                "--eval-every",
                "3",
                "--out",
                str(tmp_path / run),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for run in ("a", "b")
    }  # at once: the same thread count in each, so contention changes time, not weights
    for run, process in runs.items():
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err.decode(errors="replace")[-2000:]
        record = json.loads((tmp_path / run / "training.json").read_text())
        assert record["steps"] == 6 and [p["step"] for p in record["curve"]] == list(range(1, 7))
        digests.append(record["sha256"])
    assert digests[0] == digests[1]
    assert (tmp_path / "a" / "tokenizer" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer" / "tokenizer.json"
    ).read_bytes()
