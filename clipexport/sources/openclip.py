"""OpenCLIP (and OpenAI CLIP through the `openai` tag) as a model source."""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from clipexport._deps import require
from clipexport.errors import OfflineError, SourceError, first_line
from clipexport.sources.loaded import LoadedModel, check_tokenizer_fits, offline_hint
from clipexport.sources.network import prepare_for_downloads

from clipexport.artifact.layout import TRIMMABLE_POOLING
from clipexport.files import check_recorded_sha256, sha256_file
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
from clipexport.sources import DEMO_MODEL as DEMO_NAME  # `export demo`: the small CLIP trained here (clipexport/demo)

RANDOM = "random"
DEFAULT_SEED = 0
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


PREPROCESS_KEY = "preprocess_cfg"


def demo_files() -> tuple[Path, Path, Path]:
    """(config, checkpoint, tokenizer folder) of the shipped demo model."""
    folder = Path(__file__).resolve().parent.parent / "data" / "demo"
    files = (folder / "demo-clip.json", folder / "demo-clip.safetensors", folder / "tokenizer")
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise SourceError(
            f"the demo model's files are missing ({missing[0]}); reinstall clipexport, or train them with "
            "python -m clipexport.demo.train"
        )
    return files


def list_open_clip(pretrained: bool = False) -> list[tuple[str, ...]]:
    """The OpenCLIP model names `export` accepts, or with `pretrained` the (model, tag) pairs."""
    open_clip = require("open_clip", "listing OpenCLIP models")
    if pretrained:
        return [tuple(row) for row in open_clip.list_pretrained()]
    return [(name,) for name in open_clip.list_models()]


def load_open_clip(
    model: str,
    pretrained: str | None,
    *,
    seed: int = DEFAULT_SEED,
    tokenizer: Path | None = None,
    text_config: Path | None = None,
) -> LoadedModel:
    """Load an OpenCLIP model by name (or JSON config path) with a tag, checkpoint path, or random init.
    `tokenizer`: a local folder (or tokenizer.json) for a model whose Hugging Face tokenizer
    open_clip would otherwise download. `text_config`: a local folder with the config.json of a
    Hugging Face text tower (XLM-R, mT5, NLLB, RoBERTa), which open_clip fetches even for random
    init; its tokenizer files, if any, serve as `tokenizer` too."""
    open_clip = require("open_clip", "loading OpenCLIP models")
    if model == DEMO_NAME:  # the shipped demo CLIP: its config, trained weights and tokenizer are package data
        model, checkpoint_file, tokenizer_dir = (str(p) for p in demo_files())
        pretrained = pretrained or checkpoint_file
        tokenizer = tokenizer or Path(tokenizer_dir)
    name, config = _resolve_config(open_clip, model)
    if text_config is not None:
        text_cfg = dict(config.get("text_cfg", {}))
        if not text_cfg.get("hf_model_name"):
            raise SourceError(
                f"--text-config applies to models with a Hugging Face text tower; {name} has open_clip's "
                "own text transformer: drop --text-config"
            )
        folder = Path(text_config).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise SourceError(
                f"--text-config {folder}: no config.json there; pass the folder of the text model's config "
                "(saved with save_pretrained)"
            )
        text_cfg["hf_model_name"] = str(folder)
        config = {**config, "text_cfg": text_cfg}
        if (
            tokenizer is None
            and text_cfg.get("hf_tokenizer_name")
            and any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        ):
            tokenizer = folder
    if tokenizer is not None:
        text_cfg = dict(config.get("text_cfg", {}))
        if not text_cfg.get("hf_tokenizer_name"):
            raise SourceError(
                f"--tokenizer applies to models with a Hugging Face tokenizer; {name} uses CLIP's BPE, "
                "which ships with clipexport: drop --tokenizer"
            )
        text_cfg["hf_tokenizer_name"] = str(local_tokenizer_folder(tokenizer))
        config = {**config, "text_cfg": text_cfg}
    pretrained = pretrained or RANDOM
    checkpoint = _as_checkpoint_path(pretrained)
    tag = None if checkpoint or pretrained == RANDOM else pretrained
    if tag is not None:
        _check_tag(open_clip, name, tag)
    # OpenAI's weights were trained with QuickGELU; open_clip 3.x only warns when the config says
    # plain GELU, and the export would silently differ from the weights' training. Force it.
    if (
        tag is not None
        and (open_clip.get_pretrained_cfg(name, tag) or {}).get("quick_gelu")
        and not config.get("quick_gelu")
    ):
        config = {**config, "quick_gelu": True}
    source = SourceInfo(
        kind=SourceKind.OPEN_CLIP,
        model=name,
        pretrained=tag or (RANDOM if pretrained == RANDOM else None),
        checkpoint=str(checkpoint) if checkpoint else None,
        checkpoint_sha256=sha256_file(checkpoint) if checkpoint else None,
        seed=seed if pretrained == RANDOM else None,
        model_config=config,
    )
    return _build(open_clip, source)


