"""Retrieval statistics on top-k result lists (numpy only): recall against ground truth, recall of
an approximate search against the exact one, and the neighbour overlap between two result lists.

A result list is an int array [queries, k] of gallery rows, best first; -1 marks a missing hit
(FAISS returns -1 where an IVF probe found fewer than k rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from clipexport.parity.gates import DropGated

RECALL_KS = (1, 5, 10)  # recall@1/5/10, the figures retrieval papers and clip-retrieval report
OVERLAP_K = 10


def recall_against_exact(found: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """|found@k ∩ exact@k| / k, averaged over queries: how much of the exact answer an approximate
    index returns (the figure FAISS and autofaiss call recall@k, or 'k-recall@k')."""
    found, exact = np.asarray(found)[:, :k], np.asarray(exact)[:, :k]
    if found.size == 0:
        return 1.0
    hits = [len(set(f[f >= 0].tolist()) & set(e.tolist())) for f, e in zip(found, exact)]
    return float(np.mean(hits) / exact.shape[1])


def overlap_at_k(a: np.ndarray, b: np.ndarray, k: int = OVERLAP_K) -> float:
    """Mean |a@k ∩ b@k| / k: how many of the same neighbours two searches return (no labels needed)."""
    return recall_against_exact(a, b, k)


def recall_at_k(
    found: np.ndarray, relevant: Sequence[set[int] | frozenset[int]], ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """For each k: the fraction of queries with at least one relevant row among their first k hits
    (the R@k of caption -> image retrieval and of metric-learning benchmarks)."""
    found = np.asarray(found)
    out = {}
    for k in ks:
        hits = [bool(relevant[i] & set(row[:k].tolist())) for i, row in enumerate(found)]
        out[f"r@{k}"] = float(np.mean(hits)) if hits else 0.0
    return out


@dataclass(frozen=True)
class RetrievalCell(DropGated):
    """One cell of the drift matrix: an index built from one variant's image embeddings, queried
    with another variant's embeddings (captions: text -> image; images: image -> image)."""

    index_type: str  # "exact" or "approximate"
    index_variant: str  # e.g. "fp32", or "int8/onnxruntime" when several backends ran
    query_variant: str
    index_precision: str
    query_precision: str
    text_to_image: dict[str, float]  # r@1/5/10 against the caption pairs ({} without captions)
    image_to_image: dict[str, float]  # r@1/5/10, same class = relevant ({} without classes)
    overlap_at_10: dict[str, float]  # "text"/"image": top-10 overlap with the exact fp32/fp32 result
    drop_points: float  # the largest r@k loss against fp32/fp32 of the same index type, in points
    max_drop_points: float | None = None  # --max-recall-drop, when set
    measured: int = 0  # caption queries + image queries (an image with another of its class)
    over = "over"


@dataclass(frozen=True)
class RetrievalReport:
    inputs: dict[str, Any]
    index_types: dict[str, Any]  # "exact" / "approximate" -> plan (factory, nprobe, recall vs exact)
    reference: str  # the fp32 variant every drop and overlap is measured against
    cells: list[RetrievalCell] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cells)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "index_types": self.index_types,
            "reference": self.reference,
            "recall_definition": "r@k: fraction of queries with a relevant image among the first k hits; "
            "overlap@10: |top-10 ∩ exact fp32-index/fp32-query top-10| / 10",
            "passed": self.passed,
            "cells": [c.to_dict() for c in self.cells],
        }

    def table(self) -> str:
        i = self.inputs
        lines = [
            f"retrieval on {i.get('folder')} ({i.get('images')} images, {i.get('captions')} captions, "
            f"{i.get('classes')} classes); drop and overlap against {self.reference}:"
        ]
        if not i.get("captions") and not i.get("image_queries"):
            lines.append(
                "  nothing to measure: no captions, and no class folder holds two images (an image query needs "
                "another image of its class); add captions.tsv or more images per class"
            )
        for kind, plan in self.index_types.items():
            recall = ", ".join(f"{q} {v:.3f}" for q, v in (plan.get("recall") or {}).items())
            extra = (
                f", nprobe {plan['nprobe']} (recall@10 vs exact: {recall}; tuned on the index's own rows)"
                if plan.get("nprobe")
                else ""
            )
            lines.append(f"  {kind}: {plan['factory']}{extra}")
        header = (
            f"  {'index':<11} {'built with':<18} {'queried with':<18} {'t->i R@1':>8} {'R@5':>6} {'R@10':>6}  "
            f"{'i->i R@1':>8} {'R@5':>6} {'R@10':>6}  {'ovl@10 t/i':>12}  {'drop':>7}"
        )
        lines += [header, "  " + "-" * (len(header) - 2)]

        def pct(d: dict[str, float], k: str) -> str:
            return f"{100 * d[k]:.1f}" if k in d else "-"

        for c in self.cells:
            t, m = c.text_to_image, c.image_to_image
            overlap = "/".join(
                f"{100 * c.overlap_at_10[k]:.0f}" if k in c.overlap_at_10 else "-" for k in ("text", "image")
            )
            gate = c.verdict
            lines.append(
                f"  {c.index_type:<11} {c.index_variant:<18} {c.query_variant:<18} {pct(t, 'r@1'):>8} "
                f"{pct(t, 'r@5'):>6} {pct(t, 'r@10'):>6}  {pct(m, 'r@1'):>8} {pct(m, 'r@5'):>6} "
                f"{pct(m, 'r@10'):>6}  {overlap:>12}  {c.drop_points:>+6.2f}{gate}"
            )
        return "\n".join(lines)


__all__ = [
    "OVERLAP_K",
    "RECALL_KS",
    "RetrievalCell",
    "RetrievalReport",
    "overlap_at_k",
    "recall_against_exact",
    "recall_at_k",
]
