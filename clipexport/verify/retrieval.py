"""`verify --retrieval DIR`: retrieval drift per precision, as the index × query matrix.

For every variant (precision × backend) the runtime embeds DIR's images and captions exactly as
`embed` would. An index is built from each variant's image embeddings — exact, and the
approximate type `clipexport index --kind approximate` would choose at that size, tuned as it
tunes (on its own rows) — and queried with every variant's embeddings. Each cell reports caption
-> image and image -> image R@1/5/10 against the ground truth, the top-10 overlap with the exact
fp32-index / fp32-query result, and its largest recall loss against fp32/fp32 of the same index
type: the number that answers "must I re-embed my FP32 index to query it with INT8 embeddings?".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clipexport.artifact.precision import EXPORTED, Precision
from clipexport.datasets import RetrievalSet
from clipexport.parity.retrieval import OVERLAP_K, RECALL_KS, RetrievalCell, RetrievalReport, overlap_at_k, recall_at_k
from clipexport.vectors import l2_normalize, without_own
from clipexport.progress import Progress, silent
from clipexport.runtime.backends import BackendKind
from clipexport.search.plan import IndexKind, build_in_memory, plan_index, search

K = max(max(RECALL_KS), OVERLAP_K)


@dataclass(frozen=True)
class Variant:
    label: str
    artifact: Path
    precision: Precision
    backend: BackendKind


@dataclass(frozen=True)
class Embedded:
    variant: Variant
    images: np.ndarray  # unit float32 [gallery, D]
    captions: np.ndarray  # unit float32 [captions, D]


def check_recall_drop(points: float) -> float:
    from clipexport.errors import InputError

    if isinstance(points, bool) or not isinstance(points, (int, float)) or not 0 <= points <= 100:
        raise InputError(f"--max-recall-drop must be a number of points in [0, 100], got {points!r}")
    return float(points)


def embed_variants(
    retrieval: RetrievalSet, variants: Sequence[Variant], batch_size: int, progress: Progress = silent
) -> list[Embedded]:
    from clipexport.runtime import ClipRuntime

    out = []
    for variant in variants:
        progress(
            f"retrieval: embedding {len(retrieval.images)} images and {len(retrieval.captions)} captions "
            f"with {variant.label}"
        )
        with ClipRuntime.load(variant.artifact, backend=variant.backend, precision=variant.precision) as runtime:
            images = runtime.encode_image(list(retrieval.images), batch_size=batch_size)
            captions = (
                runtime.encode_text(list(retrieval.captions), batch_size=batch_size)
                if retrieval.captions
                else np.zeros((0, images.shape[1]), np.float32)
            )
        out.append(
            Embedded(
                variant,
                l2_normalize(images.astype(np.float32), np.float32),
                l2_normalize(captions.astype(np.float32), np.float32),
            )
        )
    return out


def drift_matrix(
    retrieval: RetrievalSet, embedded: Sequence[Embedded], max_drop: float | None = None, progress: Progress = silent
) -> RetrievalReport:
    """The matrix over every (index variant, query variant) pair, for the exact and the approximate
    index. `embedded[0]` is the reference (fp32)."""
    rows, dim = embedded[0].images.shape
    k = min(K, rows - 1)
    plans = {
        "exact": plan_index(rows, dim, IndexKind.EXACT),
        "approximate": plan_index(rows, dim, IndexKind.APPROXIMATE),
    }
    relevant_images = retrieval.relevant_images()
    image_queries = [r for r, rel in enumerate(relevant_images) if rel]
    caption_truth = [frozenset([r]) for r in retrieval.caption_images]
    index_types: dict[str, Any] = {}
    results: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}
    for kind, plan in plans.items():
        for built in embedded:
            progress(f"retrieval: {kind} index ({plan.factory}) from {built.variant.label}")
            index, tuned = build_in_memory(built.images, plan)
            if built is embedded[0]:
                index_types[kind] = {
                    **plan.to_dict(),
                    "nprobe": tuned.nprobe,
                    "recall": {q: round(v, 4) for q, v in tuned.recall.items()} if tuned.recall else None,
                }
            for query in embedded:
                text_rows = (
                    search(index, query.captions, min(K, rows))[1] if len(query.captions) else np.zeros((0, K), int)
                )
                image_rows = without_own(search(index, query.images[image_queries], k + 1)[1], image_queries, k)
                results[(kind, built.variant.label, query.variant.label)] = (text_rows, image_rows)
    reference = embedded[0].variant.label
    cells = []
    for (kind, built_label, query_label), (text_rows, image_rows) in results.items():
        t2i = recall_at_k(text_rows, caption_truth) if len(text_rows) else {}
        i2i = recall_at_k(image_rows, [relevant_images[r] for r in image_queries]) if image_queries else {}
        ref_text, ref_image = results[("exact", reference, reference)]
        overlap = {}
        if len(text_rows):
            overlap["text"] = overlap_at_k(text_rows, ref_text, OVERLAP_K)
        if image_queries:
            overlap["image"] = overlap_at_k(image_rows, ref_image, min(OVERLAP_K, k))
        same_ref_text, same_ref_image = results[(kind, reference, reference)]
        ref_t2i = recall_at_k(same_ref_text, caption_truth) if len(text_rows) else {}
        ref_i2i = recall_at_k(same_ref_image, [relevant_images[r] for r in image_queries]) if image_queries else {}
        drops = [100 * (ref[key] - got[key]) for ref, got in ((ref_t2i, t2i), (ref_i2i, i2i)) for key in got]
        variants = {e.variant.label: e.variant for e in embedded}
        cells.append(
            RetrievalCell(
                kind,
                built_label,
                query_label,
                variants[built_label].precision.value,
                variants[query_label].precision.value,
                t2i,
                i2i,
                overlap,
                round(max(drops, default=0.0), 6),
                max_drop,
                measured=len(text_rows) + len(image_queries),
            )
        )
    inputs = {
        "folder": str(retrieval.root),
        "images": len(retrieval.images),
        "captions": len(retrieval.captions),
        "classes": len(retrieval.classes),
        "image_queries": len(image_queries),
    }
    return RetrievalReport(inputs, index_types, reference, cells)


def variants_for(artifact: Path, precisions: Sequence[Precision], backends: Sequence[BackendKind]) -> list[Variant]:
    """Every precision × backend, fp32 on the first backend first (the reference), labelled by
    precision alone when one backend runs."""
    several = len(backends) > 1
    ordered = [EXPORTED] + [p for p in precisions if not p.made_by_export]
    out = []
    for backend in backends:
        for precision in ordered:
            if precision.made_by_export and backend is not backends[0] and EXPORTED not in precisions:
                continue
            label = f"{precision.value}/{backend.value}" if several else precision.value
            out.append(Variant(label, artifact, precision, backend))
    return out


__all__ = ["Embedded", "Variant", "check_recall_drop", "drift_matrix", "embed_variants", "variants_for"]