def reload_open_clip(source: SourceInfo) -> LoadedModel:
    """Rebuild the model a manifest was exported from (for verification)."""
    open_clip = require("open_clip", "loading OpenCLIP models")
    if source.checkpoint:
        path = Path(source.checkpoint)
        if not path.is_file():
            raise SourceError(f"checkpoint {path} recorded in the manifest no longer exists; restore it or re-export")
        check_recorded_sha256(path, source.checkpoint_sha256, "re-export from the current file", error=SourceError)
    return _build(open_clip, source)


def _build(open_clip: Any, source: SourceInfo) -> LoadedModel:
    torch = require("torch", "loading OpenCLIP models")
    config = dict(source.model_config or {})
    # Not a model argument: open_clip applies a config file's preprocess_cfg on top of its defaults.
    force_preprocess = config.pop(PREPROCESS_KEY, None)
    text_cfg = config.get("text_cfg", {})
    if (
        (source.pretrained not in (None, RANDOM) and not source.checkpoint)
        or text_cfg.get("hf_tokenizer_name")
        or text_cfg.get("hf_model_name")
    ):
        prepare_for_downloads()  # weights, or an HF tokenizer / text config, may come from the hub
    with _registered_config(open_clip, source.model, config):
        kwargs: dict[str, Any] = {
            "pretrained_image": False,
            "pretrained_text": False,
            "force_preprocess_cfg": force_preprocess,
        }
        if config.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
        pretrained = source.checkpoint or (None if source.pretrained == RANDOM else source.pretrained)
        if source.pretrained == RANDOM:
            torch.manual_seed(source.seed or 0)
        try:
            model = open_clip.create_model(source.model, pretrained=pretrained, **kwargs)
        except Exception as exc:  # open_clip raises bare RuntimeError/OSError for everything
            raise _explain(source, exc) from exc
        try:
            tokenizer = open_clip.get_tokenizer(source.model)
        except Exception as exc:  # an HF tokenizer (SigLIP, multilingual towers) fetched from the hub
            name = text_cfg.get("hf_tokenizer_name") or source.model
            if offline_hint(exc):
                raise OfflineError(
                    f"{source.model} needs the Hugging Face tokenizer '{name}', which is not cached and "
                    "cannot be downloaded (offline?); pass a local copy with --tokenizer DIR (a folder "
                    "saved with save_pretrained, or its tokenizer.json)"
                ) from None
            raise SourceError(f"could not load the tokenizer '{name}' of {source.model} ({first_line(exc)})") from None
    model = model.eval().float()
    adjustments = _fix_library_bugs(model)
    text_tower = getattr(model, "text", model)
    check_tokenizer_fits(getattr(tokenizer, "tokenizer", None), getattr(text_tower, "vocab_size", None), source.model)
    # open_clip's HFTokenizer wraps a transformers tokenizer; its SimpleTokenizer (CLIP BPE) does not.
    tok_cfg, tokenizer_json = with_tokenizer_json(
        _tokenizer_config(tokenizer, config),
        getattr(tokenizer, "tokenizer", None),
        strip_sep_token=bool(getattr(tokenizer, "strip_sep_token", False)),
    )
    pp = dict(open_clip.get_model_preprocess_cfg(model))
    from open_clip.transform import PreprocessCfg, image_transform_v2

    reference_transform = image_transform_v2(PreprocessCfg(**pp), is_train=False)
    bias = getattr(model, "logit_bias", None)
    from clipexport.sources.towers import OpenClipText, OpenClipVision

    pooling = getattr(model, "text_pool_type", "custom")
    causal = getattr(model, "attn_mask", None) is not None
    # The fast path needs all three: the text tower's standard layout, a causal mask, and pooling
    # at an EOT position (not 'last', which moves when the sequence is cut).
    trimmable = causal and pooling in TRIMMABLE_POOLING and hasattr(model, "token_embedding")
    return LoadedModel(
        source=source,
        vision=OpenClipVision(model),
        text=OpenClipText(model, variable_length=trimmable),
        preprocess=_preprocess_config(pp),
        tokenizer=tok_cfg,
        tokenizer_json=tokenizer_json,
        adjustments=adjustments,
        logit_scale=float(model.logit_scale.exp().item()),
        logit_bias=None if bias is None else float(bias.item()),
        image_transform=reference_transform,
        tokenize=lambda texts: tokenizer(list(texts)),
        library_versions={"open_clip": open_clip.__version__},
        # Tokens after end-of-text cannot affect the output only under a causal mask.
        text_properties=TowerProperties(pooling=pooling, causal_mask=causal, variable_length=trimmable),
    )


