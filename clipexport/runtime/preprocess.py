"""Image preprocessing in PIL + numpy, equal to open_clip's eval transform (torchvision on PIL)
or to Hugging Face's PIL image processors, as the manifest says.

The order of operations is the reference's, because it changes the numbers: open_clip resizes
and crops in the image's own mode and converts to RGB afterwards.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipexport.errors import InputError
from clipexport.inputs import regular_file, shown
from clipexport.artifact.manifest import Convention, PreprocessConfig, ResizeMode

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
}

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray

# Work per image is bounded before decoding: a 143-byte 20000x1 PNG resized to a 224 short side
# is a 4.5-gigapixel intermediate (5 GB). The resize intermediate is about 150 kB x the aspect
# ratio at 224 px, so 300:1 caps it near 45 MB while leaving room for real panoramas (~10:1) and
# banner strips; both limits can be raised through the environment.
MAX_PIXELS_ENV, MAX_ASPECT_RATIO_ENV = "CLIPEXPORT_MAX_IMAGE_PIXELS", "CLIPEXPORT_MAX_ASPECT_RATIO"
DEFAULT_MAX_PIXELS = 100_000_000
# --fast-decode: the JPEG's DCT scale keeps its short side at least this many times the model's
# input (224 -> >= 448 px), so the exact resize that follows still has 2x the pixels it samples.
FAST_DECODE_FACTOR = 2
DEFAULT_MAX_ASPECT_RATIO = 300.0
# Modes PIL reads with more than 8 bits per channel; open_clip's convert("RGB") clips them to 255
# (a 16-bit grayscale photo turns almost white). Parity means doing the same, and saying so.
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_warned_modes: set[str] = set()


class HighBitDepthWarning(UserWarning):
    """An image mode that the reference preprocessing (and so ours) saturates to 8 bits."""


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO

    @classmethod
    def from_env(cls) -> "ImageLimits":
        try:
            return cls(
                int(os.environ.get(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)),
                float(os.environ.get(MAX_ASPECT_RATIO_ENV, DEFAULT_MAX_ASPECT_RATIO)),
            )
        except ValueError:
            raise InputError(f"{MAX_PIXELS_ENV} / {MAX_ASPECT_RATIO_ENV} must be numbers") from None

    def check(self, size: tuple[int, int], name: str) -> None:
        width, height = size
        if width < 1 or height < 1:
            raise InputError(f"{name} has no pixels ({width}x{height})")
        if width * height > self.max_pixels:
            raise InputError(
                f"{name} is {width}x{height} ({width * height / 1e6:.0f} Mpx), over the limit of "
                f"{self.max_pixels / 1e6:.0f} Mpx; raise it with {MAX_PIXELS_ENV}=N if the image is real"
            )
        ratio = max(width, height) / min(width, height)
        if ratio > self.max_aspect_ratio:
            raise InputError(
                f"{name} is {width}x{height} (aspect ratio {ratio:.0f}:1), over the limit of "
                f"{self.max_aspect_ratio:.0f}:1 that bounds preprocessing memory; raise it with "
                f"{MAX_ASPECT_RATIO_ENV}=N if the image is real"
            )


@dataclass(frozen=True)
class SkippedImage:
    index: int
    name: str
    reason: str


T = TypeVar("T")
R = TypeVar("R")


def decode_or_skip(
    items: Sequence[T], decode: Callable[[int, T], R], skip: bool = True
) -> tuple[list[tuple[int, R]], list[tuple[int, str]]]:
    """The one decode-and-skip rule of every image path (the runtime's batches, the bulk engines'
    workers): each item decoded on its own; an unreadable one (`InputError`, its one-line reason)
    is raised, or with `skip` left out and reported by its position. Returns ([(index, decoded)],
    [(index, reason)])."""
    kept: list[tuple[int, R]] = []
    skipped: list[tuple[int, str]] = []
    for index, item in enumerate(items):
        try:
            kept.append((index, decode(index, item)))
        except InputError as exc:
            if not skip:
                raise
            skipped.append((index, str(exc)))
    return kept, skipped


def default_config(size: int = 224) -> PreprocessConfig:
    return PreprocessConfig(
        image_size=(size, size),
        mean=OPENAI_MEAN,
        std=OPENAI_STD,
        interpolation="bicubic",
        resize_mode=ResizeMode.SHORTEST,
        convention=Convention.OPEN_CLIP,
        resize_size=size,
    )


class ImagePreprocessor:
    """`preprocessor(images) -> float32 [N,3,H,W]` from paths, bytes, PIL images or HxWxC uint8 arrays."""

    def __init__(
        self, config: PreprocessConfig | None = None, exif_transpose: bool = False, limits: ImageLimits | None = None
    ):
        self.config = config or default_config()
        self.limits = limits or ImageLimits.from_env()
        if self.config.interpolation not in _RESAMPLE:
            raise InputError(
                f"unsupported interpolation '{self.config.interpolation}' (expected one of {', '.join(_RESAMPLE)})"
            )
        hf = self.config.convention in (Convention.HF, Convention.HF_TORCHVISION)
        if self.config.resize_mode is ResizeMode.LONGEST and hf:
            raise InputError(
                "resize mode 'longest' is an open_clip mode; Hugging Face processors resize shortest edge or squash"
            )
        if self.config.convention is Convention.HF_TORCHVISION and self.config.interpolation not in _TORCH_FILTERS:
            raise InputError(
                f"interpolation '{self.config.interpolation}' of a torchvision-backend processor is not "
                "reproduced (bilinear and bicubic are); re-export with transformers' PIL backend"
            )
        self.exif_transpose = exif_transpose
        self._mean = np.asarray(self.config.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(self.config.std, dtype=np.float32).reshape(3, 1, 1)

    @classmethod
    def from_manifest(
        cls, manifest: str | os.PathLike | Mapping[str, Any] | Any, exif_transpose: bool = False
    ) -> "ImagePreprocessor":
        """From an artifact folder, a manifest.json path, a manifest dict, or a Manifest."""
        from clipexport.artifact.manifest import Manifest, read_manifest

        if isinstance(manifest, (str, os.PathLike)):
            path = Path(manifest)
            manifest = read_manifest(path.parent if path.is_file() else path)
        elif isinstance(manifest, Mapping):
            manifest = Manifest.from_dict(manifest)
        return cls(manifest.preprocess, exif_transpose=exif_transpose)

    def __call__(
        self, images: ImageInput | Sequence[ImageInput], on_error: Literal["raise", "skip"] = "raise"
    ) -> np.ndarray:
        return self.process(images, on_error)[0]

    def process(
        self, images: ImageInput | Sequence[ImageInput], on_error: Literal["raise", "skip"] = "raise"
    ) -> tuple[np.ndarray, list[SkippedImage]]:
        """(batch, skipped): with on_error="skip", unreadable items are left out and reported."""
        items = [images] if _is_single(images) else list(images)  # type: ignore[arg-type]
        h, w = self.config.image_size
        out = np.empty((len(items), 3, h, w), dtype=np.float32)
        filled = 0

        def decode(index: int, item: ImageInput) -> None:
            nonlocal filled
            out[filled] = self.one(item, name=_describe(item, index))  # nothing is written when it raises
            filled += 1

        _, bad = decode_or_skip(items, decode, skip=on_error == "skip")
        return out[:filled], [SkippedImage(i, _describe(items[i], i), reason) for i, reason in bad]

    def one(self, item: ImageInput, name: str = "image") -> np.ndarray:
        """float32 [3, H, W]: the model's input, exactly as the source library makes it."""
        return self.normalize(self.pixels(item, name))

    def pixels(self, item: ImageInput, name: str = "image", fast_decode: bool = False) -> np.ndarray:
        """uint8 [3, H, W]: the resized and cropped image, before normalisation. Every convention
        ends in an elementwise normalisation of these bytes (`normalize`), so decode workers can
        send a quarter of the float32 bytes and the parent normalises whole batches at once.
        `fast_decode`: a JPEG is decoded at a reduced DCT scale (PIL `draft`) that keeps its short
        side at least FAST_DECODE_FACTOR x the model's input, then resized exactly: faster on
        camera photos, not bit-exact (see README "--fast-decode")."""
        return self.pixels_sized(item, name, fast_decode)[0]

    def pixels_sized(
        self, item: ImageInput, name: str = "image", fast_decode: bool = False
    ) -> tuple[np.ndarray, tuple[int, int], bool]:
        """`pixels`, the image's (width, height) as the decoder found it: its full size (before a
        reduced --fast-decode), EXIF-rotated where `exif_transpose` rotates it; and whether it was
        decoded the --fast-decode way (a JPEG whose reduced decode worked)."""
        image = open_image(item, name, self.limits, draft=self._draft_size() if fast_decode else None)
        drafted = SOURCE_SIZE in image.info
        size = image.info.get(SOURCE_SIZE, image.size)
        if image.mode in _HIGH_BIT_DEPTH_MODES and image.mode not in _warned_modes:
            _warned_modes.add(image.mode)
            warnings.warn(
                f"{name} has {image.mode} pixels (more than 8 bits); like open_clip, preprocessing "
                "clips them to 8 bits, which turns most 16-bit images nearly white: convert such "
                "images to 8 bits yourself if that is not what you want",
                HighBitDepthWarning,
                stacklevel=2,
            )
        if self.exif_transpose:
            before = image.size
            image = ImageOps.exif_transpose(image)
            if image.size != before:  # a quarter turn
                size = (size[1], size[0])
        if self.config.convention is Convention.HF:
            return self._hf(image), size, drafted
        if self.config.convention is Convention.HF_TORCHVISION:
            return self._hf_torchvision(image), size, drafted
        return self._open_clip(image), size, drafted

    def _open_clip(self, image: Image.Image) -> np.ndarray:
        # open_clip.transform.image_transform (eval), branch by branch.
        cfg = self.config
        h, w = cfg.image_size
        resample = _RESAMPLE[cfg.interpolation]
        if cfg.resize_mode is ResizeMode.SQUASH:
            image = _resize(image, (w, h), resample)
        elif cfg.resize_mode is ResizeMode.LONGEST:  # ResizeKeepRatio(longest=1) + CenterCropOrPad(fill_color)
            image = _resize(image, _keep_ratio_size(image.size, (h, w), longest=True), resample)
            image = _center_crop(image, h, w, fill=cfg.fill_color)
        elif h == w:  # Resize(int) + CenterCrop
            image = _resize(image, _shortest_edge_size(image.size, h), resample)
            image = _center_crop(image, h, w)
        else:
            # A non-square target: open_clip builds ResizeKeepRatio(size) without passing the
            # configured interpolation, so this branch is always bicubic in the reference.
            image = _resize(image, _keep_ratio_size(image.size, (h, w), longest=False), Image.BICUBIC)
            image = _center_crop(image, h, w)
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)

    def _hf(self, image: Image.Image) -> np.ndarray:
        # transformers' PIL processors convert to RGB first, resize, crop, then rescale/normalise in float.
        cfg = self.config
        image = _hf_rgb(image)
        resample = _RESAMPLE[cfg.interpolation]
        h, w = cfg.image_size
        if cfg.resize_mode is ResizeMode.SQUASH:
            image = image.resize((w, h), resample)
        else:
            image = image.resize(_shortest_edge_size(image.size, int(cfg.resize_size or h)), resample)
            if cfg.center_crop:
                image = _hf_center_crop(image, h, w)
        return np.asarray(image).transpose(2, 0, 1)

    def _hf_torchvision(self, image: Image.Image) -> np.ndarray:
        # transformers 5's TorchvisionBackend: PIL's RGB conversion (white under transparency), the
        # uint8 CHW tensor resized by torch's antialiased uint8 kernel, crop, then (x - 255 mean) / (255 std)
        # in float32 (rescale and normalise fused).
        cfg = self.config
        image = _hf_rgb(image)
        pixels = np.asarray(image).transpose(2, 0, 1)
        h, w = cfg.image_size
        if cfg.resize_mode is ResizeMode.SQUASH:
            size = (w, h)
        else:
            size = _shortest_edge_size(image.size, int(cfg.resize_size or h))
        if size != image.size:
            pixels = torch_uint8_resize(pixels, size, cfg.interpolation)
        if cfg.resize_mode is not ResizeMode.SQUASH and cfg.center_crop:
            pixels = _tv_center_crop(pixels, h, w)
        return pixels

    def normalize(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """float32 [..., 3, H, W] from uint8 [..., 3, H, W]: the source library's own normalisation,
        operation for operation (so the same bits), done in place on one float copy of the batch —
        the parent of a bulk job normalises every image (measured: 0.09 ms per 224 px image, a third
        of the same arithmetic with a temporary per operation; a lookup table was slower still).
        `out`: a float32 array of the same shape to write into (a caller reusing one skips the page
        faults of a fresh 19 MB batch every time; ignored where the arithmetic is float64)."""
        cfg = self.config
        if cfg.convention is Convention.HF:
            # transformers rescales and normalises in float64 before casting to float32.
            wide = pixels.astype(np.float64)
            wide *= cfg.rescale_factor
            wide -= np.asarray(cfg.mean).reshape(3, 1, 1)
            wide /= np.asarray(cfg.std).reshape(3, 1, 1)
            return wide.astype(np.float32)
        if out is None or out.shape != pixels.shape or out.dtype != np.float32:
            out = pixels.astype(np.float32)
        else:
            np.copyto(out, pixels, casting="unsafe")  # uint8 -> float32: exact, as astype
        if cfg.convention is Convention.HF_TORCHVISION:
            # (x - 255 mean) / (255 std) in float32: rescale and normalise fused.
            scale = np.float32(1.0 / cfg.rescale_factor)
            out -= (np.asarray(cfg.mean, np.float32) * scale).reshape(3, 1, 1)
            out /= (np.asarray(cfg.std, np.float32) * scale).reshape(3, 1, 1)
            return out
        # torchvision's to_tensor divides uint8 by 255 in float32, then Normalize subtracts and divides.
        out /= np.float32(255)
        out -= self._mean
        out /= self._std
        return out

    def _draft_size(self) -> tuple[int, int]:
        h, w = self.config.image_size
        side = FAST_DECODE_FACTOR * max(h, w, int(self.config.resize_size or 0))
        return side, side


SOURCE_SIZE = "clipexport.source_size"  # PIL info key: an image's full size when decoded reduced


def open_image(
    item: ImageInput, name: str = "image", limits: ImageLimits | None = None, draft: tuple[int, int] | None = None
) -> Image.Image:
    """A loaded PIL image, or InputError naming the input. Its size is checked against `limits`
    from the header, before any pixel is decoded; decompression bombs stay refused. `draft`: a
    JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least
    that size; a draft decode that fails falls back to the full decode."""
    limits = limits or ImageLimits()
    _lift_pil_limit(limits)
    try:
        if isinstance(item, Image.Image):
            limits.check(item.size, name)
            return item
        if isinstance(item, np.ndarray):
            image = _from_array(item, name)
            limits.check(image.size, name)
            return image
        if isinstance(item, (bytes, bytearray)):
            if not item:
                raise InputError(f"{name} is empty (0 bytes)")
            handle = Image.open(io.BytesIO(item))
        elif isinstance(item, (str, os.PathLike)):
            path = Path(item)
            if regular_file(path) == 0:  # a FIFO, a folder, a name too long: one line, never opened
                raise InputError(f"image {shown(path)} is empty (0 bytes)")
            handle = Image.open(path)
        else:
            raise InputError(
                f"{name} is a {type(item).__name__}; pass a path, bytes, a PIL image or an HxWxC uint8 array"
            )
        limits.check(handle.size, name)
        if draft is not None and handle.format == "JPEG":
            try:
                full = handle.size
                handle.draft(None, draft)
                handle.load()
                handle.info[SOURCE_SIZE] = full  # what the image is, not what was decoded of it
                return handle
            except (OSError, SyntaxError, ValueError):  # the reduced decode failed: decode in full
                handle = Image.open(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else Path(item))
        handle.load()
        return handle
    except InputError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own check fired first (over twice our limit)
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" ({int(found.group(1)) / 1e6:.0f} Mpx)" if found else ""
        raise InputError(
            f"{name}{size} is over the limit of {limits.max_pixels / 1e6:.0f} Mpx; raise it with "
            f"{MAX_PIXELS_ENV}=N if the image is real (refused as a possible decompression bomb)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # PIL names a bytes input by its object repr (`<_io.BytesIO object at 0x7f…>`): an address that
        # would make two identical runs record different reasons.
        reason = shown(_OBJECT_REPR.sub("", str(exc)).strip())
        raise InputError(
            f"cannot read {name}: not a valid or complete image ({type(exc).__name__}: {reason})"
        ) from None


def _lift_pil_limit(limits: ImageLimits) -> None:
    """PIL refuses images over its own MAX_IMAGE_PIXELS (179 Mpx) with a message that names no
    way out; ours is checked first and says how to raise it, so PIL's follows ours (its bomb
    check fires at twice the limit)."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limits.max_pixels:
        Image.MAX_IMAGE_PIXELS = limits.max_pixels


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InputError(
            f"{name} is an array of {array.dtype} {array.shape}; expected uint8 HxW or HxWxC with C in 1, 3, 4"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _resize(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    # torchvision returns the image untouched when it already has the target size.
    return image if image.size == size else image.resize(size, resample)


def _shortest_edge_size(size: tuple[int, int], target: int) -> tuple[int, int]:
    """torchvision's Resize(int) and transformers' shortest_edge resize agree: the short side
    becomes `target`, the long side is int()-truncated."""
    w, h = size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(target * long / short)
    return (target, new_long) if w <= h else (new_long, target)


def _keep_ratio_size(size: tuple[int, int], target_hw: tuple[int, int], longest: bool) -> tuple[int, int]:
    """open_clip's ResizeKeepRatio (from timm): scale so the long (or short) side fits the target,
    each side rounded with Python's round(). Returns a PIL (width, height)."""
    w, h = size
    ratio_h, ratio_w = h / target_hw[0], w / target_hw[1]
    ratio = max(ratio_h, ratio_w) if longest else min(ratio_h, ratio_w)
    return round(w / ratio), round(h / ratio)


def _center_crop(image: Image.Image, h: int, w: int, fill: int = 0) -> Image.Image:
    width, height = image.size
    if w > width or h > height:  # torchvision pads (with `fill`, per band) before cropping
        left, top = (w - width) // 2 if w > width else 0, (h - height) // 2 if h > height else 0
        right, bottom = (w - width + 1) // 2 if w > width else 0, (h - height + 1) // 2 if h > height else 0
        bands = len(image.getbands())  # torchvision's _parse_fill: one value per band
        image = ImageOps.expand(image, (left, top, right, bottom), fill=fill if bands == 1 else (fill,) * bands)
        width, height = image.size
        if (width, height) == (w, h):
            return image
    top, left = int(round((height - h) / 2.0)), int(round((width - w) / 2.0))
    return image.crop((left, top, left + w, top + h))


def _hf_rgb(image: Image.Image) -> Image.Image:
    """transformers' convert_to_rgb: composite on white through RGBA (a no-op for opaque images)."""
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255)), rgba).convert("RGB")


