"""The demo CLIP: a small open_clip model trained in this repository (demo/train.py) on
procedurally drawn shapes, shipped as package data, so a first `classify` gives a right answer
and accuracy (not only cosine) can be measured per precision without downloading weights."""
