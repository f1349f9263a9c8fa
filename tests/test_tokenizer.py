"""The runtime tokenizer equals open_clip's (and HF's CLIPTokenizer) token for token."""

import numpy as np
import pytest

from clipexport.runtime.tokenizer import ClipTokenizer

TRICKY = [
    "",
    " ",
    "   \t\n ",
    "a photo of a cat",
    "A Photo Of A CAT",
    "DON'T you're we've I'm they'll he'd it's",
    "&amp;",
    "&amp;amp; &lt;b&gt;bold&lt;/b&gt;",
    "&quot;quoted&quot;",
    "Ã©tÃ© mojibake",
    "The Mona Lisa â€” Leonardo",
    "3.14159 and 1,000,000 and 2026-11-22",
    "!!!???...,,,;;;",
    "hello!!!world???",
    "tabs\tand\nnewlines\r\nhere",
    "café naïve résumé Ångström",
    "東京の夜景",
    "北京欢迎你",
    "한국어 텍스트",
    "Привет, мир",
    "مرحبا بالعالم",
    "emoji 😎🐶🎉👨‍👩‍👧",
    "zero\u200bwidth",
    "non\u00a0breaking",
    "<start_of_text> literal <end_of_text>",
    "x" * 500,
    " ".join(["word"] * 200),
    "supercalifragilisticexpialidocious",
    "C++ & C# | node.js @ 5%",
    "ﬁ ligature ＦＵＬＬＷＩＤＴＨ",
    "a\u0301 combining accent",
    "#hashtag @mention http://example.com/a?b=c",
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


SPECIAL_SPELLINGS = [
    "a <|endoftext|> b",
    "<|startoftext|>x",
    "<|EndOfText|>",
    "x<|endoftext|>y",
    "<|endoftext|><|endoftext|>",
    "<start_of_text> hi <end_of_text>",
    "<|startoftext|> a photo",
]


def test_special_token_spellings_match_each_source_library(reference, hf_clip_folder) -> None:
    """open_clip matches `<start_of_text>` / `<end_of_text>` (any case) inside text; HF's
    CLIPTokenizer splits `<|startoftext|>` / `<|endoftext|>` out of the raw text, case-sensitively."""
    from transformers import AutoTokenizer

    np.testing.assert_array_equal(ClipTokenizer()(SPECIAL_SPELLINGS), reference(SPECIAL_SPELLINGS).numpy())
    hf = AutoTokenizer.from_pretrained(hf_clip_folder)
    want = hf(SPECIAL_SPELLINGS, padding="max_length", max_length=77, truncation=True, return_tensors="np")["input_ids"]
    got = ClipTokenizer(pad_id=hf.pad_token_id, clean="whitespace_lower")(SPECIAL_SPELLINGS)
    mismatched = [SPECIAL_SPELLINGS[i] for i in range(len(SPECIAL_SPELLINGS)) if not np.array_equal(got[i], want[i])]
    assert not mismatched


def _long_texts() -> list[str]:
    """Texts far past the context, built from the tricky corpus: the cut must land between words
    of every kind (punctuation runs, CJK without spaces, entities, emoji, combining marks)."""
    rng = np.random.default_rng(0)
    pieces = [t for t in TRICKY if t.strip()]
    out = []
    for n in range(12):
        words = [pieces[i] for i in rng.integers(0, len(pieces), 400)]
        out.append((" " if n % 2 else "\n").join(words))
    out += ["a photo of a cat " * 5000, "x" * 40_000, "北京欢迎你" * 3000, "&amp; " * 3000, " ".join(["!"] * 3000)]
    return out


@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize", "whitespace_lower"])
def test_cutting_long_texts_is_exact(clean: str) -> None:
    """Tokenizing only the words that can reach the context gives the ids of the full text."""
    from clipexport.runtime.tokenizer import bounded_text

    tok = ClipTokenizer(clean=clean)
    for text in _long_texts():
        cut = bounded_text(text, 75, lambda piece: len(tok.encode(piece)))
        assert len(cut) <= len(text)
        full = [tok.sot_id, *tok.encode(text)][:76] + [tok.eot_id]
        got = tok([text])[0]
        np.testing.assert_array_equal(got[: len(full)], full)


def test_hf_json_tokenizers_cut_long_texts_exactly(hf_siglip_folder) -> None:
    """The same proof for a tokenizer.json (SigLIP's Unigram over Metaspace), from the start and,
    for a left-truncating tokenizer, from the end."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from clipexport.artifact.manifest import TokenizerConfig
    from clipexport.runtime.hf_tokenizer import HfJsonTokenizer

    hf = AutoTokenizer.from_pretrained(hf_siglip_folder)
    path = hf_siglip_folder / "tokenizer.json"
    config = TokenizerConfig(
        kind="hf_json",
        context_length=64,
        sot_id=None,
        eot_id=hf.eos_token_id,
        pad_id=hf.pad_token_id,
        clean="none",
        vocab_size=len(hf),
        file="tokenizer.json",
    )
    for side in ("right", "left"):
        hf.truncation_side = side
        ours = HfJsonTokenizer(path, replace(config, truncation_side=side))
        texts = _long_texts()
        want = hf(texts, padding="max_length", max_length=64, truncation=True, return_tensors="np")["input_ids"]
        np.testing.assert_array_equal(ours(texts), want)


def test_a_fifty_megabyte_text_costs_what_its_first_words_cost() -> None:
    import time

    tok = ClipTokenizer()
    start = time.perf_counter()
    ids = tok(["a photo of a cat " * 3_000_000])  # 51 MB
    assert time.perf_counter() - start < 2.0 and ids[0, -1] == tok.eot_id


def test_text_rules_are_one_set(tmp_path) -> None:
    """Runtime tokenizers and the client take and refuse the same texts, with the same line."""
    from clipexport.errors import InputError
    from clipexport.inputs import check_texts

    tok = ClipTokenizer()
    assert tok(["", "  ", "\u00a0"]).shape == (3, 77)  # embedded, as open_clip and HF do
    for bad, message in ((["ok", 3], "text #1 is a int"), (["a \ud800 b"], "lone surrogate"), (None, "texts is None")):
        with pytest.raises(InputError, match=message):
            tok(bad)
        with pytest.raises(InputError, match=message):
            check_texts(bad)
    with pytest.raises(InputError, match="notes.txt:7 is not valid Unicode"):
        tok(["fine", "\udc80"], names=["notes.txt:6", "notes.txt:7"])
