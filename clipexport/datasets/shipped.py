"""The data sets that ship with the package: the default calibration set and its held-out photos
(`CLIPEXPORT_CALIBRATION_DIR` points at one of your own), and the verification set (seeded
synthetic images, built-in captions), deliberately unlike the export's tracing inputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from clipexport._deps import require
from clipexport.errors import InputError
from clipexport.files import package_data

# README); CLIPEXPORT_CALIBRATION_DIR points at a folder of your own with images/ and captions.txt.
CALIBRATION_DIR_ENV = "CLIPEXPORT_CALIBRATION_DIR"
_PACKAGED_CALIBRATION_DIR = package_data("calibration")

DEFAULT_NUM_IMAGES = 24
DEFAULT_SEED = 1234

# Varied on purpose: empty, one word, long enough to be truncated at the context length,
# punctuation, numbers, non-ASCII, HTML entities, whitespace runs.
DEFAULT_CAPTIONS = (
    "a photo of a cat",
    "a photo of a dog",
    "a diagram of a neural network",
    "",
    "   ",
    "red",
    "A RED DOUBLE-DECKER BUS DRIVING DOWN A RAINY LONDON STREET AT NIGHT",
    "two people riding bicycles along a beach at sunset, with surfers in the water behind them",
    "a bowl of ramen with a soft-boiled egg, nori, scallions and sliced pork on a wooden table",
    "an aerial photograph of farmland: green, yellow & brown fields divided by hedgerows",
    "the number 42 painted on a white door",
    "it's a close-up of a hummingbird's wings mid-flight!!!",
    "café au lait in a ceramic mug, naïve watercolour style",
    "東京の夜景",
    "a 🐶 wearing sunglasses 😎",
    "&quot;vintage&quot; poster &amp;amp; typography",
    "a screenshot of a spreadsheet with\tcolumns and\nrows",
    "x-ray of a human hand",
    " ".join(["a very long caption that keeps describing the same scene over and over"] * 12),
    "a blurry photo of a mountain lake reflecting snow-capped peaks under a clear blue sky",
)


def default_calibration_dir() -> Path:
    configured = os.environ.get(CALIBRATION_DIR_ENV)
    root = Path(configured).expanduser() if configured else _PACKAGED_CALIBRATION_DIR
    if not (root / "images").is_dir() or not (root / "captions.txt").is_file():
        raise InputError(
            f"the default calibration set was not found at {root}; pass --calibration-images DIR and "
            f"--calibration-texts FILE, or set {CALIBRATION_DIR_ENV} to a folder with images/ and captions.txt"
        )
    return root


def heldout_image_dir() -> Path | None:
    """The held-out photos beside the default set (never calibrated on), if this install has them."""
    try:
        folder = default_calibration_dir() / "heldout"
    except InputError:
        return None
    return folder if folder.is_dir() else None


def synthetic_images(count: int = DEFAULT_NUM_IMAGES, seed: int = DEFAULT_SEED) -> list[Any]:
    """Deterministic PIL images: varied sizes, aspect ratios, modes, shapes, gradients and noise."""
    Image = require("PIL.Image", "making verification images")
    ImageDraw = require("PIL.ImageDraw", "making verification images")
    rng = np.random.default_rng(seed)
    sizes = [(224, 224), (640, 480), (300, 500), (97, 131), (1024, 256), (32, 48), (800, 800), (256, 1024)]
    images = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack(
            [
                (xx / max(width - 1, 1)) * rng.uniform(0, 255),
                (yy / max(height - 1, 1)) * rng.uniform(0, 255),
                np.full_like(xx, rng.uniform(0, 255)),
            ],
            axis=-1,
        )
        base += rng.normal(0, rng.uniform(0, 40), size=base.shape)
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 6))):
            x0, x1 = sorted(rng.integers(0, width, 2).tolist())
            y0, y1 = sorted(rng.integers(0, height, 2).tolist())
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        if index % 5 == 4:
            image = image.convert("L")  # grayscale inputs go through the RGB conversion path
        images.append(image)
    return images
