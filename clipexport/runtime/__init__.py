"""The torch-free runtime: tokenizer, image preprocessing, backends, ClipRuntime.

Imports only numpy, pillow, regex, ftfy and the backend it runs (onnxruntime). A subprocess
test blocks torch/open_clip/transformers and runs everything here.
"""

from clipexport.runtime.preprocess import ImagePreprocessor
from clipexport.runtime.tokenizer import ClipTokenizer

__all__ = ["ClipTokenizer", "ImagePreprocessor", "ClipRuntime"]


def __getattr__(name: str):  # ClipRuntime pulls in the backend module; load it on first use
    if name == "ClipRuntime":
        from clipexport.runtime.clip_runtime import ClipRuntime

        return ClipRuntime
    raise AttributeError(name)
