"""The runtime tokenizer equals open_clip's (and HF's CLIPTokenizer) token for token."""

import numpy as np
import pytest

from clipexport.runtime.tokenizer import ClipTokenizer

TRICKY = [
    "", " ", "   \t\n ", "a photo of a cat", "A Photo Of A CAT", "DON'T you're we've I'm they'll he'd it's",
    "&amp;", "&amp;amp; &lt;b&gt;bold&lt;/b&gt;", "&quot;quoted&quot;", "Ã©tÃ© mojibake", "The Mona Lisa â€” Leonardo",
    "3.14159 and 1,000,000 and 2026-11-22", "!!!???...,,,;;;", "hello!!!world???", "tabs\tand\nnewlines\r\nhere",
    "café naïve résumé Ångström", "東京の夜景", "北京欢迎你", "한국어 텍스트", "Привет, мир", "مرحبا بالعالم",
    "emoji 😎🐶🎉👨‍👩‍👧", "zero\u200bwidth", "non\u00a0breaking", "<start_of_text> literal <end_of_text>",
    "x" * 500, " ".join(["word"] * 200), "supercalifragilisticexpialidocious", "C++ & C# | node.js @ 5%",
    "ﬁ ligature ＦＵＬＬＷＩＤＴＨ", "a\u0301 combining accent", "#hashtag @mention http://example.com/a?b=c",
]


@pytest.fixture(scope="module")
def reference():
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


def test_matches_open_clip_on_tricky_corpus(reference) -> None:
    ours = ClipTokenizer()
    got, want = ours(TRICKY), reference(TRICKY).numpy()
    mismatched = [TRICKY[i] for i in range(len(TRICKY)) if not np.array_equal(got[i], want[i])]
    assert not mismatched
    assert got.dtype == np.int64 and got.shape == (len(TRICKY), 77)


def test_long_text_keeps_eot_last() -> None:
    ids = ClipTokenizer()(["word " * 200])[0]
    assert ids[0] == 49406 and ids[-1] == 49407 and (ids != 0).all()


def test_empty_text_is_sot_eot() -> None:
    assert ClipTokenizer()("")[0, :3].tolist() == [49406, 49407, 0]


@pytest.mark.parametrize("clean", ["whitespace", "canonicalize"])
def test_other_open_clip_cleaners(clean: str) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    ref = SimpleTokenizer(clean=clean, context_length=32)
    ours = ClipTokenizer(context_length=32, clean=clean)
    np.testing.assert_array_equal(ours(TRICKY), ref(TRICKY).numpy())


def test_matches_hf_clip_tokenizer(hf_clip_folder) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(hf_clip_folder)
    ours = ClipTokenizer(pad_id=hf.pad_token_id, clean="whitespace_lower")
    # HF's normaliser has no ftfy/HTML unescaping: compare on text those steps leave alone.
    corpus = [t for t in TRICKY if "&" not in t and "Ã" not in t and "â€" not in t and "<" not in t]
    want = hf(corpus, padding="max_length", max_length=77, truncation=True, return_tensors="np")["input_ids"]
    got = ours(corpus)
    mismatched = [corpus[i] for i in range(len(corpus)) if not np.array_equal(got[i], want[i])]
    assert not mismatched


def test_from_manifest(tiny_vit) -> None:
    from clipexport.artifact.manifest import read_manifest

    tok = ClipTokenizer.from_manifest(read_manifest(tiny_vit).tokenizer)
    assert tok.context_length == 77 and tok.pad_id == 0


def test_rejects_non_strings() -> None:
    from clipexport.errors import InputError

    with pytest.raises(InputError, match="text #1 is a int"):
        ClipTokenizer()(["ok", 3])
