"""ImagePreprocessor equals open_clip's eval transform and HF's CLIPImageProcessor."""

import io

import numpy as np
import pytest
from PIL import Image

from clipexport.errors import InputError
from clipexport.runtime.preprocess import ImagePreprocessor

# Reference and ours both end in float32; the only allowed difference is float rounding.
PREPROCESS_MAX_ABS = 1e-6
SIZES = [(1, 1), (5000, 20), (20, 5000), (640, 480), (224, 224), (301, 300), (97, 131), (2000, 1500)]
MODES = ["RGB", "L", "LA", "P", "P+transparency", "RGBA", "CMYK", "I;16", "I", "F", "1"]


def _image(mode: str, size=(120, 90), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    if mode == "P+transparency":
        image = rgba.convert("RGB").convert("P")
        image.info["transparency"] = 5
        return image
    if mode in ("LA", "RGBA"):
        return rgba.convert(mode)
    return rgba.convert("RGB").convert(mode)


@pytest.fixture(scope="module")
def open_clip_reference():
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(size=224), is_train=False)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_matches_open_clip(mode: str, open_clip_reference) -> None:
    image = _image(mode)
    got = ImagePreprocessor()(image)[0]
    want = open_clip_reference(image).numpy()
    assert np.abs(got - want).max() <= PREPROCESS_MAX_ABS


@pytest.mark.parametrize("size", SIZES)
def test_every_size_matches_open_clip(size, open_clip_reference) -> None:
    image = _image("RGB", size)
    got = ImagePreprocessor()(image)[0]
    assert got.shape == (3, 224, 224)
    assert np.abs(got - open_clip_reference(image).numpy()).max() <= PREPROCESS_MAX_ABS


@pytest.mark.parametrize("mode", MODES)
def test_matches_hf_clip_image_processor(mode: str, hf_clip_folder) -> None:
    import transformers

    from clipexport.sources.hf import ARCHITECTURES, _image_processor, _preprocess_config

    processor = _image_processor(transformers, str(hf_clip_folder), None, ARCHITECTURES["clip"])
    ours = ImagePreprocessor(_preprocess_config(processor))
    for size in [(120, 90), (1, 1), (700, 64)]:
        image = _image(mode, size)
        want = processor(images=image, return_tensors="np")["pixel_values"][0]
        assert np.abs(ours(image)[0] - want).max() <= PREPROCESS_MAX_ABS


# Odd and even crop margins in both orientations (transformers floors the crop offset where
# torchvision rounds it), already-square, and already at the crop size.
HF_SIZES = [
    (448, 172),
    (172, 448),
    (221, 256),
    (256, 221),
    (301, 225),
    (225, 301),
    (257, 257),
    (300, 300),
    (640, 480),
    (480, 640),
    (224, 224),
    (65, 64),
    (64, 65),
    (50, 40),
]


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
@pytest.mark.parametrize("processor_class", ["CLIPImageProcessor", "ChineseCLIPImageProcessor", "SiglipImageProcessor"])
def test_hf_processors_match_at_odd_and_even_sizes(processor_class: str, backend: str, tmp_path) -> None:
    """transformers 5's default (torchvision) backend and its PIL backend, each reproduced exactly,
    on every mode, at odd and even crop margins in both orientations; export records which one
    the installed transformers gives by default (`sources/hf.py`)."""
    import transformers

    from clipexport.artifact.manifest import Convention
    from clipexport.sources.hf import _preprocess_config, _reproducible, _torchvision_backend

    kwargs = {"size": {"height": 224, "width": 224}} if "Siglip" in processor_class else {}
    getattr(transformers, processor_class)(**kwargs).save_pretrained(tmp_path)
    choice = {} if backend == "torchvision" else {"backend": "pil"}
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(tmp_path, **choice)
    except TypeError:
        processor = transformers.AutoImageProcessor.from_pretrained(tmp_path, use_fast=backend == "torchvision")
    if backend == "torchvision" and not (_torchvision_backend(processor) and _reproducible(processor)):
        pytest.skip(f"this transformers / CPU gives no reproducible torchvision-backend {processor_class}")
    config = _preprocess_config(processor)
    assert config.convention is (Convention.HF_TORCHVISION if backend == "torchvision" else Convention.HF)
    ours = ImagePreprocessor(config)
    for index, size in enumerate(HF_SIZES):
        for mode in ("RGB", "L", "RGBA", "P", "CMYK") if index < 3 else ("RGB",):
            image = _image(mode, size, seed=index)
            want = processor(images=image, return_tensors="np")["pixel_values"][0]
            got = ours(image)[0]
            assert got.shape == want.shape and np.abs(got - want).max() <= PREPROCESS_MAX_ABS, (
                processor_class,
                size,
                mode,
            )


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_torch_uint8_resize_is_torchvisions_bit_for_bit(interpolation: str) -> None:
    import torch
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode

    from clipexport.runtime.preprocess import torch_uint8_resize
    from clipexport.sources.hf import _reproducible

    if interpolation == "bilinear" and not _reproducible(type("P", (), {"resample": 2})()):
        pytest.skip("torchvision resizes uint8 bilinear through float32 on this CPU (no AVX2)")
    rng = np.random.default_rng(3)
    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    for (h, w), (oh, ow) in [
        ((172, 448), (224, 583)),
        ((480, 640), (224, 298)),
        ((1, 1), (224, 224)),
        ((1500, 2000), (224, 298)),
        ((64, 64), (100, 100)),
        ((300, 301), (224, 224)),
        ((7, 500), (3, 9)),
    ]:
        pixels = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
        want = F.resize(torch.from_numpy(pixels)[None], [oh, ow], interpolation=mode, antialias=True)[0].numpy()
        np.testing.assert_array_equal(torch_uint8_resize(pixels, (ow, oh), interpolation), want)


