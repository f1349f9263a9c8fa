"""Hugging Face transformers CLIPModel / SiglipModel as a model source (hub id or local folder)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from clipexport._deps import require
from clipexport.errors import OfflineError, SourceError, first_line
from clipexport.sources.loaded import LoadedModel, offline_hint
from clipexport.sources.network import prepare_for_downloads
from clipexport.sources.openclip import local_tokenizer_folder
from clipexport.files import sha256_file
from clipexport.artifact.manifest import (
    Convention,
    PreprocessConfig,
    ResizeMode,
    SourceInfo,
    SourceKind,
    TokenizerConfig,
    TowerProperties,
)
from clipexport.runtime.hf_tokenizer import with_tokenizer_json

# model_type -> (model class, text pooling, causal text mask)
_ARCHITECTURES = {
    "clip": ("CLIPModel", "eot", True),
    "siglip": ("SiglipModel", "last", False),
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def load_hf(model: str, tokenizer: Path | None = None) -> LoadedModel:
    folder = Path(model).expanduser()
    local = folder.is_dir()
    if not local and (model.startswith((".", "/", "~")) or folder.suffix):
        raise SourceError(f"Hugging Face model folder {model} not found; pass an existing save_pretrained folder or a hub id")
    source = SourceInfo(
        kind=SourceKind.HF,
        model=str(folder.resolve()) if local else model,
        checkpoint=str(folder.resolve()) if local else None,
        checkpoint_sha256=hash_weights(folder) if local else None,
        tokenizer=str(local_tokenizer_folder(tokenizer)) if tokenizer is not None else None,
    )
    return reload_hf(source)


def reload_hf(source: SourceInfo) -> LoadedModel:
    if not source.checkpoint:
        prepare_for_downloads()  # a hub id: cached files load, missing ones fail at once when offline
    transformers = require("transformers", "loading Hugging Face models")
    if source.checkpoint:
        folder = Path(source.checkpoint)
        if not folder.is_dir():
            raise SourceError(f"model folder {folder} recorded in the manifest no longer exists; restore it or re-export")
        if source.checkpoint_sha256 and hash_weights(folder) != source.checkpoint_sha256:
            raise SourceError(f"weights in {folder} changed since export (sha256 differs); re-export from the current folder")
    try:
        config = transformers.AutoConfig.from_pretrained(source.model)
    except Exception as exc:
        raise _explain(source.model, exc) from exc
    if config.model_type not in _ARCHITECTURES:
        raise SourceError(
            f"{source.model} is a '{config.model_type}' model; supported Hugging Face types: {', '.join(_ARCHITECTURES)}"
        )
    class_name, pooling, causal = _ARCHITECTURES[config.model_type]
    try:
        model = getattr(transformers, class_name).from_pretrained(source.model, attn_implementation="eager")
    except Exception as exc:
        raise _explain(source.model, exc) from exc
    model = model.eval().float()
    processor = _image_processor(transformers, source.model, config)
    tokenizer = _tokenizer(transformers, source.tokenizer or source.model)
    if tokenizer is None:
        where = source.tokenizer or source.model
        raise SourceError(f"{where} has no tokenizer files (tokenizer.json / tokenizer_config.json), so text cannot be "
                          "tokenized for export, verification or the runtime; pass --tokenizer DIR with the model's tokenizer")
    tok_cfg, tokenizer_json = with_tokenizer_json(_tokenizer_config(config, tokenizer), tokenizer)
    torch = require("torch", "loading Hugging Face models")
    from clipexport.sources.towers import HfText, HfVision

    def tokenize(texts: Any) -> Any:
        batch = tokenizer(list(texts), padding="max_length", max_length=tok_cfg.context_length,
                          truncation=True, return_tensors="np")
        return torch.from_numpy(batch["input_ids"].astype("int64"))

    bias = getattr(model, "logit_bias", None)
    return LoadedModel(
        source=source,
        vision=HfVision(model),
        text=HfText(model),
        preprocess=_preprocess_config(processor),
        tokenizer=tok_cfg,
        logit_scale=float(model.logit_scale.exp().item()),
        logit_bias=None if bias is None else float(bias.reshape(-1)[0].item()),
        image_transform=lambda image: torch.from_numpy(processor(images=image, return_tensors="np")["pixel_values"][0]),
        tokenize=tokenize,
        library_versions={"transformers": transformers.__version__},
        text_properties=TowerProperties(pooling=pooling, causal_mask=causal),
        tokenizer_json=tokenizer_json,
    )


def hash_weights(folder: Path) -> str:
    """One sha256 over every weight file in a folder (sharded checkpoints included)."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise SourceError(f"{folder} holds no weights (*.safetensors or *.bin); save the model with save_pretrained")
    for path in files:
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _explain(model: str, exc: BaseException) -> SourceError:
    if offline_hint(exc) or "is not a local folder" in str(exc):
        return OfflineError(
            f"download of Hugging Face model '{model}' failed (offline, or not a valid hub id?): "
            "pass a local folder saved with save_pretrained"
        )
    return SourceError(f"could not load Hugging Face model '{model}' ({first_line(exc)})")