def _bicubic_filter(x: np.ndarray) -> np.ndarray:
    a = -0.5  # the antialiased kernels' (PIL's) cubic coefficient
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _bilinear_filter(x: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(x), 0.0, None)


# name -> (filter, support at scale 1)
_TORCH_FILTERS = {"bicubic": (_bicubic_filter, 2.0), "bilinear": (_bilinear_filter, 1.0)}


@lru_cache(maxsize=64)
def _torch_weights(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, int]:
    """torch's antialiased uint8 resize weights as an [in, out] matrix, and their precision (ATen's
    `_compute_index_ranges_int16_weights`): float64 filter weights normalised per output pixel, then
    int16 fixed point at the largest precision that keeps the biggest weight under 2^15."""
    filter_fn, base = _TORCH_FILTERS[interpolation]
    scale = in_size / out_size
    support = base * scale if scale >= 1.0 else base
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    centers = scale * (np.arange(out_size) + 0.5)
    xmin = np.maximum(np.trunc(centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(centers + support + 0.5).astype(np.int64), in_size)
    taps = int((xmax - xmin).max())
    index = xmin[:, None] + np.arange(taps)
    valid = index < xmax[:, None]
    weights = np.where(valid, filter_fn((index - centers[:, None] + 0.5) * invscale), 0.0)
    totals = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, totals, out=weights, where=totals != 0)
    largest = float(weights.max())
    precision = 0
    for precision in range(22):
        if int(0.5 + largest * (1 << (precision + 1))) >= (1 << 15):
            break
    scaled = weights * (1 << precision)
    fixed = np.trunc(np.where(scaled >= 0, scaled + 0.5, scaled - 0.5))
    matrix = np.zeros((in_size, out_size), np.float64)
    rows = np.broadcast_to(np.arange(out_size)[:, None], index.shape)
    matrix[index[valid], rows[valid]] = fixed[valid]
    matrix.flags.writeable = False
    return matrix, precision


