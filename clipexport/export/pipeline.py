"""`clipexport export`: model reference in, artifact folder (two graphs + manifest) out."""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace
from pathlib import Path


import clipexport
from clipexport._deps import require
from clipexport.errors import InputError, ManifestError, SourceError
from clipexport.sources.loaded import LoadedModel
from clipexport.sources import SourceChoice, load_model, source_kind
from clipexport.export.onnx_export import check_opset
from clipexport.export.specs import DEFAULT_OPSET, SPECS
from clipexport.files import publish_folder, sha256_file, staging_folder, utc_timestamp
from clipexport.artifact.manifest import (
    Manifest,
    SourceKind,
    TokenizerConfig,
    Tower,
    TowerArtifact,
    TowerProperties,
    read_manifest,
    write_manifest,
)
from clipexport.progress import Progress, silent
from clipexport.artifact.precision import Precision

# Traced with batch 2: the exporter specialises a dimension whose example size is 1.
EXAMPLE_BATCH = 2
EXAMPLE_TEXTS = ("a photo of a cat", "")


@dataclass(frozen=True)
class ExportOptions:
    model: str
    output: Path
    pretrained: str | None = None
    source: SourceChoice = SourceChoice.AUTO
    opset: int = DEFAULT_OPSET
    normalize: bool = True
    overwrite: bool = False
    seed: int = 0
    tokenizer: Path | None = None  # a local HF tokenizer folder / tokenizer.json instead of a download
    text_config: Path | None = None  # a local HF text-tower config folder (open_clip XLM-R / mT5 / NLLB towers)
    reparameterize: bool = True  # fold multi-branch train-time blocks (MobileCLIP) before tracing


@dataclass(frozen=True)
class ExportResult:
    """The artifact `export` wrote: its folder and manifest; `summary()` is what the CLI prints."""

    model: str
    output: Path
    manifest: Manifest

    def summary(self) -> list[str]:
        towers = ", ".join(f"{t.value}: {a.graph(Precision.FP32).file}" for t, a in self.manifest.towers.items())
        return [f"exported {self.model} to {self.output} ({towers}; embed dim {self.manifest.embed_dim})"]


def export_model(options: ExportOptions, progress: Progress = silent) -> ExportResult:
    """Export both towers into `options.output`, atomically: the folder appears complete or not at all."""
    given = Path(options.output).expanduser()
    # Resolve the parent only: a symlinked output must be refused, not followed and replaced.
    output = given.absolute().parent.resolve() / given.absolute().name
    check_opset(options.opset)
    check_output(output, options.overwrite, _source_paths(options))
    progress(f"loading {options.model} ({_weights(options)})")
    loaded = load_model(
        options.model,
        options.pretrained,
        options.source,
        seed=options.seed,
        tokenizer=options.tokenizer,
        text_config=options.text_config,
    )
    with staging_folder(
        output.parent,
        f".{output.name}.partial-",
        "export",
        "choose a writable --output",
        progress,
        stale_prefixes=(f".{output.name}.old-",),
        public=True,
    ) as staging:
        towers = _export_towers(loaded, options, staging, progress)
        manifest = _manifest(loaded, towers, options.normalize, _write_tokenizer(loaded, staging))
        write_manifest(staging, manifest)
        publish_folder(staging, output)
    progress(f"wrote {output}")
    return ExportResult(options.model, Path(options.output), manifest)


def _export_towers(
    loaded: LoadedModel, options: ExportOptions, staging: Path, progress: Progress
) -> dict[Tower, TowerArtifact]:
    torch = require("torch", "exporting to ONNX")
    from clipexport.export.onnx_export import export_tower
    from clipexport.sources.openclip_fixes import reparameterized
    from clipexport.sources.towers import exportable

    generator = torch.Generator().manual_seed(options.seed)
    h, w = loaded.preprocess.image_size
    examples = {
        Tower.VISION: torch.randn(EXAMPLE_BATCH, 3, h, w, generator=generator),
        Tower.TEXT: loaded.tokenize(list(EXAMPLE_TEXTS)),  # every source has its tokenizer (or refused to load)
    }
    modules = {Tower.VISION: loaded.vision, Tower.TEXT: loaded.text}
    towers = {}
    for step, tower in enumerate(Tower, start=1):
        progress(f"[{step}/{len(Tower)}] exporting the {tower.value} tower (opset {options.opset})")
        properties = loaded.text_properties if tower is Tower.TEXT else TowerProperties()
        trim_length = None
        if properties.variable_length:
            from clipexport.runtime.text_length import trimmed_length

            pad_id = loaded.tokenizer.pad_id if properties.padding_mask else None
            trim_length = trimmed_length(
                examples[tower].numpy(), str(properties.pooling), loaded.tokenizer.eot_id, pad_id
            )
        # Train-time branches live in image towers (MobileCLIP's FastViT); open_clip's text towers are transformers.
        fold = options.reparameterize and tower is Tower.VISION
        module, folded = reparameterized(modules[tower]) if fold else (modules[tower], ())
        adjustments = tuple(loaded.adjustments.get(tower.value, ())) + folded
        towers[tower] = export_tower(
            exportable(module, options.normalize),
            SPECS[tower],
            examples[tower],
            staging,
            options.opset,
            properties,
            trim_length,
            adjustments,
        )
    return towers


