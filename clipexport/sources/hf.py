"""Hugging Face transformers dual encoders as a model source (hub id or local folder): CLIPModel,
SiglipModel (SigLIP and fixed-resolution SigLIP 2), MetaClip2Model, ChineseCLIPModel, AltCLIPModel."""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from clipexport._deps import require
from clipexport.errors import OfflineError, SourceError, first_line
from clipexport.sources.loaded import LoadedModel, check_tokenizer_fits, offline_hint
from clipexport.sources.network import prepare_for_downloads
from clipexport.sources.openclip import local_tokenizer_folder
from clipexport.files import check_recorded_sha256, sha256_file
from clipexport.artifact.layout import TRIMMABLE_POOLING
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


@dataclass(frozen=True)
class HfArchitecture:
    model_class: str
    pooling: str  # where the text tower pools: eot / eos / last / first (CLS)
    causal: bool  # causal text mask
    # The text tower is called with the tokenizer's attention mask (BERT, XLM-R towers): the
    # exported graph derives it from the pad id and takes any length up to the context length.
    padding_mask: bool = False
    position_offset: int = 0  # RoBERTa-style positions start after the pad id: usable length = max positions - offset
    processor: str = "CLIPImageProcessor"  # the processor's defaults when the folder has no preprocessor_config.json


