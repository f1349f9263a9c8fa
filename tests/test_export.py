"""Export + verify for every model family, on inputs the graphs were not traced with."""

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import CONFIGS, export_dir, save_open_clip_checkpoint
from clipexport.sources import reload_source
from clipexport.sources.towers import exportable
from clipexport.artifact.manifest import read_manifest
from clipexport.parity.gates import FP32
from clipexport.verify.run import VerifyOptions, verify_artifact


def _ops(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def _assert_parity(artifact: Path) -> None:
    report = verify_artifact(VerifyOptions(artifact=artifact))
    assert report.passed, report.table()
    for result in report.results:
        assert result.parity.min_cosine >= FP32.min_cosine and result.parity.max_abs_diff <= FP32.max_abs
    assert all(z.agreement == 1.0 for z in report.zero_shot)
    assert (artifact / "parity.json").is_file()


@pytest.mark.parametrize("family", ["tiny-rn", "tiny-convnext", "tiny-vit-quickgelu"])
def test_family_exports_and_matches(family: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    ckpt = save_open_clip_checkpoint(family, tmp_path_factory.mktemp(f"ckpt-{family}"))
    artifact = export_dir(tmp_path_factory, family, str(CONFIGS / f"{family}.json"), str(ckpt))
    _assert_parity(artifact)
    if family == "tiny-vit-quickgelu":
        # QuickGELU is x * sigmoid(1.702 x); plain GELU would export as Erf.
        ops = _ops(artifact / "vision.onnx")
        assert ops["Sigmoid"] > 0 and ops["Erf"] == 0


def test_tiny_vit_matches(tiny_vit: Path) -> None:
    _assert_parity(tiny_vit)


def test_hf_clip_folder_exports_and_matches(hf_clip_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    artifact = export_dir(tmp_path_factory, "hf", str(hf_clip_folder), None)
    manifest = read_manifest(artifact)
    assert manifest.source.kind.value == "hf"
    assert manifest.tokenizer.pad_id == 49407  # HF's CLIP tokenizers pad with <|endoftext|>
    # transformers 5 gives the torchvision backend by default (4: the PIL one); the manifest records which
    import transformers

    expected = "hf_torchvision" if int(transformers.__version__.split(".")[0]) >= 5 else "hf"
    assert manifest.preprocess.convention.value == expected and manifest.preprocess.resize_size == 64
    _assert_parity(artifact)


@pytest.mark.fullsize
def test_vit_b32_full_size(vit_b32: Path) -> None:
    manifest = read_manifest(vit_b32)
    assert manifest.embed_dim == 512
    assert manifest.tower("vision").inputs[0].shape == ("batch", 3, 224, 224)
    _assert_parity(vit_b32)


def test_graphs_use_single_layernorm_nodes(tiny_vit: Path) -> None:
    for name in ("vision.onnx", "text.onnx"):
        ops = _ops(tiny_vit / name)
        assert ops["LayerNormalization"] >= 5
        assert ops["ReduceMean"] == 0, "a decomposed LayerNorm overflows in FP16"


def test_eot_pooling_keeps_token_ids_integer(tiny_vit: Path) -> None:
    graph = onnx.load(str(tiny_vit / "text.onnx")).graph
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    consumers = [n for n in graph.node if "input_ids" in n.input]
    for node in consumers:
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            assert to not in float_types, "token ids must not pass through a float cast"
    argmax = [n for n in graph.node if n.op_type == "ArgMax"]
    assert argmax and all(n.input[0] == "input_ids" for n in argmax)


def test_dynamic_batch_every_row_exact(tiny_vit: Path) -> None:
    """Traced with batch 2; run at 1, 3 and 7: each row equals the PyTorch row, so the EOT gather
    and every reshape follow the batch instead of a baked-in size."""
    manifest = read_manifest(tiny_vit)
    loaded = reload_source(manifest.source)
    text = exportable(loaded.text, True)
    vision = exportable(loaded.vision, True)
    captions = ["a dog", "", "x " * 200, "a photo of two cats on a sofa", "東京", "!!!", "RED"]
    ids = loaded.tokenize(captions)
    assert ids[2, -1].item() == 49407, "truncated text keeps end-of-text as its last token"
    images = torch.randn(7, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    for graph, module, data, name in [("text.onnx", text, ids, "input_ids"), ("vision.onnx", vision, images, "image")]:
        session = ort.InferenceSession(str(tiny_vit / graph), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            want = module(data).numpy()
        for size in (1, 3, 7):
            got = session.run(None, {name: data[:size].numpy()})[0]
            assert got.shape == (size, 64)
            np.testing.assert_allclose(got, want[:size], atol=FP32.max_abs, rtol=0)


def test_no_normalize_keeps_raw_projection(tmp_path_factory: pytest.TempPathFactory) -> None:
    artifact = export_dir(tmp_path_factory, "raw", str(CONFIGS / "tiny-vit.json"), "random", normalize=False)
    manifest = read_manifest(artifact)
    assert not manifest.normalized
    session = ort.InferenceSession(str(artifact / "vision.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)})[0]
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-3)
    _assert_parity(artifact)


def test_random_seed_is_reproducible(tmp_path_factory: pytest.TempPathFactory) -> None:
    """verify rebuilds random-init models from the recorded seed; different seeds differ."""
    a = export_dir(tmp_path_factory, "seed-a", str(CONFIGS / "tiny-vit.json"), "random", seed=5)
    b = export_dir(tmp_path_factory, "seed-b", str(CONFIGS / "tiny-vit.json"), "random", seed=6)
    assert read_manifest(a).source.seed == 5
    assert read_manifest(a).tower("text").graph("fp32").sha256 != read_manifest(b).tower("text").graph("fp32").sha256
    _assert_parity(a)
