"""Parity between the PyTorch model and its exported graphs.

`stats` and `report` are numpy-only (the runtime may import them); `run` drives PyTorch.
"""
