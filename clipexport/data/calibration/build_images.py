"""Rebuild calibration/images/ and calibration/heldout/ from scikit-image's bundled sample photos.

Run from the repo root: `python calibration/build_images.py`. Deterministic: the same
scikit-image release gives byte-identical files. Only photos whose scikit-image docstring states
public domain or CC0 are used (see calibration/LICENSE.md).

Two disjoint splits: `images/` (calibration, 12 source photos x 12 variants = 144 images) and
`heldout/` (verification of reduced-precision graphs, 4 other source photos x 6 variants = 24),
so accuracy gates are never measured on what the quantizer was calibrated on.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

CALIBRATION_SOURCES = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "grass",
    "gravel",
    "rocket",
    "hubble_deep_field",
    "retina",
    "horse",
    "text",
)
HELDOUT_SOURCES = ("coins", "clock", "cell", "immunohistochemistry")
SHORT_SIDE = 256  # enough for 224 px crops; keeps the repo small
JPEG_QUALITY = 90
SEED = 20261123


def _source(name: str) -> Image.Image:
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array).convert("RGB")


def _shrink(image: Image.Image) -> Image.Image:
    scale = SHORT_SIDE / min(image.size)
    if scale >= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)


def _crop(
    image: Image.Image, rng: np.random.Generator, area: tuple[float, float], aspect: tuple[float, float]
) -> Image.Image:
    w, h = image.size
    frac = rng.uniform(*area)
    ratio = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1])))
    cw = int(min(w, round(np.sqrt(frac * w * h * ratio))))
    ch = int(min(h, round(np.sqrt(frac * w * h / ratio))))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


def _jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.6, 1.4))
    return ImageEnhance.Color(image).enhance(rng.uniform(0.3, 1.7))


def variants(image: Image.Image, rng: np.random.Generator, count: int) -> list[Image.Image]:
    """Deterministic augmentations that keep the photo natural: crops, flips, colour, blur, rotation."""
    recipes = [
        lambda im: im,
        ImageOps.mirror,
        lambda im: _crop(im, rng, (0.3, 0.7), (0.75, 1.33)),
        lambda im: ImageOps.mirror(_crop(im, rng, (0.5, 0.9), (0.6, 1.6))),
        lambda im: _jitter(im, rng),
        lambda im: ImageOps.grayscale(im).convert("RGB"),
        lambda im: _jitter(_crop(im, rng, (0.2, 0.5), (0.75, 1.33)), rng),
        lambda im: im.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5))),
        lambda im: im.rotate(90, expand=True),
        lambda im: ImageOps.autocontrast(_crop(im, rng, (0.4, 0.8), (0.5, 2.0))),
        lambda im: ImageOps.posterize(_jitter(im, rng), 5),
        lambda im: ImageOps.mirror(im.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BICUBIC)),
    ]
    return [recipes[i % len(recipes)](image) for i in range(count)]


def build(root: Path) -> None:
    rng = np.random.default_rng(SEED)
    for folder, sources, per_source in (("images", CALIBRATION_SOURCES, 12), ("heldout", HELDOUT_SOURCES, 6)):
        out = root / folder
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for name in sources:
            base = _shrink(_source(name))
            for index, variant in enumerate(variants(base, rng, per_source)):
                variant.convert("RGB").save(out / f"{name}_{index:02d}.jpg", quality=JPEG_QUALITY)
        print(f"wrote {len(list(out.iterdir()))} images to {out}")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