def _resolve_config(open_clip: Any, model: str) -> tuple[str, dict[str, Any]]:
    """(name, config) for a built-in name or a path to a JSON model config."""
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise SourceError(
                f"model config file {path} not found; pass an existing JSON file or a built-in model name"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SourceError(f"model config {path} is not valid JSON ({exc})") from None
        config = data.get("model_cfg", data)
        if not isinstance(config, dict) or "vision_cfg" not in config or "text_cfg" not in config:
            raise SourceError(f"model config {path} has no 'vision_cfg'/'text_cfg'; it is not an OpenCLIP model config")
        if isinstance(data.get("preprocess_cfg"), dict):  # open_clip_config.json's layout: kept with the model config
            config = {**config, PREPROCESS_KEY: data["preprocess_cfg"]}
        return path.stem, config
    if model.startswith(("hf-hub:", "local-dir:")):
        return model, {}
    name = model.replace("/", "-")
    config = open_clip.get_model_config(name)
    if config is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise SourceError(
            f"unknown OpenCLIP model '{model}'; {hint}list names with: clipexport models "
            "(or pass a JSON model config path, or --source hf for a Hugging Face model)"
        )
    return name, config


def _as_checkpoint_path(pretrained: str) -> Path | None:
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path.resolve()
    if os.sep in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES):
        raise SourceError(f"checkpoint file {pretrained} not found; pass an existing file or a pretrained tag")
    return None


def _check_tag(open_clip: Any, name: str, tag: str) -> None:
    if name.startswith(("hf-hub:", "local-dir:")):
        return
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        available = ", ".join(tags) if tags else "none (use a local checkpoint or 'random')"
        raise SourceError(
            f"'{tag}' is not a pretrained tag of {name} nor an existing file; available tags: {available}"
        )


def local_tokenizer_folder(path: Path) -> Path:
    """A folder transformers' AutoTokenizer can load: the folder given, or the one holding the
    tokenizer.json given."""
    path = Path(path).expanduser().resolve()
    folder = path.parent if path.is_file() else path
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise SourceError(
            f"--tokenizer {path}: no tokenizer.json or tokenizer_config.json there; pass the folder "
            "of a tokenizer saved with save_pretrained"
        )
    return folder


def _explain(source: SourceInfo, exc: BaseException) -> SourceError:
    first = first_line(exc)
    if source.checkpoint:
        if not _loads_on_its_own(Path(source.checkpoint)):
            return SourceError(
                f"checkpoint {source.checkpoint} could not be loaded: it is not a valid checkpoint file "
                "(truncated, or not a PyTorch/safetensors state dict?); re-download or re-save it"
            )
        return SourceError(
            f"checkpoint {source.checkpoint} could not be loaded into {source.model} ({first}); "
            "check that it is an OpenCLIP/OpenAI state dict for this exact model"
        )
    text_model = (source.model_config or {}).get("text_cfg", {}).get("hf_model_name")
    if text_model and not Path(text_model).is_dir() and (offline_hint(exc) or "download" in first.lower()):
        return OfflineError(
            f"{source.model}'s text tower is the Hugging Face model '{text_model}', whose config cannot be downloaded "
            "(offline?); pass a local copy with --text-config DIR (a folder with its config.json and, for the "
            "tokenizer, its tokenizer files)"
        )
    if offline_hint(exc) or "download" in first.lower():
        return OfflineError(
            f"download of weights for {source.model} '{source.pretrained}' failed (offline?): "
            "pass a local checkpoint with --pretrained PATH"
        )
    return SourceError(f"could not create OpenCLIP model {source.model} ({first})")


