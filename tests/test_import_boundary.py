"""The import boundary is the architecture: light modules never pull in heavy libraries."""

import subprocess
import sys

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
