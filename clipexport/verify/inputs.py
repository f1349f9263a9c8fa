"""The verification set: seeded synthetic images and a built-in caption list, or the user's own.

Deliberately unlike the export's tracing inputs (random tensors, two short captions): parity
is measured on inputs the graph was not traced with, at other batch sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clipexport._deps import require
from clipexport.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
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
        base = np.stack([
            (xx / max(width - 1, 1)) * rng.uniform(0, 255),
            (yy / max(height - 1, 1)) * rng.uniform(0, 255),
            np.full_like(xx, rng.uniform(0, 255)),
        ], axis=-1)
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


def image_files(folder: str | Path, option: str = "--images", what: str = "image folder") -> list[Path]:
    """Every image file in a folder, sorted by name; one clear line naming `option` when there is none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"{what} {root} does not exist; pass an existing folder with {option}")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise InputError(f"{what} {root} has no images ({', '.join(IMAGE_SUFFIXES)}); add some or drop {option}")
    return paths


def load_image_folder(folder: str | Path) -> tuple[list[Any], list[str]]:
    """(images, names) of every image file in a folder, sorted by name."""
    Image = require("PIL.Image", "reading images")
    paths = image_files(folder)
    images = []
    for path in paths:
        try:
            with Image.open(path) as handle:
                handle.load()
                images.append(handle.copy())
        except Exception as exc:
            raise InputError(f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or replace it") from None
    return images, [p.name for p in paths]


def load_text_file(path: str | Path) -> list[str]:
    """One caption per line; blank lines are skipped (an empty caption is still tested by default)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"text file {file} does not exist; pass a UTF-8 file with one caption per line")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"text file {file} is not UTF-8 ({exc}); re-save it as UTF-8") from None
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise InputError(f"text file {file} has no captions; put one caption per line")
    return texts