_BLOCK = 32  # output pixels per banded product: each block reads only the input span its weights cover


@lru_cache(maxsize=64)
def _torch_blocks(
    in_size: int, out_size: int, interpolation: str
) -> tuple[tuple[tuple[int, int, int, np.ndarray], ...], int]:
    """The weight matrix cut into blocks of _BLOCK output pixels with the input span each needs
    (the matrix is banded: a dense product would multiply mostly zeros)."""
    matrix, precision = _torch_weights(in_size, out_size, interpolation)
    blocks = []
    for start in range(0, out_size, _BLOCK):
        part = matrix[:, start : start + _BLOCK]
        rows = np.nonzero(part.any(axis=1))[0]
        low, high = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 1)
        blocks.append((start, low, high, np.ascontiguousarray(part[low:high])))
    return tuple(blocks), precision


def _torch_pass(pixels: np.ndarray, out_size: int, interpolation: str) -> np.ndarray:
    """One separable pass along the last axis: ATen's integer sum of uint8 x int16 products, its
    rounding shift and clamp to uint8. Done as float64 matrix products, which are exact here:
    every partial sum is an integer far below 2^53 (255 x 2^15 x taps), and the shift is a
    division by a power of two."""
    in_size = pixels.shape[-1]
    blocks, precision = _torch_blocks(in_size, out_size, interpolation)
    flat = pixels.reshape(-1, in_size)
    out = np.empty((len(flat), out_size), np.uint8)
    rounding, divisor = (1 << (precision - 1) if precision else 0), float(1 << precision)
    step = max(1, (1 << 22) // max(in_size, 1))  # rows per product: float64 copies stay near 32 MB
    for first in range(0, len(flat), step):
        rows = flat[first : first + step].astype(np.float64)
        for start, low, high, weights in blocks:
            acc = rows[:, low:high] @ weights + rounding
            out[first : first + step, start : start + weights.shape[1]] = np.clip(np.floor(acc / divisor), 0, 255)
    return out.reshape(pixels.shape[:-1] + (out_size,))


def torch_uint8_resize(pixels: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """torchvision's `resize(uint8 CHW tensor, antialias=True)` on CPU for bilinear / bicubic, bit for
    bit: the native uint8 kernel (fixed-point weights, horizontal pass, uint8 intermediate, vertical
    pass). `size` is PIL's (width, height). tests/test_preprocess.py compares it with torch."""
    width, height = size
    out = pixels
    if out.shape[2] != width:
        out = _torch_pass(out, width, interpolation)
    if out.shape[1] != height:
        out = _torch_pass(out.transpose(0, 2, 1), height, interpolation).transpose(0, 2, 1)
    return np.ascontiguousarray(out)


def _tv_center_crop(pixels: np.ndarray, h: int, w: int) -> np.ndarray:
    """transformers' torchvision-backend center_crop: zero padding floor-left/top, then floor offsets."""
    _, height, width = pixels.shape
    if w > width or h > height:
        left, top = ((w - width) // 2 if w > width else 0), ((h - height) // 2 if h > height else 0)
        right, bottom = ((w - width + 1) // 2 if w > width else 0), ((h - height + 1) // 2 if h > height else 0)
        pixels = np.pad(pixels, ((0, 0), (top, bottom), (left, right)))
        _, height, width = pixels.shape
    top, left = int((height - h) / 2.0), int((width - w) / 2.0)
    return pixels[:, top : top + h, left : left + w]


def _hf_center_crop(image: Image.Image, h: int, w: int) -> Image.Image:
    """transformers' center_crop: offsets floor((size - crop) / 2), where torchvision rounds them
    (they differ by a pixel when the margin is odd); a smaller image is zero-padded, ceil on the
    top/left, first."""
    width, height = image.size
    if w > width or h > height:
        left, top = -((width - max(w, width)) // 2), -((height - max(h, height)) // 2)  # ceil(pad / 2)
        canvas = Image.new(image.mode, (max(w, width), max(h, height)), 0)
        canvas.paste(image, (left, top))
        left, top = left + (width - w) // 2, top + (height - h) // 2
        return canvas.crop((max(0, left), max(0, top), max(0, left) + w, max(0, top) + h))
    top, left = (height - h) // 2, (width - w) // 2
    return image.crop((left, top, left + w, top + h))


def _is_single(images: Any) -> bool:
    return isinstance(images, (str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray))


def _describe(item: Any, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return f"image {shown(item)}"
    return f"image #{index} ({type(item).__name__})"
