"""File names inside an artifact folder, and the guard every name read from a manifest or a
sidecar goes through: it must resolve inside the folder. stdlib only."""

from __future__ import annotations

import os
from pathlib import Path

from clipexport.artifact.precision import Precision
from clipexport.errors import ManifestError

MANIFEST_NAME = "manifest.json"
ENGINES_DIR = "engines"
ORT_TRT_CACHE_DIR = f"{ENGINES_DIR}/ort-trt"  # ONNX Runtime's TensorRT provider caches its engines here
TIMING_CACHE = "timing.cache"  # shared by every TensorRT build of the artifact
PARITY_REPORT = "parity.json"
SENSITIVITY_REPORT = "sensitivity.json"
BENCH_DIR = "bench"

# The text-length contract: SOT + EOT, the empty caption, is the shortest cut of a variable-length
# text graph and the exporter's floor for the sequence axis (torch's exporter specialises sizes 0 and 1).
MIN_TEXT_LENGTH = 2
# Text pooling at an end-of-text position: what makes cutting the padding after EOT exact.
TRIMMABLE_POOLING = ("argmax", "eos")


def graph_file(tower: str, precision: Precision) -> str:
    """vision.onnx for the exported graph, vision.fp16.onnx / vision.int8.onnx for the others."""
    return f"{tower}.onnx" if precision.made_by_export else f"{tower}.{precision.value}.onnx"


def engine_file(tower: str, precision: Precision) -> str:
    return f"{ENGINES_DIR}/{tower}.{Precision(precision).value}.plan"


def inside(root: str | os.PathLike[str], name: str, what: str = "file") -> Path:
    """root/name, refusing names that leave the folder (absolute, `..`, or a link pointing out):
    a manifest is data, and data must not make us read or write elsewhere."""
    base = Path(root).resolve()
    if not isinstance(name, str) or not name or os.path.isabs(name) or "\\" in name:
        raise ManifestError(f"{what} name {name!r} in {base} is not a plain relative file name; re-export the artifact")
    path = (base / name).resolve()
    if path != base and base not in path.parents:
        raise ManifestError(
            f"{what} name {name!r} points outside the artifact folder {base}; refusing to use it "
            "(re-export the artifact)"
        )
    return base / name
