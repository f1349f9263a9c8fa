"""The torch-free runtime: tokenizer, image preprocessing, backends, ClipRuntime.

Imports only numpy, pillow, regex, ftfy and the backend it runs (onnxruntime). A subprocess
test blocks torch/open_clip/transformers and runs everything here. The names below load on first
use, so importing a part (`clipexport.runtime.backends` for the backend names) needs none of
those libraries: `clipexport --help` runs with the core install alone.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ClipRuntime": "clipexport.runtime.clip_runtime",
    "ClipTokenizer": "clipexport.runtime.tokenizer",
    "ImagePreprocessor": "clipexport.runtime.preprocess",
}
__all__ = ["ClipTokenizer", "ImagePreprocessor", "ClipRuntime"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
