"""`clipexport export`: model reference in, artifact folder (two graphs + manifest) out."""

from __future__ import annotations

import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import clipexport
from clipexport._deps import require
from clipexport.errors import InputError, SourceError
from clipexport.sources.loaded import LoadedModel
from clipexport.sources import SourceChoice, load_model
from clipexport.export.onnx_export import check_opset
from clipexport.export.specs import DEFAULT_OPSET, SPECS
from clipexport.files import make_public, utc_timestamp
from clipexport.artifact.manifest import Manifest, Tower, TowerArtifact, TowerProperties, write_manifest
from clipexport.progress import Progress, silent

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


def export_model(options: ExportOptions, progress: Progress = silent) -> Manifest:
    """Export both towers into `options.output`, atomically: the folder appears complete or not at all."""
    output = Path(options.output).expanduser().resolve()
    check_opset(options.opset)
    _check_output(output, options.overwrite)
    progress(f"loading {options.model} ({options.pretrained or 'random'})")
    loaded = load_model(options.model, options.pretrained, options.source, seed=options.seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    make_public(staging, directory=True)
    try:
        towers = _export_towers(loaded, options, staging, progress)
        manifest = _manifest(loaded, towers, options.normalize)
        write_manifest(staging, manifest)
        _publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"wrote {output}")
    return manifest


def _export_towers(loaded: LoadedModel, options: ExportOptions, staging: Path, progress: Progress) -> dict[Tower, TowerArtifact]:
    torch = require("torch", "exporting to ONNX")
    from clipexport.export.onnx_export import export_tower
    from clipexport.sources.towers import exportable

    generator = torch.Generator().manual_seed(options.seed)
    h, w = loaded.preprocess.image_size
    examples = {
        Tower.VISION: torch.randn(EXAMPLE_BATCH, 3, h, w, generator=generator),
        Tower.TEXT: loaded.tokenize(list(EXAMPLE_TEXTS)) if _has_tokenizer(loaded) else _synthetic_ids(loaded, torch),
    }
    modules = {Tower.VISION: loaded.vision, Tower.TEXT: loaded.text}
    towers = {}
    for step, tower in enumerate(Tower, start=1):
        progress(f"[{step}/{len(Tower)}] exporting the {tower.value} tower (opset {options.opset})")
        properties = loaded.text_properties if tower is Tower.TEXT else TowerProperties()
        trim_length = None
        if properties.variable_length:
            from clipexport.runtime.text_length import trimmed_length

            trim_length = trimmed_length(examples[tower].numpy(), str(properties.pooling), loaded.tokenizer.eot_id)
        towers[tower] = export_tower(exportable(modules[tower], options.normalize), SPECS[tower],
                                     examples[tower], staging, options.opset, properties, trim_length)
    return towers


def _has_tokenizer(loaded: LoadedModel) -> bool:
    try:
        loaded.tokenize(["probe"])
    except Exception:
        return False
    return True


def _synthetic_ids(loaded: LoadedModel, torch: object) -> object:
    """For sources that ship no tokenizer files."""
    from clipexport.runtime.text_length import placeholder_ids

    return torch.from_numpy(placeholder_ids(loaded.tokenizer, EXAMPLE_BATCH))  # type: ignore[attr-defined]


def _manifest(loaded: LoadedModel, towers: dict[Tower, TowerArtifact], normalized: bool) -> Manifest:
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
        tokenizer=loaded.tokenizer,
        versions=versions,
        created=utc_timestamp(),
    )


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output} is a file; pass a folder path with --output")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise InputError(f"output folder {output} is not empty; pass --overwrite to replace it or choose another --output")


def _publish(staging: Path, output: Path) -> None:
    """Swap the staged folder into place; the old one is removed only after the swap."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{staging.name.rsplit('-', 1)[-1]}")
        output.rename(old)
    staging.rename(output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
