"""Vector math shared by the runtime, parity, search and verify (numpy only): unit rows, exact
inner-product top-k over a gallery in memory or arriving in blocks, and taking a query's own row
out of its results.

A result list is an int array [queries, k] of gallery rows, best first; -1 marks a missing hit.
Ties go to the lower row, as FAISS's flat index orders them; scores are float32, as it computes them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# A zero vector stays zero instead of dividing by zero (matches torch.nn.functional.normalize).
_NORM_EPS = 1e-12
# Scores held at once: a [queries, rows] matrix of at most 64 Mi floats (256 MiB; 1M rows: 64 queries).
SCORE_CHUNK_FLOATS = 1 << 26
GALLERY_BLOCK = 65536  # gallery rows scored at once when many queries share the budget


def l2_normalize(x: np.ndarray, dtype: type | None = None) -> np.ndarray:
    """Unit rows, in `dtype` (default: x's floating type; statistics pass float64)."""
    x = np.asarray(x, dtype=dtype or (x.dtype if np.issubdtype(np.asarray(x).dtype, np.floating) else np.float64))
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _NORM_EPS)


class TopK:
    """Exact inner-product top-k over a gallery that arrives in blocks (shard by shard).
    `exclude[i]` is a gallery row query i must not return (its own row), or -1."""

    def __init__(self, queries: np.ndarray, k: int, exclude: Sequence[int] | None = None):
        self.queries = np.ascontiguousarray(queries, np.float32)
        self.k = int(k)
        self.exclude = None if exclude is None else np.asarray(exclude, np.int64)
        self.scores = np.full((len(self.queries), 0), -np.inf, np.float32)
        self.rows = np.zeros((len(self.queries), 0), np.int64)

    def add(self, block: np.ndarray, first_row: int) -> None:
        scores = self.queries @ np.ascontiguousarray(block, np.float32).T
        rows = np.broadcast_to(np.arange(first_row, first_row + len(block), dtype=np.int64), scores.shape)
        if self.exclude is not None:
            scores = np.where(rows == self.exclude[:, None], -np.inf, scores)
        scores = np.concatenate([self.scores, scores], axis=1)
        rows = np.concatenate([self.rows, rows], axis=1)
        if scores.shape[1] > self.k:
            keep = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
            scores, rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)
        self.scores, self.rows = scores, rows

    def scored(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), best first; an excluded or missing hit has score -inf and row -1."""
        order = np.lexsort((self.rows, -self.scores), axis=1)
        rows = np.take_along_axis(self.rows, order, 1)
        scores = np.take_along_axis(self.scores, order, 1)
        return scores, np.where(np.isfinite(scores), rows, -1)

    def result(self) -> np.ndarray:
        return self.scored()[1]


def exact_top_k_scored(
    queries: np.ndarray, gallery: np.ndarray, k: int, exclude: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the exact top-k of an in-memory `gallery` for each query, at most
    SCORE_CHUNK_FLOATS scores in memory at once."""
    k = min(int(k), len(gallery))
    out_scores = np.empty((len(queries), k), np.float32)
    out_rows = np.empty((len(queries), k), np.int64)
    # Few queries: the whole gallery in one matrix product (a search at batch 1 over 1M rows);
    # many: gallery blocks, so the scores held stay within SCORE_CHUNK_FLOATS.
    block = max(1, min(len(gallery), max(GALLERY_BLOCK, SCORE_CHUNK_FLOATS // max(len(queries), 1))))
    chunk = max(1, SCORE_CHUNK_FLOATS // block)
    excluded = None if exclude is None else np.asarray(exclude, np.int64)
    for start in range(0, len(queries), chunk):
        top = TopK(queries[start : start + chunk], k, None if excluded is None else excluded[start : start + chunk])
        for first in range(0, len(gallery), block):
            top.add(gallery[first : first + block], first)
        out_scores[start : start + chunk], out_rows[start : start + chunk] = top.scored()
    return out_scores, out_rows


def exact_top_k(queries: np.ndarray, gallery: np.ndarray, k: int, exclude: Sequence[int] | None = None) -> np.ndarray:
    """The rows of `exact_top_k_scored`."""
    return exact_top_k_scored(queries, gallery, k, exclude)[1]


def without_own(found: np.ndarray, own: Sequence[int], k: int) -> np.ndarray:
    """Results of queries that are rows of the gallery, with each query's own row taken out, k per
    query (asked for k + 1; -1 pads where the own row was not among them)."""
    if not len(own):
        return np.zeros((0, k), np.int64)
    return np.stack([np.concatenate([r[r != o], np.full(1, -1)])[:k] for r, o in zip(found, own)])