def _loads_on_its_own(path: Path) -> bool:
    """After open_clip failed to load a checkpoint into the model: whether the file itself reads as
    a checkpoint, deciding "damaged file" vs "wrong model" by trying it rather than by the wording
    of whatever error the damaged bytes happened to cause. Only ever weights_only (safe) loading."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        elif path.suffix == ".npz":
            import numpy as np

            np.load(path).files
        else:
            require("torch", "reading checkpoints").load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return True


class _registered_config:
    """Make a custom (non built-in) config visible to open_clip by name for the duration of a load,
    then put open_clip's registry back as it was: a custom JSON named like a built-in must not
    shadow the built-in for the rest of the process."""

    def __init__(self, open_clip: Any, name: str, config: Mapping[str, Any]):
        self.open_clip, self.name, self.config = open_clip, name, config
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        self.path: Path | None = None
        self.previous: Any = None

    def __enter__(self) -> None:
        builtin = self.open_clip.get_model_config(self.name)
        # quick_gelu alone is passed as force_quick_gelu; no need to shadow a built-in config for it.
        if not self.config or _without_quick_gelu(builtin) == _without_quick_gelu(self.config):
            return
        from open_clip import factory

        self.previous = factory._MODEL_CONFIGS.get(self.name)
        self.tmp = tempfile.TemporaryDirectory(prefix="clipexport-cfg-")
        self.path = Path(self.tmp.name) / f"{self.name}.json"
        self.path.write_text(json.dumps(self.config), encoding="utf-8")
        self.open_clip.add_model_config(self.path)

    def __exit__(self, *exc: object) -> None:
        if self.tmp is None:
            return
        from open_clip import factory

        if self.path in factory._MODEL_CONFIG_PATHS:
            factory._MODEL_CONFIG_PATHS.remove(self.path)
        if self.previous is None:
            factory._MODEL_CONFIGS.pop(self.name, None)
        else:
            factory._MODEL_CONFIGS[self.name] = self.previous
        self.tmp.cleanup()


def _fix_library_bugs(model: Any) -> dict[str, tuple[str, ...]]:
    from clipexport.sources.openclip_fixes import SCALED_COSINE_ATTENTION, fix_scaled_cosine_attention

    in_vision = fix_scaled_cosine_attention(model.visual)
    in_text = fix_scaled_cosine_attention(model) - in_vision
    return {
        tower: (f"{SCALED_COSINE_ATTENTION} ({count} attention modules)",)
        for tower, count in (("vision", in_vision), ("text", in_text))
        if count
    }


def _without_quick_gelu(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if config is None else {k: v for k, v in config.items() if k != "quick_gelu"}


def _preprocess_config(pp: Mapping[str, Any]) -> PreprocessConfig:
    size = pp.get("size", 224)
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    mode = ResizeMode(pp.get("resize_mode", "shortest"))
    return PreprocessConfig(
        image_size=hw,
        mean=tuple(float(x) for x in pp["mean"]),
        std=tuple(float(x) for x in pp["std"]),
        interpolation=str(pp.get("interpolation", "bicubic")),
        resize_mode=mode,
        convention=Convention.OPEN_CLIP,
        resize_size=min(hw) if mode is ResizeMode.SHORTEST else None,
        center_crop=mode is ResizeMode.SHORTEST,
        fill_color=int(pp.get("fill_color", 0)),
    )


def _tokenizer_config(tokenizer: Any, config: Mapping[str, Any]) -> TokenizerConfig:
    text_cfg = config.get("text_cfg", {})
    if type(tokenizer).__name__ == "SimpleTokenizer":
        return TokenizerConfig(
            kind="clip_bpe",
            context_length=int(tokenizer.context_length),
            sot_id=int(tokenizer.sot_token_id),
            eot_id=int(tokenizer.eot_token_id),
            pad_id=0,  # open_clip pads with zeros
            clean=str(text_cfg.get("tokenizer_kwargs", {}).get("clean", "lower")),
            vocab_size=int(tokenizer.vocab_size),
        )
    inner = getattr(tokenizer, "tokenizer", None)
    return TokenizerConfig(
        kind=f"hf:{type(tokenizer).__name__}",
        context_length=int(tokenizer.context_length),
        sot_id=getattr(inner, "bos_token_id", None),
        eot_id=int(getattr(inner, "eos_token_id", None) or 1),
        pad_id=int(getattr(inner, "pad_token_id", None) or 0),
        clean=str(text_cfg.get("tokenizer_kwargs", {}).get("clean", "whitespace")),
        vocab_size=int(getattr(inner, "vocab_size", 0) or text_cfg.get("vocab_size", 0)),
        name=text_cfg.get("hf_tokenizer_name"),
    )
