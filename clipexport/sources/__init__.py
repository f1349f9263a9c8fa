"""Pick the source adapter for a model reference, and reload the source a manifest names."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path

from clipexport.errors import SourceError
from clipexport.sources.loaded import LoadedModel
from clipexport.artifact.manifest import SourceInfo, SourceKind

DEMO_MODEL = "demo"  # `export demo`: the shipped demo CLIP, whatever folders the working directory holds
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class SourceChoice(str, Enum):
    AUTO = "auto"
    OPEN_CLIP = "open_clip"
    HF = "hf"


def detect_source(model: str) -> SourceKind:
    """A folder with config.json or an `org/name` hub id is Hugging Face; the rest is OpenCLIP.
    `demo` is always the shipped demo CLIP (a folder of that name is `./demo`)."""
    if model == DEMO_MODEL:
        return SourceKind.OPEN_CLIP
    path = Path(model).expanduser()
    if path.is_dir():
        return SourceKind.HF if (path / "config.json").is_file() else SourceKind.OPEN_CLIP
    if _HUB_ID.match(model) and not model.endswith(".json"):
        return SourceKind.HF
    return SourceKind.OPEN_CLIP


def source_kind(model: str, choice: SourceChoice = SourceChoice.AUTO) -> SourceKind:
    """The library a model reference belongs to: as chosen, or detected."""
    return detect_source(model) if choice is SourceChoice.AUTO else SourceKind(choice.value)


def load_model(
    model: str,
    pretrained: str | None,
    source: SourceChoice = SourceChoice.AUTO,
    *,
    seed: int = 0,
    tokenizer: Path | None = None,
    text_config: Path | None = None,
) -> LoadedModel:
    kind = source_kind(model, source)
    folder = Path(model).expanduser()
    if kind is SourceKind.OPEN_CLIP and folder.is_dir() and model != DEMO_MODEL:
        raise SourceError(
            f"{model} is a folder without config.json, so it is not a Hugging Face save_pretrained "
            "folder; for OpenCLIP pass a model name or a JSON model config, with --pretrained CHECKPOINT"
        )
    if kind is SourceKind.HF:
        from clipexport.sources.hf import load_hf

        if pretrained is not None:
            raise SourceError(
                f"--pretrained does not apply to Hugging Face models: the weights come from {model} "
                "itself; drop --pretrained (or save your fine-tune with save_pretrained and pass that folder)"
            )

        if text_config is not None:
            raise SourceError(
                "--text-config applies to OpenCLIP models with a Hugging Face text tower; a Hugging Face "
                "folder or hub id carries its own config: drop --text-config"
            )
        return load_hf(model, tokenizer=tokenizer)
    from clipexport.sources.openclip import load_open_clip

    return load_open_clip(model, pretrained, seed=seed, tokenizer=tokenizer, text_config=text_config)


def reload_source(source: SourceInfo) -> LoadedModel:
    if source.kind is SourceKind.HF:
        from clipexport.sources.hf import reload_hf

        return reload_hf(source)
    from clipexport.sources.openclip import reload_open_clip

    return reload_open_clip(source)