def test_accepts_paths_bytes_arrays(tmp_path, open_clip_reference) -> None:
    image = _image("RGB", (300, 200))
    path = tmp_path / "x.png"
    image.save(path)
    want = open_clip_reference(image).numpy()
    pre = ImagePreprocessor()
    for item in (path, str(path), path.read_bytes(), np.asarray(image), image):
        assert np.abs(pre(item)[0] - want).max() <= PREPROCESS_MAX_ABS
    batch = pre([path, image, np.asarray(image)])
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32


def test_bad_inputs_name_the_input(tmp_path) -> None:
    pre = ImagePreprocessor()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    buffer = io.BytesIO()
    _image("RGB", (200, 200)).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:300])
    cases = {
        tmp_path / "missing.png": "does not exist",
        tmp_path / "empty.jpg": "empty",
        tmp_path / "text.jpg": "text.jpg",
        tmp_path / "cut.jpg": "cut.jpg",
        b"": "empty",
    }
    for item, needle in cases.items():
        with pytest.raises(InputError, match=needle):
            pre(item)
    with pytest.raises(InputError, match="float64"):
        pre(np.zeros((4, 4, 3)))


def test_skip_bad_items_and_say_which(tmp_path) -> None:
    good = _image("RGB")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    batch, skipped = ImagePreprocessor().process([good, tmp_path / "bad.png", good], on_error="skip")
    assert batch.shape[0] == 2
    assert [(s.index, "bad.png" in s.name) for s in skipped] == [(1, True)]


def _claimed_png(path, width: int, height: int) -> None:
    """A small PNG whose header claims width x height (its pixel data is for 8x8)."""
    import struct
    import zlib

    buffer = io.BytesIO()
    _image("RGB", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


def test_decompression_bombs_stay_refused(tmp_path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    _claimed_png(path, 40000, 40000)  # 1.6 gigapixels from a 100-byte file
    with pytest.raises(InputError, match="over the limit of 100 Mpx; raise it with CLIPEXPORT_MAX_IMAGE_PIXELS"):
        ImagePreprocessor()(path)
    monkeypatch.setenv("CLIPEXPORT_MAX_IMAGE_PIXELS", "100")
    small = tmp_path / "small.png"
    _image("RGB", (64, 64)).save(small)
    with pytest.raises(InputError, match="over the limit"):
        ImagePreprocessor()(small)


def test_raising_our_pixel_limit_lifts_pils_own(tmp_path, monkeypatch) -> None:
    """PIL refuses over 179 Mpx with a message that names no way out; our variable governs both."""
    path = tmp_path / "panorama.png"
    _claimed_png(path, 15000, 13000)  # 195 Mpx: over PIL's default, under the raised limit
    monkeypatch.setenv("CLIPEXPORT_MAX_IMAGE_PIXELS", "500000000")
    with pytest.raises(InputError) as caught:
        ImagePreprocessor()(path)
    assert "not a valid or complete image" in str(caught.value) and "bomb" not in str(caught.value)


def test_exif_orientation_matches_reference_by_default(tmp_path, open_clip_reference) -> None:
    image = _image("RGB", (200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    with Image.open(path) as handle:
        want = open_clip_reference(handle.convert("RGB")).numpy()
    assert np.abs(ImagePreprocessor()(path)[0] - want).max() <= PREPROCESS_MAX_ABS
    rotated = ImagePreprocessor(exif_transpose=True)(path)[0]
    assert np.abs(rotated - want).max() > 0.1


# open_clip's other eval transforms: (size, resize_mode, interpolation, fill_color). The non-square
# shortest-edge target takes open_clip's ResizeKeepRatio branch; longest pads with fill_color.
VARIANTS = {
    "squash": ((224, 224), "squash", "bicubic", 0),
    "squash-bilinear-nonsquare": ((160, 224), "squash", "bilinear", 0),
    "longest": ((224, 224), "longest", "bicubic", 0),
    "longest-fill-nonsquare": ((192, 256), "longest", "bilinear", 128),
    "shortest-nonsquare": ((256, 192), "shortest", "bilinear", 0),
}


def _variant(name: str):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from clipexport.sources.openclip import _preprocess_config

    size, mode, interpolation, fill = VARIANTS[name]
    pp = {
        "size": size,
        "mode": "RGB",
        "mean": (0.5, 0.4, 0.3),
        "std": (0.2, 0.3, 0.25),
        "interpolation": interpolation,
        "resize_mode": mode,
        "fill_color": fill,
    }
    reference = image_transform_v2(PreprocessCfg(**pp), is_train=False)
    return ImagePreprocessor(_preprocess_config(pp)), reference


@pytest.mark.parametrize("variant", VARIANTS)
def test_resize_variants_match_open_clip_on_every_mode_and_size(variant: str) -> None:
    ours, reference = _variant(variant)
    cases = (
        [(mode, (120, 90)) for mode in MODES] + [("RGB", size) for size in SIZES] + [("LA", (31, 200)), ("P", (500, 7))]
    )
    for mode, size in cases:
        image = _image(mode, size)
        got = ours(image)[0]
        want = reference(image).numpy()
        assert got.shape == want.shape, (variant, mode, size)
        assert np.abs(got - want).max() <= PREPROCESS_MAX_ABS, (variant, mode, size)
