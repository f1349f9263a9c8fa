"""Lazy imports of optional heavy libraries, turning ImportError into an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Iterable

from clipexport.errors import MissingDependencyError

# module name -> (pip distribution, clipexport extra that brings it)
_HINTS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "export"),
    "open_clip": ("open-clip-torch", "export"),
    "transformers": ("transformers", "export"),
    "onnx": ("onnx", "export"),
    "onnxscript": ("onnxscript", "export"),
    "onnxruntime": ("onnxruntime-gpu (x86_64) or onnxruntime", "runtime"),
    "PIL": ("pillow", "runtime"),
    "regex": ("regex", "runtime"),
    "ftfy": ("ftfy", "runtime"),
    "tokenizers": ("tokenizers", "runtime"),
    "timm": ("timm", "export"),
    "modelopt": ("nvidia-modelopt[onnx]", "precision"),
    "polygraphy": ("polygraphy", "precision"),
    "tensorrt": (
        "tensorrt (on Jetson: JetPack's python3-libnvinfer, `sudo apt install python3-libnvinfer`)",
        "tensorrt",
    ),
    "matplotlib": ("matplotlib", "bench"),
    "tritonclient": ("tritonclient[http,grpc]", "client"),
    "pytriton": ("nvidia-pytriton", "serve"),
    "pyarrow": ("pyarrow", "bulk"),
    "ray": ("ray[data]", "ray"),
    "faiss": ("faiss-cpu (or faiss-gpu)", "search"),
    "openvino": ("openvino", "openvino"),
}
# Extras a machine may lack while everything else works (the tests skip, naming the extra).
OPTIONAL_EXTRAS = ("precision", "bench", "client", "serve", "tensorrt", "bulk", "ray", "search", "openvino")


def extra_of(module: str) -> str | None:
    """The clipexport extra that installs `module`, where we know it."""
    hint = _HINTS.get(module.split(".")[0])
    return hint[1] if hint else None


def installed_versions(distributions: Iterable[str]) -> dict[str, str]:
    """Version of each installed distribution among `distributions` (absent ones left out), for
    the provenance that manifests and reports record."""
    from importlib import metadata

    out = {}
    for dist in distributions:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` or raise one clear line naming the purpose and the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise _missing(module.split(".")[0], purpose, exc) from exc


def _missing(top: str, purpose: str, exc: BaseException) -> MissingDependencyError:
    dist, extra = _HINTS.get(top, (top, "export"))
    if _installed(top):  # there, but broken: installing the extra again would change nothing
        error = MissingDependencyError(
            f"{purpose} needs the Python package '{dist}', which is installed but does not import here ({exc}); "
            "install a version of it that goes with the rest of this environment (`pip check` names conflicts)"
        )
    else:
        error = MissingDependencyError(
            f"{purpose} needs the Python package '{dist}', which is not importable ({exc}); "
            f"install it with: pip install 'clipexport[{extra}]'"
        )
    error.extra = extra
    return error


def _installed(top: str) -> bool:
    """Whether module `top` is on the path at all (found, whether or not it imports)."""
    import importlib.util

    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def missing_dependency(exc: ImportError, purpose: str) -> MissingDependencyError | None:
    """The one-line install hint for an optional library a module imports at its top (PIL in the
    runtime's preprocessing), caught where a command meets it; None for anything else (a bug)."""
    top = (getattr(exc, "name", None) or "").split(".")[0]
    return _missing(top, purpose, exc) if top in _HINTS else None
