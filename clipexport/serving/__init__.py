"""Serving on NVIDIA Triton Inference Server: a model repository generated from an artifact's
manifest (`clipexport triton`), and a real Triton server on this machine (`clipexport serve`).

Nothing here imports torch: the python-backend models run `clipexport.runtime`.
"""