def _write_tokenizer(loaded: LoadedModel, staging: Path) -> TokenizerConfig:
    """The runtime's copy of a non-CLIP tokenizer: tokenizer.json in the artifact, hashed."""
    if not loaded.tokenizer_json:
        return loaded.tokenizer
    from clipexport.runtime.hf_tokenizer import TOKENIZER_FILE

    path = staging / TOKENIZER_FILE
    path.write_text(loaded.tokenizer_json, encoding="utf-8")
    return replace(loaded.tokenizer, file=TOKENIZER_FILE, sha256=sha256_file(path))


def _manifest(
    loaded: LoadedModel, towers: dict[Tower, TowerArtifact], normalized: bool, tokenizer: TokenizerConfig
) -> Manifest:
    torch = require("torch", "exporting to ONNX")
    onnx = require("onnx", "exporting to ONNX")
    dims = {t: int(a.outputs[0].shape[-1]) for t, a in towers.items()}
    if len(set(dims.values())) != 1:
        raise SourceError(f"the towers' embedding sizes differ ({dims}); this is not a dual-encoder CLIP model")
    versions = {
        "clipexport": clipexport.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        **loaded.library_versions,
    }
    return Manifest(
        source=loaded.source,
        embed_dim=dims[Tower.VISION],
        normalized=normalized,
        logit_scale=loaded.logit_scale,
        logit_bias=loaded.logit_bias,
        towers=towers,
        preprocess=loaded.preprocess,
        tokenizer=tokenizer,
        versions=versions,
        created=utc_timestamp(),
    )


def _source_paths(options: ExportOptions) -> list[Path]:
    """Local files the export reads from: a checkpoint, an HF folder, a JSON config."""
    from clipexport.sources import DEMO_MODEL

    model = [] if options.model == DEMO_MODEL else [Path(options.model).expanduser()]  # package data, not ./demo
    candidates = model + [
        Path(p).expanduser() for p in (options.pretrained, options.tokenizer, options.text_config) if p
    ]
    return [p.resolve() for p in candidates if p.exists()]


def _weights(options: ExportOptions) -> str:
    """What the progress line says is loaded: HF models bring their own weights."""
    if options.pretrained:
        return options.pretrained
    return "weights from the folder or hub" if source_kind(options.model, options.source) is SourceKind.HF else "random"


def check_output(output: Path, overwrite: bool, sources: list[Path] = ()) -> None:
    """What --output may be: a new folder, an empty one, or (with --overwrite) an earlier clipexport
    artifact. Never a file, a link, a folder of other things, or a place holding the model itself."""
    if output.is_symlink():
        raise InputError(
            f"output {output} is a symbolic link; pass the real folder path "
            f"({output.resolve()}) or a new one with --output"
        )
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output} is a file; pass a folder path with --output")
    for source in sources:
        if source == output or output in source.parents or (source.is_dir() and source in output.parents):
            raise InputError(
                f"output {output} would contain (or sit inside) the model being exported ({source}); "
                "choose an --output outside it"
            )
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not overwrite:
        raise InputError(
            f"output folder {output} is not empty; pass --overwrite to replace an earlier export, "
            "or choose another --output"
        )
    try:
        read_manifest(output)
    except ManifestError:
        raise InputError(
            f"--overwrite only replaces a clipexport artifact, and {output} holds no valid manifest.json; "
            "refusing to delete it: choose a new or empty --output"
        ) from None
