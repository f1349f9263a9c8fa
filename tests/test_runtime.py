"""ClipRuntime (no torch) produces the PyTorch model's embeddings within the FP32 gate."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clipexport.errors import InputError, ManifestError
from clipexport.runtime import ClipRuntime
from clipexport.parity.gates import FP32
from clipexport.datasets import DEFAULT_CAPTIONS, synthetic_images
from clipexport.parity.stats import embedding_parity


def _reference(artifact: Path, images, texts):
    import torch

    from clipexport.sources import reload_source
    from clipexport.sources.towers import exportable
    from clipexport.artifact.manifest import read_manifest

    manifest = read_manifest(artifact)
    loaded = reload_source(manifest.source)
    with torch.no_grad():
        img = exportable(loaded.vision, True)(torch.stack([loaded.image_transform(i) for i in images])).numpy()
        txt = exportable(loaded.text, True)(loaded.tokenize(texts)).numpy()
    return img, txt


@pytest.mark.parametrize("artifact_name", ["tiny_vit", pytest.param("vit_b32", marks=pytest.mark.fullsize)])
def test_runtime_matches_pytorch(artifact_name: str, request) -> None:
    artifact = request.getfixturevalue(artifact_name)
    images, texts = synthetic_images(9, seed=99), list(DEFAULT_CAPTIONS)
    want_img, want_txt = _reference(artifact, images, texts)
    with ClipRuntime.load(artifact) as runtime:
        got_img = runtime.encode_image(images, batch_size=4)
        got_txt = runtime.encode_text(texts, batch_size=7)
    for got, want in ((got_img, want_img), (got_txt, want_txt)):
        parity = embedding_parity(want, got)
        assert parity.min_cosine >= FP32.min_cosine and parity.max_abs_diff <= FP32.max_abs


def test_runtime_matches_pytorch_for_hf(hf_clip_folder, tmp_path_factory) -> None:
    from conftest import export_dir

    artifact = export_dir(tmp_path_factory, "hf-runtime", str(hf_clip_folder), None)
    images, texts = synthetic_images(6, seed=5), ["a photo of a cat", "", "東京"]
    want_img, want_txt = _reference(artifact, images, texts)
    runtime = ClipRuntime.load(artifact)
    assert embedding_parity(want_img, runtime.encode_image(images)).max_abs_diff <= FP32.max_abs
    assert embedding_parity(want_txt, runtime.encode_text(texts)).max_abs_diff <= FP32.max_abs


def test_classify(tiny_vit: Path) -> None:
    runtime = ClipRuntime.load(tiny_vit)
    images = synthetic_images(3)
    probs = runtime.classify(images, ["cat", "dog", "car"], templates=["a photo of a {}.", "a drawing of a {}."])
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    # Cached label embeddings: a second call does not re-encode.
    assert len(runtime._label_cache) == 1
    runtime.classify(images[:1], ["cat", "dog", "car"], templates=["a photo of a {}.", "a drawing of a {}."])
    assert len(runtime._label_cache) == 1
    with pytest.raises(InputError, match="at least one label"):
        runtime.classify(images, [])


def test_runtime_checks_files_against_manifest(tiny_vit: Path, tmp_path: Path) -> None:
    for f in tiny_vit.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "text.onnx").write_bytes(b"oops")
    with pytest.raises(ManifestError, match="text.onnx does not match the manifest"):
        ClipRuntime.load(tmp_path)


BLOCKER = textwrap.dedent("""
    import sys, importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {"torch", "open_clip", "transformers", "torchvision", "modelopt", "timm"}:
                raise ImportError(f"blocked import of {name}")
    sys.meta_path.insert(0, Block())
""")


def test_runtime_works_without_torch(tiny_vit: Path, tmp_path: Path) -> None:
    """With torch, open_clip and transformers unimportable: tokenize, preprocess and embed."""
    expected = ClipRuntime.load(tiny_vit).encode_text(["a photo of a cat"])
    np.save(tmp_path / "expected.npy", expected)
    code = BLOCKER + textwrap.dedent(f"""
        import numpy as np
        from PIL import Image
        from clipexport.runtime import ClipRuntime, ClipTokenizer, ImagePreprocessor
        rt = ClipRuntime.load({str(tiny_vit)!r})
        assert ClipTokenizer()(["hi"]).shape == (1, 77)
        assert ImagePreprocessor.from_manifest({str(tiny_vit)!r})(Image.new("RGB", (50, 40))).shape == (1, 3, 64, 64)
        img = rt.encode_image([Image.new("RGB", (80, 60), (10, 200, 30))])
        txt = rt.encode_text(["a photo of a cat"])
        assert img.shape == (1, 64) and np.allclose(txt, np.load({str(tmp_path / "expected.npy")!r}))
        assert not any(m.split(".")[0] in {{"torch", "open_clip", "transformers"}} for m in sys.modules)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
