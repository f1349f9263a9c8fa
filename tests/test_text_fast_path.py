"""The text fast path: variable-length text graphs, cut after the batch's last end-of-text token,
give the full-length result; graphs that cannot take the path keep the fixed length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipexport.artifact.manifest import TokenizerConfig, TowerProperties, read_manifest
from clipexport.runtime import ClipRuntime, ClipTokenizer
from clipexport.runtime.text_length import trim, trimmed_length
from clipexport.datasets import DEFAULT_CAPTIONS
from clipexport.parity.stats import embedding_parity

# The same graph at two sequence lengths: the softmax over masked positions sums in another order,
# a few float32 ulps of a unit vector.
TRIM_MAX_ABS = 1e-6
PROMPTS = [f"a photo of a {label}." for label in ("cat", "dog", "school bus", "red fox", "hot air balloon")]
EOT = 49407
CLIP_TOKENS = TokenizerConfig(kind="clip_bpe", context_length=77, sot_id=49406, eot_id=EOT, pad_id=0)


def test_open_clip_text_graph_is_variable_length(tiny_vit: Path) -> None:
    text = read_manifest(tiny_vit).tower("text")
    assert text.inputs[0].shape == ("batch", "sequence")
    assert text.properties == TowerProperties(pooling="argmax", causal_mask=True, variable_length=True)


def test_trimmed_equals_full_length(tiny_vit: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_vit / "text.onnx"), providers=["CPUExecutionProvider"])
    captions = list(DEFAULT_CAPTIONS) + PROMPTS
    ids = ClipTokenizer()(captions)
    full = session.run(None, {"input_ids": ids})[0]
    for start in range(0, len(ids), 4):  # batches of different trimmed lengths
        batch = ids[start : start + 4]
        cut = trim(batch, read_manifest(tiny_vit).tower("text").properties, CLIP_TOKENS)
        assert cut.shape[1] == trimmed_length(batch, "argmax", EOT) <= 77
        got = session.run(None, {"input_ids": cut})[0]
        parity = embedding_parity(full[start : start + 4], got)
        assert parity.min_cosine >= 0.99999 and parity.max_abs_diff < 1e-5
    short = trim(
        ClipTokenizer()(PROMPTS), TowerProperties(variable_length=True, causal_mask=True, pooling="argmax"), CLIP_TOKENS
    )
    assert short.shape[1] <= 10  # "a photo of a hot air balloon." is 10 tokens with SOT/EOT


class _Spy:
    def __init__(self, backend):
        self.backend, self.shapes = backend, []

    def run(self, batch):
        self.shapes.append(batch.shape)
        return self.backend.run(batch)

    def close(self):
        self.backend.close()


def test_runtime_cuts_each_batch_and_matches(tiny_vit: Path) -> None:
    from clipexport.artifact.manifest import Tower

    with ClipRuntime.load(tiny_vit) as runtime:
        spy = _Spy(runtime._backends[Tower.TEXT])
        runtime._backends[Tower.TEXT] = spy
        texts = PROMPTS + [DEFAULT_CAPTIONS[-2]]  # the last one fills the context
        fast = runtime.encode_text(texts, batch_size=5)
        assert [s[1] for s in spy.shapes] == [trimmed_length(ClipTokenizer()(PROMPTS), "argmax", EOT), 77]
        full = np.concatenate([spy.backend.run(ClipTokenizer()(texts[i : i + 5])) for i in range(0, len(texts), 5)])
    assert embedding_parity(full, fast).min_cosine >= 0.99999


@pytest.mark.parametrize(
    ("ids", "pooling", "expected"),
    [
        ([[49406, 320, 49407, 0, 0], [49406, 320, 1125, 49407, 0]], "argmax", 4),
        ([[49406, 49407, 0, 0, 0]], "argmax", 2),
        ([[49406, 320, 49407, 0, 0]], "last", 5),  # pooling at the last position moves when cut
        ([[1, 5, 2, 0, 0], [1, 2, 0, 0, 0]], "eos", 3),
        ([[1, 5, 7, 0, 0], [1, 2, 0, 0, 0]], "eos", 5),  # a row without EOS: nothing safe to cut
    ],
)
def test_trimmed_length_rules(ids: list, pooling: str, expected: int) -> None:
    assert trimmed_length(np.array(ids), pooling, 2 if pooling == "eos" else EOT) == expected


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([[101, 7, 8, 102, 0, 0], [101, 102, 0, 0, 0, 0]], 4),  # BERT: [CLS] .. [SEP] then pad 0
        ([[101, 102, 0, 0, 0, 0]], 2),
        ([[101, 7, 8, 9, 10, 102]], 6),
        ([[0, 0, 0, 0, 0, 0]], 2),  # all padding: the shortest graph input
    ],
)
def test_padding_masked_graphs_cut_after_the_last_real_token(ids: list, expected: int) -> None:
    bert = TokenizerConfig(kind="hf_json", context_length=6, sot_id=101, eot_id=102, pad_id=0)
    masked = TowerProperties(pooling="first", variable_length=True, padding_mask=True)
    assert trim(np.array(ids), masked, bert).shape[1] == expected


def test_graphs_without_the_guarantees_are_not_cut() -> None:
    ids = ClipTokenizer()(PROMPTS)
    assert (
        trim(ids, TowerProperties(variable_length=True, causal_mask=False, pooling="argmax"), CLIP_TOKENS).shape
        == ids.shape
    )
    assert (
        trim(ids, TowerProperties(variable_length=False, causal_mask=True, pooling="argmax"), CLIP_TOKENS).shape
        == ids.shape
    )
    assert trim(ids, TowerProperties(), CLIP_TOKENS).shape == ids.shape


def test_hf_clip_text_gets_the_fast_path_exactly(
    hf_clip_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """HF CLIPModel's text tower is causal and pools at the first EOS, like open_clip's: exported
    variable-length, and each batch cut after its last EOS gives the full-length embeddings."""
    from conftest import export_dir

    from clipexport.runtime import ClipRuntime

    artifact = export_dir(tmp_path_factory, "hf-variable", str(hf_clip_folder), None)
    text = read_manifest(artifact).tower("text")
    assert text.properties.variable_length and text.properties.pooling == "eos" and text.properties.trimmable
    assert text.inputs[0].shape[1] == "sequence"
    with ClipRuntime.load(artifact) as runtime:
        ids = runtime.tokenizer(PROMPTS)
        cut = trim(ids, text.properties, runtime.manifest.tokenizer)
        assert cut.shape[1] < ids.shape[1]
        from clipexport.artifact.manifest import Tower

        runner = runtime._runner(Tower.TEXT)
        full = runner.run(ids)
        np.testing.assert_allclose(runner.run(cut), full, atol=TRIM_MAX_ABS, rtol=0)