def _image_processor(transformers: Any, model: str, config: Any) -> Any:
    # The slow (PIL) processors are the classic reference and what a numpy runtime can match.
    for kwargs in ({"backend": "pil"}, {"use_fast": False}):  # transformers >= 5 spells it `backend`
        try:
            return transformers.AutoImageProcessor.from_pretrained(model, **kwargs)
        except TypeError:
            continue
        except Exception:
            break
    # No preprocessor_config.json (a bare save_pretrained of the model): the processor's defaults at the model's size.
    size = int(config.vision_config.image_size)
    if config.model_type == "siglip":
        return transformers.SiglipImageProcessor(size={"height": size, "width": size})
    return transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _tokenizer(transformers: Any, model: str) -> Any:
    try:
        return transformers.AutoTokenizer.from_pretrained(model)
    except Exception:
        return None  # the caller says which option supplies one


def _tokenizer_config(config: Any, tokenizer: Any) -> TokenizerConfig:
    text = config.text_config
    eos = int(getattr(tokenizer, "eos_token_id", None) or text.eos_token_id)
    pad = getattr(tokenizer, "pad_token_id", None)
    kind = "clip_bpe" if config.model_type == "clip" else f"hf:{type(tokenizer).__name__}"
    return TokenizerConfig(
        kind=kind,
        context_length=int(text.max_position_embeddings),
        sot_id=getattr(tokenizer, "bos_token_id", None) or getattr(text, "bos_token_id", None),
        eot_id=eos,
        # HF's CLIP tokenizers pad with <|endoftext|>; the model config's pad_token_id (1) is unused.
        pad_id=int(pad if pad is not None else eos),
        clean="whitespace_lower" if config.model_type == "clip" else "none",
        vocab_size=int(text.vocab_size),
        name=getattr(tokenizer, "name_or_path", None) or None,
    )


def _preprocess_config(processor: Any) -> PreprocessConfig:
    size = processor.size
    crop = getattr(processor, "crop_size", None) or {}
    do_crop = bool(getattr(processor, "do_center_crop", False))
    if "shortest_edge" in size:
        resize_size = int(size["shortest_edge"])
        hw = (int(crop["height"]), int(crop["width"])) if do_crop else (resize_size, resize_size)
        mode = ResizeMode.SHORTEST
    else:
        hw = (int(size["height"]), int(size["width"]))
        resize_size, mode = None, ResizeMode.SQUASH
    resample = getattr(processor, "resample", 3)
    return PreprocessConfig(
        image_size=hw,
        mean=tuple(float(x) for x in processor.image_mean),
        std=tuple(float(x) for x in processor.image_std),
        interpolation=_PIL_RESAMPLE.get(int(resample), "bicubic"),
        resize_mode=mode,
        convention=Convention.HF,
        resize_size=resize_size,
        center_crop=do_crop,
        rescale_factor=float(getattr(processor, "rescale_factor", 1 / 255)),
    )
