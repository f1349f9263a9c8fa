"""Tokenizers the runtime does not reimplement (SigLIP's, multilingual towers'), run torch-free
and transformers-free with Hugging Face's `tokenizers` (Rust) on the tokenizer.json that export
wrote into the artifact.

The conventions around it are the source library's, recorded in the manifest: open_clip's
`HFTokenizer` cleans the text first (`clean`), pads and truncates to the context length, and may
turn SEP into 0 (`strip_sep_token`); Hugging Face's processors pad to `max_length`. Padding and
truncation are set on the backend exactly as transformers' fast tokenizers set them, so the ids
are the reference library's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable

import numpy as np

from clipexport._deps import require
from clipexport.artifact.layout import inside
from clipexport.artifact.manifest import TokenizerConfig, TokenizerKind
from clipexport.errors import ManifestError
from clipexport.files import check_recorded_sha256
from clipexport.inputs import check_texts
from clipexport.runtime.tokenizer import CLEANERS, bounded_text

TOKENIZER_FILE = "tokenizer.json"


class HfJsonTokenizer:
    """`tokenizer(texts) -> int64 [N, context_length]` from a tokenizer.json."""

    def __init__(self, path: Path, config: TokenizerConfig):
        tokenizers = require("tokenizers", "tokenizing text for this model")
        if config.clean not in CLEANERS:
            raise ManifestError(
                f"unknown tokenizer cleaning '{config.clean}' in the manifest (known: {', '.join(CLEANERS)})"
            )
        try:
            self.backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ManifestError(
                f"{path} is not a valid tokenizer.json ({str(exc)[:200]}); re-export the model"
            ) from None
        self.config = config
        self.context_length = config.context_length
        self._clean = CLEANERS[config.clean]
        self.backend.enable_truncation(max_length=config.context_length, direction=config.truncation_side)
        pad_token = self.backend.id_to_token(config.pad_id) or ""
        self.backend.enable_padding(
            length=config.context_length, pad_id=config.pad_id, pad_token=pad_token, direction=config.padding_side
        )
        # Counts a long text's tokens for `bounded_text` (no truncation, no padding).
        self._counter = tokenizers.Tokenizer.from_str(self.backend.to_str())
        self._counter.no_truncation()
        self._counter.no_padding()

    @classmethod
    def from_artifact(cls, root: Path, config: TokenizerConfig) -> "HfJsonTokenizer":
        if config.kind != TokenizerKind.HF_JSON.value or not config.file:
            raise ManifestError(
                f"the manifest's tokenizer is '{config.kind}', not a tokenizer.json; re-export the model"
            )
        return cls(check_tokenizer_file(root, config), config)

    def __call__(self, texts: str | Iterable[str], names: list[str] | None = None) -> np.ndarray:
        items = [self._bounded(text) for text in check_texts(texts, names)]
        encodings = self.backend.encode_batch([self._clean(text) for text in items])
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64).reshape(len(items), self.context_length)
        if self.config.strip_sep_token and self.config.sep_id is not None:
            ids[ids == self.config.sep_id] = 0
        return ids

    def _bounded(self, text: str) -> str:
        """Only as much of a long text as can reach the context (`bounded_text`)."""
        count = lambda piece: len(self._counter.encode(self._clean(piece)).ids)  # noqa: E731
        return bounded_text(text, self.context_length, count, from_end=self.config.truncation_side == "left")


def check_tokenizer_file(root: Path, config: TokenizerConfig) -> Path:
    """The artifact's tokenizer.json, there and unchanged (its recorded sha256), without loading it."""
    path = inside(root, config.file, "tokenizer file")
    if not path.is_file():
        raise ManifestError(f"{path} is listed in the manifest but missing; re-export the model")
    check_recorded_sha256(path, config.sha256, "re-export or restore it")
    return path


def load_tokenizer(root: Path, config: TokenizerConfig) -> "HfJsonTokenizer | object | None":
    """The runtime tokenizer an artifact's manifest names, or None when the runtime has none
    for it (then encode_text takes token ids)."""
    from clipexport.runtime.tokenizer import ClipTokenizer

    if config.kind == TokenizerKind.CLIP_BPE.value:
        return ClipTokenizer.from_manifest(config)
    if config.kind == TokenizerKind.HF_JSON.value:
        return HfJsonTokenizer.from_artifact(root, config)
    return None


def with_tokenizer_json(
    config: TokenizerConfig, tokenizer: object, strip_sep_token: bool = False
) -> tuple[TokenizerConfig, str | None]:
    """For a transformers tokenizer the runtime does not reimplement: the config recording the
    conventions around its tokenizer.json (padding and truncation sides, SEP handling) and the
    JSON itself. Unchanged, with no JSON, for CLIP BPE or a tokenizer without a `tokenizers` backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if config.kind == TokenizerKind.CLIP_BPE.value or backend is None:
        return config, None
    return replace(
        config,
        kind=TokenizerKind.HF_JSON.value,
        padding_side=str(getattr(tokenizer, "padding_side", "right")),
        truncation_side=str(getattr(tokenizer, "truncation_side", "right")),
        sep_id=getattr(tokenizer, "sep_token_id", None),
        strip_sep_token=strip_sep_token,
    ), backend.to_str()
