"""clipexport: CLIP towers to ONNX / TensorRT, with parity reports and a torch-free runtime.

Importing the package is cheap and side-effect free; heavy libraries load inside the
functions that need them.
"""

from clipexport._version import __version__

__all__ = ["__version__"]
