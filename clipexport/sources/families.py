"""The model families the sources claim to export. Each is backed by an export + verify test
(tests/test_coverage.py fails when a family listed here has none), and the README's family table
is this list."""

from __future__ import annotations

from dataclasses import dataclass

from clipexport.artifact.manifest import SourceKind


@dataclass(frozen=True)
class Family:
    name: str
    source: SourceKind
    description: str


FAMILIES = (
    Family("open_clip-vit", SourceKind.OPEN_CLIP, "ViT image tower (ViT-B-32, ViT-L-14, ...), CLIP text tower"),
    Family("open_clip-vit-quickgelu", SourceKind.OPEN_CLIP, "ViT with QuickGELU (OpenAI weights)"),
    Family("open_clip-modified-resnet", SourceKind.OPEN_CLIP, "ModifiedResNet image tower (RN50, RN101, ...)"),
    Family("open_clip-timm-convnext", SourceKind.OPEN_CLIP, "timm towers (convnext_*)"),
    Family(
        "open_clip-mobileclip",
        SourceKind.OPEN_CLIP,
        "MobileCLIP: timm FastViT image tower, exported "
        "reparameterized (branches folded), verified against the unfolded model",
    ),
    Family(
        "open_clip-siglip",
        SourceKind.OPEN_CLIP,
        "SigLIP layout: HF tokenizer (canonicalize), no causal mask, last pooling, logit bias",
    ),
    Family(
        "open_clip-hf-text",
        SourceKind.OPEN_CLIP,
        "HF text towers in open_clip (XLM-R, mT5, NLLB, RoBERTa): config and tokenizer from --text-config",
    ),
    Family("hf-clip", SourceKind.HF, "transformers CLIPModel"),
    Family("hf-siglip", SourceKind.HF, "transformers SiglipModel"),
    Family(
        "hf-siglip2-fixed",
        SourceKind.HF,
        "SigLIP 2 fixed-resolution checkpoints (SiglipModel, Gemma tokenizer); NaFlex ('siglip2') is refused",
    ),
    Family("hf-chinese-clip", SourceKind.HF, "ChineseCLIPModel: BERT text tower (CLS pooling, derived padding mask)"),
    Family("hf-altclip", SourceKind.HF, "AltCLIPModel: XLM-R text tower (CLS pooling, derived padding mask)"),
    Family("hf-metaclip-2", SourceKind.HF, "MetaClip2Model: CLIP layout with the XLM-V tokenizer"),
)
