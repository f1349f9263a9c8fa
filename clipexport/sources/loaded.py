"""The contract every source adapter fulfils: a loaded model, its towers as modules, and the
reference preprocessing/tokenizer from the source library (the ground truth for parity)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from clipexport.errors import SourceError
from clipexport.artifact.manifest import PreprocessConfig, SourceInfo, TokenizerConfig, TowerProperties


@dataclass(frozen=True)
class LoadedModel:
    source: SourceInfo
    vision: Any  # torch.nn.Module: image float32 [B,3,H,W] -> raw projection [B,D]
    text: Any  # torch.nn.Module: input_ids int64 [B,L] -> raw projection [B,D]
    preprocess: PreprocessConfig
    tokenizer: TokenizerConfig
    logit_scale: float
    logit_bias: float | None
    # Reference implementations from the source library, used by verify as ground truth.
    image_transform: Callable[[Any], Any]  # PIL image -> torch float32 [3,H,W]
    tokenize: Callable[[Sequence[str]], Any]  # texts -> torch int64 [N,L]
    library_versions: Mapping[str, str] = field(default_factory=dict)
    text_properties: TowerProperties = field(default_factory=TowerProperties)  # pooling, causal mask, variable length
    # The source tokenizer's tokenizer.json (Hugging Face `tokenizers`), for the runtime; None for CLIP BPE
    # (reimplemented) or a tokenizer without a `tokenizers` backend.
    tokenizer_json: str | None = None
    # The source library's own text path (texts -> raw features, its tokenizer's padding and mask),
    # when it differs from running `text` on `tokenize`'s ids; verify prefers it as the reference.
    reference_text: Callable[[Sequence[str]], Any] | None = None
    # Per tower ("vision"/"text"): output-preserving fixes the loader applied (recorded in the manifest).
    adjustments: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def offline_hint(exc: BaseException) -> bool:
    """Whether an exception looks like a failed network download rather than a bad name."""
    text = f"{type(exc).__name__} {exc}".lower()
    needles = (
        "connection",
        "offline",
        "resolve",
        "timed out",
        "timeout",
        "network",
        "unreachable",
        "localentrynotfound",
        "cannot find the requested files",
        "max retries",
        "name or service",
        "couldn't connect",
        "temporary failure",
        "httperror",
        "ssl",
    )
    return any(n in text for n in needles)


def check_tokenizer_fits(tokenizer: Any, model_vocab: int | None, model: str) -> None:
    """A tokenizer whose ids run past the text tower's embedding table (another model's tokenizer
    passed with --tokenizer) would export fine and fail later on the first long caption: refuse it."""
    if not model_vocab or tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return
    size = max(tokenizer.get_vocab().values(), default=-1) + 1
    if size > model_vocab:
        raise SourceError(
            f"the tokenizer has {size} tokens but {model}'s text tower embeds only {model_vocab}: it is "
            "not this model's tokenizer; pass the one the model was trained with (--tokenizer DIR)"
        )