ARCHITECTURES = {
    "clip": HfArchitecture("CLIPModel", "eot", True),
    "siglip": HfArchitecture("SiglipModel", "last", False, processor="SiglipImageProcessor"),  # SigLIP 2 fixed-res too
    "metaclip_2": HfArchitecture("MetaClip2Model", "eos", True, padding_mask=True),
    "chinese_clip": HfArchitecture(
        "ChineseCLIPModel", "first", False, padding_mask=True, processor="ChineseCLIPImageProcessor"
    ),
    "altclip": HfArchitecture("AltCLIPModel", "first", False, padding_mask=True, position_offset=2),
}
# Model types people will try, and why they are refused (one line each).
NOT_SUPPORTED = {
    "siglip2": "SigLIP 2 NaFlex (variable resolution: patches + spatial shapes as inputs) is not supported yet; "
    "the fixed-resolution SigLIP 2 checkpoints (google/siglip2-*-patch16-224/256/384/512) load as "
    "'siglip' and export",
    "align": "ALIGN (EfficientNet + BERT, EfficientNet's offset rescaling) is not supported yet",
    "vision-text-dual-encoder": "VisionTextDualEncoderModel (any vision + any text model) is not supported yet: "
    "its preprocessing and pooling depend on the towers combined",
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def load_hf(model: str, tokenizer: Path | None = None) -> LoadedModel:
    folder = Path(model).expanduser()
    local = folder.is_dir()
    if not local and (model.startswith((".", "/", "~")) or folder.suffix):
        raise SourceError(
            f"Hugging Face model folder {model} not found; pass an existing save_pretrained folder or a hub id"
        )
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
            raise SourceError(
                f"model folder {folder} recorded in the manifest no longer exists; restore it or re-export"
            )
        if source.checkpoint_sha256:
            check_recorded_sha256(
                folder,
                source.checkpoint_sha256,
                "re-export from the current folder",
                actual=hash_weights(folder),
                error=SourceError,
            )
    try:
        config = transformers.AutoConfig.from_pretrained(source.model)
    except Exception as exc:
        raise _explain(source.model, exc) from exc
    if config.model_type in NOT_SUPPORTED:
        raise SourceError(f"{source.model}: {NOT_SUPPORTED[config.model_type]}")
    if config.model_type not in ARCHITECTURES:
        raise SourceError(
            f"{source.model} is a '{config.model_type}' model; supported Hugging Face types: {', '.join(ARCHITECTURES)}"
        )
    arch = ARCHITECTURES[config.model_type]
    try:
        model = getattr(transformers, arch.model_class).from_pretrained(source.model, attn_implementation="eager")
    except Exception as exc:
        raise _explain(source.model, exc) from exc
    model = model.eval().float()
    processor = _image_processor(transformers, source.model, config, arch)
    tokenizer = _tokenizer(transformers, source.tokenizer or source.model)
    if tokenizer is None:
        where = source.tokenizer or source.model
        raise SourceError(
            f"{where} has no tokenizer files (tokenizer.json / tokenizer_config.json), so text cannot be "
            "tokenized for export, verification or the runtime; pass --tokenizer DIR with the model's tokenizer"
        )
    check_tokenizer_fits(tokenizer, getattr(config.text_config, "vocab_size", None), source.model)
    tok_cfg, tokenizer_json = with_tokenizer_json(_tokenizer_config(config, tokenizer, arch), tokenizer)
    torch = require("torch", "loading Hugging Face models")
    from clipexport.sources.towers import HfText, HfVision

    def tokenize(texts: Any) -> Any:
        batch = tokenizer(
            list(texts), padding="max_length", max_length=tok_cfg.context_length, truncation=True, return_tensors="np"
        )
        return torch.from_numpy(batch["input_ids"].astype("int64"))

    def reference_text(texts: Sequence[str]) -> Any:
        # As the model card calls it: padding=True with the tokenizer's attention mask (and token
        # types), not the exported graph's derived mask, so verify checks that derivation too.
        batch = tokenizer(
            list(texts), padding=True, max_length=tok_cfg.context_length, truncation=True, return_tensors="pt"
        )
        accepted = inspect.signature(model.get_text_features).parameters
        return model.get_text_features(**{k: v for k, v in batch.items() if k in accepted})

    bias = getattr(model, "logit_bias", None)
    return LoadedModel(
        source=source,
        vision=HfVision(model),
        text=HfText(model, pad_id=tok_cfg.pad_id if arch.padding_mask else None),
        reference_text=reference_text if arch.padding_mask else None,
        preprocess=_preprocess_config(processor),
        tokenizer=tok_cfg,
        logit_scale=float(model.logit_scale.exp().item()),
        logit_bias=None if bias is None else float(bias.reshape(-1)[0].item()),
        image_transform=lambda image: torch.from_numpy(processor(images=image, return_tensors="np")["pixel_values"][0]),
        tokenize=tokenize,
        library_versions={"transformers": transformers.__version__},
        text_properties=_text_properties(config, arch),
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


def _text_properties(config: Any, arch: HfArchitecture) -> TowerProperties:
    """How the text tower pools, and whether its graph may take shorter inputs. CLIP's text model
    pools at the first EOS (or, with the pre-2023 eos_token_id 2, at the largest id) under a causal
    mask: padding after it cannot reach the output, so the graph is exported variable-length and
    the runtime cuts each batch after its last EOS, as for open_clip (exact; the export's smoke run
    compares the cut and the full-length output)."""
    pooling = arch.pooling
    if pooling == "eot":
        pooling = "argmax" if getattr(config.text_config, "eos_token_id", None) == 2 else "eos"
    variable = arch.padding_mask or (arch.causal and pooling in TRIMMABLE_POOLING)
    return TowerProperties(
        pooling=pooling, causal_mask=arch.causal, variable_length=variable, padding_mask=arch.padding_mask
    )


def _image_processor(transformers: Any, model: str, config: Any, arch: HfArchitecture) -> Any:
    """The processor a user of the installed transformers gets by default: transformers 5's
    torchvision backend (which the runtime reproduces bit for bit for bilinear and bicubic, see
    `Convention.HF_TORCHVISION`), else the PIL backend (transformers 4's default, `Convention.HF`)."""
    processor = _load_processor(transformers, model, config, arch, {})
    if processor is not None and _torchvision_backend(processor) and not _reproducible(processor):
        processor = _load_processor(transformers, model, config, arch, {"backend": "pil"}, {"use_fast": False})
    return processor


def _load_processor(transformers: Any, model: str, config: Any, arch: HfArchitecture, *choices: dict) -> Any:
    for kwargs in choices or ({},):  # transformers >= 5 spells the PIL choice `backend`, 4 `use_fast`
        try:
            return transformers.AutoImageProcessor.from_pretrained(model, **kwargs)
        except TypeError:
            continue
        except Exception:
            break
    # No preprocessor_config.json (a bare save_pretrained of the model): the processor's defaults at the model's size.
    size = int(config.vision_config.image_size)
    if arch.processor == "SiglipImageProcessor":
        return transformers.SiglipImageProcessor(size={"height": size, "width": size})
    return getattr(transformers, arch.processor)(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )


def _torchvision_backend(processor: Any) -> bool:
    """transformers 5's TorchvisionBackend, or 4's BaseImageProcessorFast: torch tensors, torchvision resize."""
    names = {cls.__name__ for cls in type(processor).__mro__}
    return bool(names & {"TorchvisionBackend", "BaseImageProcessorFast"})


def _reproducible(processor: Any) -> bool:
    """What the runtime matches bit for bit: torch's native antialiased uint8 kernel, which
    torchvision uses for bicubic on every CPU and for bilinear on AVX2 / AVX512 / Arm (elsewhere
    bilinear goes through float32 and rounds)."""
    name = _PIL_RESAMPLE.get(int(getattr(processor, "resample", 3)), "bicubic")
    if name == "bicubic":
        return True
    if name != "bilinear":
        return False
    try:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2.functional._geometry import _do_native_uint8_resize_on_cpu

        return bool(_do_native_uint8_resize_on_cpu(InterpolationMode.BILINEAR))
    except ImportError:
        return False


def _tokenizer(transformers: Any, model: str) -> Any:
    try:
        return transformers.AutoTokenizer.from_pretrained(model)
    except Exception:
        return None  # the caller says which option supplies one


# transformers' "no limit" model_max_length (int(1e30)) and anything past it is not a real limit.
_NO_LIMIT = 1_000_000


def _tokenizer_config(config: Any, tokenizer: Any, arch: HfArchitecture) -> TokenizerConfig:
    text = config.text_config
    # BERT-style tokenizers end with [SEP]; the pad / EOS ids come from the tokenizer first.
    eos = getattr(tokenizer, "eos_token_id", None)
    eos = int(eos if eos is not None else getattr(tokenizer, "sep_token_id", None) or text.eos_token_id)
    pad = getattr(tokenizer, "pad_token_id", None)
    kind = "clip_bpe" if config.model_type == "clip" else f"hf:{type(tokenizer).__name__}"
    length = int(text.max_position_embeddings) - arch.position_offset
    limit = int(getattr(tokenizer, "model_max_length", _NO_LIMIT) or _NO_LIMIT)
    return TokenizerConfig(
        kind=kind,
        context_length=min(length, limit) if arch.padding_mask and limit < _NO_LIMIT else length,
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
        convention=Convention.HF_TORCHVISION if _torchvision_backend(processor) else Convention.HF,
        resize_size=resize_size,
        center_crop=do_crop,
        rescale_factor=float(getattr(processor, "rescale_factor", 1 / 255)),
    )
