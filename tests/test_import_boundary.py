"""The import boundary is the architecture: light modules never pull in heavy libraries."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HEAVY = ("torch", "open_clip", "transformers", "modelopt", "torchvision", "onnx", "tensorrt")

PROBE = """
import sys, importlib
for name in {modules!r}:
    importlib.import_module(name)
loaded = sorted(m for m in {heavy!r} if m in sys.modules)
print(",".join(loaded))
"""


def _loaded_after_import(*modules: str) -> str:
    code = PROBE.format(modules=modules, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_light_modules_import_nothing_heavy() -> None:
    assert (
        _loaded_after_import(
            "clipexport",
            "clipexport.artifact.manifest",
            "clipexport.files",
            "clipexport.errors",
            "clipexport.parity.stats",
            "clipexport.parity.report",
            "clipexport.parity.gates",
            "clipexport.cli",
        )
        == ""
    )


def test_cli_help_does_not_import_torch() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from clipexport.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def test_runtime_backends_and_build_planning_import_nothing_heavy() -> None:
    # The TensorRT backend and `build --dry-run` must load where only the runtime is installed.
    assert (
        _loaded_after_import(
            "clipexport.runtime",
            "clipexport.runtime.backends.onnxruntime",
            "clipexport.runtime.backends.tensorrt",
            "clipexport.runtime.backends.onnxruntime_trt",
            "clipexport.runtime.backends.openvino",
            "clipexport.bulk.npy",
            "clipexport.bulk.job",
            "clipexport.bulk.local",
            "clipexport.trt.recipe",
            "clipexport.trt.profiles",
            "clipexport.artifact.provenance",
            "clipexport.trt.pipeline",
            "clipexport.gpu",
            "clipexport.precision.calibration",
            "clipexport.search.index",
            "clipexport.search.searcher",
            "clipexport.verify.retrieval",
            "clipexport.parity.retrieval",
        )
        == ""
    )


def test_the_dockerfile_names_modules_that_exist() -> None:
    """The images check themselves at build time by importing our modules; a renamed package (it was
    `clipexport.build`, now `clipexport.trt`) would only fail in a docker build, which CI cannot run."""
    import importlib.util
    import re

    named = set(re.findall(r"\bclipexport(?:\.\w+)+", (REPO / "Dockerfile").read_text()))
    assert named, "the Dockerfile no longer imports any clipexport module"
    missing = sorted(m for m in named if importlib.util.find_spec(m) is None)
    assert not missing, missing
