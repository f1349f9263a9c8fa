"""The accuracy-targeted INT8 fallback: `quantize --labeled-images DIR --max-accuracy-drop PTS`.

The cosine fallback (sensitivity.fallback_until) works per tower on embeddings. What a user
choosing INT8 over FP16 cares about is the zero-shot top-1 on their own labelled images, which
needs both towers at once. After the cosine fallback, both towers' INT8 graphs are scored on the
labelled folder against the FP32 graphs (CLIP's prompt ensembling); while the top-1 drop is over
the bound, the next most sensitive nodes of either tower (one ranking, by relative output error)
are put back in high precision, 1, 2, 4, ... at a time.

The FP32 graph stands in for PyTorch here: verify holds them within 1e-4 (the FP32 gate), far
below one image's worth of accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from clipexport.artifact.manifest import AccuracyRecord, AccuracyStep, Manifest, Tower
from clipexport.datasets import LabelledSet
from clipexport.errors import ExportError, InputError
from clipexport.parity.gates import check_accuracy_drop
from clipexport.parity.stats import class_embeddings, zero_shot_accuracy
from clipexport.precision.sensitivity import LayerSensitivity, run_model
from clipexport.progress import Progress, silent

if TYPE_CHECKING:
    import onnx

# The INT8 goal (and a common acceptance bar): at most 1 top-1 point lost against FP32.
DEFAULT_MAX_ACCURACY_DROP = 1.0


@dataclass(frozen=True)
class AccuracyTarget:
    labelled: LabelledSet
    max_drop_points: float  # top-1 points INT8 may lose against the FP32 graphs

    def __post_init__(self) -> None:
        check_accuracy_drop(self.max_drop_points)

    @classmethod
    def from_options(
        cls, labeled_images: Path | None, templates: Path | None, max_drop_points: float | None
    ) -> "AccuracyTarget | None":
        """`quantize --labeled-images DIR [--templates FILE] [--max-accuracy-drop PTS]` as a target
        (None without a folder; the options that need one refused in one line without it). The
        folder is read here, so an unreadable image stops the run before the slow part."""
        if labeled_images is None:
            if templates is not None or max_drop_points is not None:
                raise InputError("--templates and --max-accuracy-drop need --labeled-images DIR")
            return None
        from clipexport.datasets import load_labelled_folder

        return cls(
            load_labelled_folder(labeled_images, templates),
            DEFAULT_MAX_ACCURACY_DROP if max_drop_points is None else max_drop_points,
        )


@dataclass(frozen=True)
class LabelledInputs:
    """The labelled set as the graphs see it: the runtime's pixels and token ids."""

    pixels: np.ndarray
    ids: np.ndarray  # (class, template) rows, class-major
    labels: np.ndarray
    templates: int

    def top1(self, image: np.ndarray, text: np.ndarray) -> float:
        return zero_shot_accuracy(image, class_embeddings(text, self.templates), self.labels).top1


def labelled_inputs(manifest: Manifest, root: Path, labelled: LabelledSet) -> LabelledInputs:
    from clipexport.precision.calibration import preprocess_images, tokenize_texts

    texts = [template.format(prompt) for prompt in labelled.prompts for template in labelled.templates]
    return LabelledInputs(
        preprocess_images(list(labelled.paths), manifest, "labelled image"),
        tokenize_texts(texts, manifest, root),
        np.asarray(labelled.labels),
        len(labelled.templates),
    )


# Rebuilds a tower's INT8 graph with these extra nodes (beyond the cosine fallback's) in high precision.
Restorer = Callable[[tuple[str, ...]], "onnx.ModelProto"]


@dataclass(frozen=True)
class TowerCandidate:
    tower: Tower
    model: "onnx.ModelProto"  # after the cosine fallback
    restore: Restorer
    ranking: tuple[LayerSensitivity, ...]  # still-quantized nodes, worst first


@dataclass(frozen=True)
class AccuracyFallback:
    models: dict[Tower, "onnx.ModelProto"]
    restored: dict[Tower, tuple[str, ...]]  # extra nodes in high precision, worst first
    record: AccuracyRecord  # what the manifest keeps: folder, sizes, top-1 per step, the bound


def fallback_for_accuracy(
    candidates: list[TowerCandidate],
    fp32: dict[Tower, "onnx.ModelProto | Path"],
    manifest: Manifest,
    data: LabelledInputs,
    target: AccuracyTarget,
    progress: Progress = silent,
    optimization: str | None = None,
) -> AccuracyFallback:
    feeds = {Tower.VISION: data.pixels, Tower.TEXT: data.ids}
    reference = {tower: run_model(fp32[tower], manifest.tower(tower), feeds[tower]) for tower in Tower}
    reference_top1 = data.top1(reference[Tower.VISION], reference[Tower.TEXT])
    by_tower = {c.tower: c for c in candidates}
    # One ranking over both towers: the relative output errors are comparable across them.
    ranking = sorted(((s.error, c.tower, s.node) for c in candidates for s in c.ranking), key=lambda item: -item[0])
    models = {c.tower: c.model for c in candidates}
    steps = []
    counts = [0] + [2**i for i in range(len(ranking).bit_length()) if 2**i < len(ranking)] + [len(ranking)]
    for count in dict.fromkeys(counts):
        extra = {tower: tuple(node for _, t, node in ranking[:count] if t is tower) for tower in by_tower}
        if count:
            models = {tower: by_tower[tower].restore(extra[tower]) for tower in by_tower}
        got = {
            tower: run_model(models[tower], manifest.tower(tower), feeds[tower], optimization)
            if tower in models
            else reference[tower]
            for tower in Tower
        }
        top1 = data.top1(got[Tower.VISION], got[Tower.TEXT])
        drop = round(100 * (reference_top1 - top1), 6)
        steps.append(AccuracyStep(count, top1, drop))
        progress(
            f"labelled accuracy with {count} more node(s) in high precision: top-1 {100 * top1:.2f}% "
            f"(FP32 {100 * reference_top1:.2f}%, drop {drop:.2f} pt, bound {target.max_drop_points} pt)"
        )
        if drop <= target.max_drop_points:
            record = AccuracyRecord(
                str(target.labelled.root),
                len(data.labels),
                len(target.labelled.classes),
                data.templates,
                target.max_drop_points,
                reference_top1,
                tuple(steps),
            )
            return AccuracyFallback(models, {tower: extra[tower] for tower in by_tower}, record)
    raise ExportError(
        f"INT8 loses {steps[-1].drop_points:.2f} top-1 points on {target.labelled.root} even with "
        f"every quantized node in high precision (bound {target.max_drop_points}); "
        "raise --max-accuracy-drop or use --precision fp16"
    )
