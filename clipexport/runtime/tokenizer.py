"""CLIP's byte-level BPE tokenizer in plain Python + numpy, token-for-token equal to open_clip's
SimpleTokenizer (and to Hugging Face's CLIPTokenizer where the manifest says so)."""

from __future__ import annotations

import gzip
import html
import re
import string
import unicodedata
from functools import lru_cache
from typing import Callable, Iterable, Mapping

import numpy as np

from clipexport.errors import InputError
from clipexport.files import package_data
from clipexport.inputs import check_texts

DEFAULT_CONTEXT_LENGTH = 77
# The merges the original CLIP vocabulary uses: 49152 - 256 byte tokens - 2 specials.
_NUM_MERGES = 49152 - 256 - 2
_SPECIALS = ("<start_of_text>", "<end_of_text>")
# Hugging Face's CLIPTokenizer spells them so and splits them out of the raw text, case-sensitively,
# before its normaliser runs (open_clip matches its own spelling, case-insensitively, after cleaning).
_HF_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
_HF_SPECIAL_SPLIT = re.compile("(" + "|".join(map(re.escape, _HF_SPECIALS)) + ")")
# How many tokens past the context a cut text must still give (see `bounded_text`): a word cut off
# at the end can only change the tokens of that last word, and no CLIP word is this many tokens.
CUT_MARGIN = 16
_WORD = re.compile(r"\S+")
_TOKEN_PATTERN = r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable-unicode table (avoids whitespace/control characters)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    data = package_data("bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_tokens = list(_bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges] + list(_SPECIALS)
    return {token: i for i, token in enumerate(vocab)}, {m: i for i, m in enumerate(merges)}  # type: ignore[misc]


def _whitespace(text: str) -> str:
    return " ".join(text.split()).strip()


def _basic(text: str) -> str:
    import ftfy

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _canonicalize(text: str) -> str:
    # big_vision's prompt canonicalisation (SigLIP): no punctuation, lower case.
    return " ".join(text.replace("_", " ").translate(_PUNCTUATION).lower().split()).strip()


# open_clip's clean functions by name, and Hugging Face's CLIP normaliser (NFC, whitespace, lower).
CLEANERS = {
    "lower": lambda t: _whitespace(_basic(t)).lower(),
    "whitespace": lambda t: _whitespace(_basic(t)),
    "canonicalize": lambda t: _canonicalize(_basic(t)),
    "whitespace_lower": lambda t: _whitespace(unicodedata.normalize("NFC", t)).lower(),
    "none": lambda t: t,  # Hugging Face processors: the tokenizer's own normaliser does it all
}


class ClipTokenizer:
    """`tokenizer(texts) -> int64 [N, context_length]`: SOT, BPE tokens, EOT, then padding.
    Text longer than the context is truncated with EOT kept as the last token."""

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH, pad_id: int = 0, clean: str = "lower"):
        if clean not in CLEANERS:
            raise InputError(f"unknown tokenizer cleaning '{clean}' (expected one of {', '.join(CLEANERS)})")
        import regex

        self.encoder, self.bpe_ranks = _vocabulary()
        self.byte_encoder = _bytes_to_unicode()
        self.sot_id = self.encoder[_SPECIALS[0]]
        self.eot_id = self.encoder[_SPECIALS[1]]
        self.context_length = context_length
        self.pad_id = pad_id
        self.clean_name = clean
        self._clean = CLEANERS[clean]
        # open_clip matches its special-token spellings inside the cleaned text; HF splits its own
        # spellings out of the raw text first (`encode`), so its pattern has none.
        self._hf = clean == "whitespace_lower"
        specials = "|".join(_SPECIALS) if not self._hf else "(?!x)x"
        self._pattern = regex.compile(specials + _TOKEN_PATTERN, regex.IGNORECASE)
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_manifest(cls, tokenizer: Mapping[str, object] | object) -> "ClipTokenizer":
        """From a manifest's tokenizer section (a TokenizerConfig or its dict)."""
        get = tokenizer.get if isinstance(tokenizer, Mapping) else lambda k, d=None: getattr(tokenizer, k, d)
        kind = get("kind")
        if kind != "clip_bpe":
            raise InputError(
                f"the runtime tokenizer implements CLIP BPE; this model's tokenizer is '{kind}', "
                "pass token ids to encode_text instead"
            )
        return cls(
            context_length=int(get("context_length")), pad_id=int(get("pad_id")), clean=str(get("clean", "lower"))
        )

    def _bpe(self, token: str) -> tuple[int, ...]:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        if token in _SPECIALS:
            ids = (self.encoder[token],)
        else:
            word = tuple(token[:-1]) + (token[-1] + "</w>",)
            ranks = self.bpe_ranks
            while len(word) > 1:
                pairs = set(zip(word, word[1:]))
                bigram = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
                if bigram not in ranks:
                    break
                first, second = bigram
                merged: list[str] = []
                i = 0
                while i < len(word):
                    if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                        merged.append(first + second)
                        i += 2
                    else:
                        merged.append(word[i])
                        i += 1
                word = tuple(merged)
            ids = tuple(self.encoder[piece] for piece in word)
        self._cache[token] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without SOT/EOT."""
        if not self._hf:
            return self._encode_clean(text)
        out: list[int] = []
        for piece in _HF_SPECIAL_SPLIT.split(text):
            if piece == _HF_SPECIALS[0]:
                out.append(self.sot_id)
            elif piece == _HF_SPECIALS[1]:
                out.append(self.eot_id)
            elif piece:
                out.extend(self._encode_clean(piece))
        return out

    def _encode_clean(self, text: str) -> list[int]:
        out: list[int] = []
        for token in self._pattern.findall(self._clean(text)):
            out.extend(self._bpe("".join(self.byte_encoder[b] for b in token.encode("utf-8"))))
        return out

    def __call__(self, texts: str | Iterable[str], names: list[str] | None = None) -> np.ndarray:
        texts = check_texts(texts, names)
        result = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int64)
        budget = self.context_length - 2  # SOT and EOT
        for row, text in enumerate(texts):
            text = bounded_text(text, budget, lambda piece: len(self.encode(piece)))
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_id
            result[row, : len(ids)] = ids
        return result

    def eot_positions(self, ids: np.ndarray) -> np.ndarray:
        """Index of the first end-of-text token per row."""
        return np.argmax(ids == self.eot_id, axis=1)


def bounded_text(text: str, tokens: int, count: Callable[[str], int], from_end: bool = False) -> str:
    """The part of `text` that can reach the first `tokens` tokens (the last ones, `from_end`, for
    a tokenizer that truncates on the left), so a 50 MB text costs what its first words cost.

    The cut falls between whitespace-separated words and keeps twice as many words until the part
    alone gives `tokens + CUT_MARGIN` tokens: no tokenizer here lets a token cross whitespace (CLIP's
    pattern, Hugging Face's pre-tokenizers), cleaning (ftfy, html entities, case, NFC) works within
    words, so the tokens of the kept words are those of the full text, and truncation keeps only
    them. tests/test_tokenizer.py proves it on long texts of the tricky corpus."""
    if len(text) <= 8 * (tokens + CUT_MARGIN):
        return text
    words = tokens + CUT_MARGIN
    source = text[::-1] if from_end else text
    while True:
        end = _end_of_words(source, words)
        if end is None:
            return text
        piece = source[:end][::-1] if from_end else source[:end]
        if count(piece) >= tokens + CUT_MARGIN:
            return piece
        words *= 2


def _end_of_words(text: str, words: int) -> int | None:
    """Where the `words`-th whitespace-separated word of `text` ends, or None when no word follows it."""
    end = None
    for number, match in enumerate(_WORD.finditer(text), start=1):
        if number > words:
            return end
        end = match.end()
    return None
