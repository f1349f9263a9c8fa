"""`clipexport verify`: run the PyTorch model and the exported graphs on one verification set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from clipexport._deps import require
from clipexport import datasets
from clipexport.artifact.lock import artifact_lock
from clipexport.artifact.manifest import Manifest, Tower, check_graph_files, read_manifest
from clipexport.artifact.precision import Precision
from clipexport.datasets import heldout_image_dir
from clipexport.errors import InputError, ParityError
from clipexport.files import utc_timestamp
from clipexport.parity.gates import GATES, check_accuracy_drop
from clipexport.parity.report import AccuracyResult, ParityReport, TowerResult, ZeroShotResult
from clipexport.parity.stats import class_embeddings, embedding_parity, zero_shot_accuracy, zero_shot_agreement
from clipexport.progress import Progress, silent
from clipexport.runtime.backends import BackendKind, BackendOptions, Runner, open_backend, require_available
from clipexport.runtime.text_length import trim

# Deliberately not a power of two, and unlike the traced batch (2): the last batch is ragged,
# so dynamic batch handling is exercised at several sizes in every run.
DEFAULT_BATCH_SIZE = 5
REFERENCE_BATCH_SIZE = 16
RETRIEVAL_BATCH_SIZE = 32  # the retrieval set is embedded as `embed` would (its default batch)
ALL = "all"  # --precision all: every variant both towers have


@dataclass(frozen=True)
class VerifyOptions:
    artifact: Path
    images: Path | None = None
    texts: Path | None = None
    num_images: int = datasets.DEFAULT_NUM_IMAGES
    batch_size: int = DEFAULT_BATCH_SIZE
    precisions: tuple[Precision | str, ...] = (Precision.FP32,)  # or ALL
    backends: tuple[BackendKind, ...] = (BackendKind.ONNXRUNTIME,)
    write_report: bool = True
    labeled_images: Path | None = None  # an ImageFolder: zero-shot accuracy per variant, vs PyTorch FP32
    templates: Path | None = None  # prompt templates, one per line with {} (default: DIR/templates.txt, else CLIP's 7)
    max_accuracy_drop: float | None = None  # gate: top-1 points a variant may lose against PyTorch FP32
    retrieval: Path | str | None = None  # a retrieval set (captions.tsv and/or class folders) or "demo"
    max_recall_drop: float | None = None  # gate: R@k points an index x query cell may lose against fp32/fp32

    def __post_init__(self) -> None:  # Python callers may pass names: parsed here, once ("all" needs the manifest)
        object.__setattr__(self, "backends", tuple(dict.fromkeys(BackendKind.parse(b) for b in self.backends)))


def verify_artifact(options: VerifyOptions, progress: Progress = silent) -> ParityReport:
    """Measure parity and write parity.json. Raises nothing on a failed gate: read `report.passed`."""
    if options.batch_size < 1 or options.num_images < 1:
        raise InputError("--batch-size and --num-images must be at least 1")
    manifest = read_manifest(options.artifact)
    precisions = resolve_precisions(manifest, options.precisions)
    if options.max_accuracy_drop is not None:
        check_accuracy_drop(options.max_accuracy_drop)
        if options.labeled_images is None:
            raise InputError("--max-accuracy-drop needs --labeled-images DIR")
    labelled = (
        datasets.load_labelled_folder(options.labeled_images, options.templates) if options.labeled_images else None
    )
    if options.max_recall_drop is not None:
        from clipexport.verify.retrieval import check_recall_drop

        check_recall_drop(options.max_recall_drop)
        if options.retrieval is None:
            raise InputError("--max-recall-drop needs --retrieval DIR")
    retrieval = datasets.load_retrieval_set(options.retrieval) if options.retrieval is not None else None
    if retrieval is not None:
        from clipexport._deps import require as _require

        _require("faiss", "verify --retrieval")
    backends = options.backends
    for backend in backends:  # a backend that cannot run here stops the run before the slow part
        require_available(backend)
    for t in Tower:  # every file is there and unchanged before the slow part starts
        for p in precisions:
            check_graph_files(options.artifact, manifest.tower(t).graph(p))
    progress(f"loading the PyTorch reference ({manifest.source.kind.value}: {manifest.source.model})")
    from clipexport.sources import reload_source
    from clipexport.sources.towers import exportable

    loaded = reload_source(manifest.source)
    images, texts, described = _verification_set(options)
    progress(f"preprocessing {len(images)} images and tokenizing {len(texts)} texts with the source library")
    torch = require("torch", "verifying against PyTorch")
    pixels = torch.stack([loaded.image_transform(image) for image in images]).float()
    ids = loaded.tokenize(texts).long()
    feeds = {Tower.VISION: pixels, Tower.TEXT: ids}
    towers = {
        Tower.VISION: exportable(loaded.vision, manifest.normalized),
        Tower.TEXT: exportable(loaded.text, manifest.normalized),
    }
    reference_feeds: dict[Tower, Any] = dict(feeds)
    if loaded.reference_text is not None:  # the library's own text path: its padding, its attention mask
        from clipexport.sources.towers import LibraryText

        towers[Tower.TEXT] = exportable(LibraryText(loaded.reference_text), manifest.normalized)
        reference_feeds[Tower.TEXT] = list(texts)
    reference = {}

    def run_reference(tower: Tower, feed: Any) -> np.ndarray:
        return _batched(lambda x, m=towers[tower]: _torch_run(torch, m, x), feed, REFERENCE_BATCH_SIZE)

    for tower in Tower:
        progress(f"running PyTorch {tower.value} tower")
        reference[tower] = run_reference(tower, reference_feeds[tower])

    report = ParityReport(
        artifact=str(Path(options.artifact).resolve()),
        created=utc_timestamp(),
        inputs={**described, "batch_size": options.batch_size},
    )
    for backend in backends:
        for precision in precisions:
            candidate = {}
            for tower in Tower:
                progress(f"running the {tower.value} tower on {backend.value} ({precision.value})")
                candidate[tower], ran_on = _run_candidate(
                    Path(options.artifact),
                    manifest,
                    tower,
                    precision,
                    backend,
                    feeds[tower].numpy(),
                    options.batch_size,
                )
                report.results.append(
                    TowerResult(
                        tower.value,
                        precision.value,
                        backend.value,
                        embedding_parity(reference[tower], candidate[tower]),
                        GATES[precision],
                        ran_on=ran_on,
                    )
                )
            report.zero_shot.append(
                ZeroShotResult(
                    precision.value,
                    backend.value,
                    zero_shot_agreement(
                        reference[Tower.VISION], reference[Tower.TEXT], candidate[Tower.VISION], candidate[Tower.TEXT]
                    ),
                    images=len(images),
                    texts=len(texts),
                )
            )
    if labelled is not None:
        accuracy, described_set = _labelled_accuracy(
            options, manifest, loaded, labelled, precisions, backends, run_reference, progress
        )
        report.accuracy.extend(accuracy)
        report.accuracy_inputs.update(described_set)
    if retrieval is not None:
        from dataclasses import replace

        from clipexport.verify.retrieval import drift_matrix, embed_variants, variants_for

        embedded = embed_variants(
            retrieval, variants_for(Path(options.artifact), precisions, backends), RETRIEVAL_BATCH_SIZE, progress
        )
        report = replace(report, retrieval=drift_matrix(retrieval, embedded, options.max_recall_drop, progress))
    if options.write_report:
        with artifact_lock(options.artifact):  # one report at a time; each write is a whole, atomic file
            report.write(options.artifact)
    return report


def _labelled_accuracy(
    options: VerifyOptions,
    manifest: Manifest,
    loaded: Any,
    labelled: datasets.LabelledSet,
    precisions: tuple[Precision, ...],
    backends: tuple[BackendKind, ...],
    run_reference: Callable[[Tower, Any], np.ndarray],
    progress: Progress,
) -> tuple[list[AccuracyResult], dict[str, Any]]:
    """Zero-shot top-1/top-5 on an ImageFolder for PyTorch FP32 and every variant checked, with
    CLIP's prompt ensembling; the variants see the source library's pixels and token ids."""
    from clipexport.runtime.preprocess import open_image

    torch = require("torch", "verifying against PyTorch")
    progress(
        f"zero-shot accuracy: {len(labelled.paths)} images, {len(labelled.classes)} classes, "
        f"{len(labelled.templates)} templates"
    )
    pixels = torch.stack([loaded.image_transform(open_image(p, f"image {p}")) for p in labelled.paths]).float()
    texts = [template.format(prompt) for prompt in labelled.prompts for template in labelled.templates]
    ids = loaded.tokenize(texts).long()
    labels = np.asarray(labelled.labels)
    text_feed = list(texts) if loaded.reference_text is not None else ids
    reference = zero_shot_accuracy(
        run_reference(Tower.VISION, pixels),
        class_embeddings(run_reference(Tower.TEXT, text_feed), len(labelled.templates)),
        labels,
    )
    results = [
        AccuracyResult(
            Precision.FP32.value, "pytorch", reference.top1, reference.top5, 0.0, 1.0, {}, measured=len(labelled.paths)
        )
    ]
    for backend in backends:
        for precision in precisions:
            progress(f"zero-shot accuracy of {precision.value} on {backend.value}")
            image, _ = _run_candidate(
                Path(options.artifact), manifest, Tower.VISION, precision, backend, pixels.numpy(), options.batch_size
            )
            text, _ = _run_candidate(
                Path(options.artifact), manifest, Tower.TEXT, precision, backend, ids.numpy(), options.batch_size
            )
            got = zero_shot_accuracy(image, class_embeddings(text, len(labelled.templates)), labels)
            same = np.asarray(got.predictions) == np.asarray(reference.predictions)
            per_class = {name: float(same[labels == i].mean()) for i, name in enumerate(labelled.classes)}
            results.append(
                AccuracyResult(
                    precision.value,
                    backend.value,
                    got.top1,
                    got.top5,
                    round(100 * (reference.top1 - got.top1), 6),
                    float(same.mean()),
                    per_class,
                    options.max_accuracy_drop,
                    measured=len(labelled.paths),
                )
            )
    described = {
        "folder": str(labelled.root),
        "images": len(labelled.paths),
        "classes": len(labelled.classes),
        "templates": len(labelled.templates),
        "template_list": list(labelled.templates),
    }
    return results, described


def resolve_precisions(manifest: Manifest, requested: tuple[Precision | str, ...]) -> tuple[Precision, ...]:
    """Expand "all" to every precision both towers have, in enum order; reject unknown names."""
    out: list[Precision] = []
    for name in requested:
        if isinstance(name, str) and name.lower() == ALL:
            out += [p for p in Precision if all(p in manifest.tower(t).graphs for t in Tower)]
        else:
            out.append(Precision.parse(name))
    return tuple(dict.fromkeys(out))


def _verification_set(options: VerifyOptions) -> tuple[list[Any], list[str], dict[str, Any]]:
    if options.images:
        images, names = datasets.load_image_folder(options.images)
        image_desc = {"images": str(options.images), "image_count": len(names)}
    else:
        # Natural photos the quantizer never calibrated on (when the repo's calibration/ is at
        # hand), plus synthetic images with odd sizes, modes and flat or noisy content.
        images = datasets.synthetic_images(options.num_images)
        described = f"synthetic (seed {datasets.DEFAULT_SEED})"
        heldout = heldout_image_dir()
        if heldout is not None:
            natural, _ = datasets.load_image_folder(heldout)
            images = natural + images
            described = f"{heldout} ({len(natural)} held-out photos) + {len(images) - len(natural)} {described}"
        image_desc = {"images": described, "image_count": len(images)}
    texts = datasets.load_text_file(options.texts) if options.texts else list(datasets.DEFAULT_CAPTIONS)
    text_desc = {"texts": str(options.texts) if options.texts else "built-in captions", "text_count": len(texts)}
    return images, texts, {**image_desc, **text_desc}


def _torch_run(torch: Any, module: Any, batch: Any) -> np.ndarray:
    with torch.no_grad():
        return module(batch).numpy()


def _batched(run: Callable[[Any], np.ndarray], data: Any, batch_size: int) -> np.ndarray:
    return np.concatenate([run(data[i : i + batch_size]) for i in range(0, len(data), batch_size)])


def _run_candidate(
    root: Path,
    manifest: Manifest,
    tower: Tower,
    precision: Precision,
    backend: BackendKind,
    data: np.ndarray,
    batch_size: int,
) -> tuple[np.ndarray, str]:
    """The candidate's embeddings, and what actually ran them (recorded in parity.json)."""
    # ONNX Runtime on the CPU provider (the backends that run elsewhere ignore it): parity is stated
    # against the FP32 CPU reference, and a GPU provider would silently change the numbers certified.
    options = BackendOptions(cpu_only=True)
    runner: Runner = open_backend(root, manifest, tower, precision, backend, options)
    # Text runs as the runtime runs it: a variable-length graph gets each batch cut after its last
    # end-of-text token, so parity against the full-length PyTorch model covers the fast path.
    properties = manifest.tower(tower).properties
    run = (lambda batch: runner.run(trim(batch, properties, manifest.tokenizer))) if tower is Tower.TEXT else runner.run
    with runner:
        return _batched(run, data, batch_size), runner.ran_on


def require_passed(report: ParityReport) -> None:
    """Raise ParityError naming every failing tower (for API users who want an exception)."""
    failing = [f"{r.tower}/{r.precision}: {'; '.join(r.failures)}" for r in report.results if not r.passed]
    if failing:
        raise ParityError("parity below tolerance: " + " | ".join(failing))
