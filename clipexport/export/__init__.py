"""PyTorch side: load a CLIP model from its source and export each tower to ONNX.

Everything here imports torch lazily, inside functions.
"""
