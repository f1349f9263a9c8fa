"""clipexport: CLIP towers to ONNX / TensorRT, with parity reports and a torch-free runtime.

Importing the package is cheap and side-effect free; heavy libraries load inside the
functions that need them.
"""

__version__ = "0.1.0"
