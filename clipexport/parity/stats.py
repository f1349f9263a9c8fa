"""Parity statistics between two embedding matrices. numpy only."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clipexport.vectors import l2_normalize


@dataclass(frozen=True)
class EmbeddingParity:
    count: int
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float  # on L2-normalised embeddings, so it is comparable across models

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def embedding_parity(reference: np.ndarray, candidate: np.ndarray) -> EmbeddingParity:
    if reference.shape != candidate.shape:
        raise ValueError(f"embedding shapes differ: reference {reference.shape} vs candidate {candidate.shape}")
    ref, cand = l2_normalize(reference, np.float64), l2_normalize(candidate, np.float64)
    cosine = np.sum(ref * cand, axis=-1)
    return EmbeddingParity(
        count=int(ref.shape[0]),
        min_cosine=float(cosine.min()),
        mean_cosine=float(cosine.mean()),
        max_abs_diff=float(np.abs(ref - cand).max()),
    )


def zero_shot_agreement(
    ref_images: np.ndarray, ref_texts: np.ndarray, cand_images: np.ndarray, cand_texts: np.ndarray
) -> float:
    """Fraction of images whose best-matching text is the same under both models."""
    ref = np.argmax(l2_normalize(ref_images, np.float64) @ l2_normalize(ref_texts, np.float64).T, axis=1)
    cand = np.argmax(l2_normalize(cand_images, np.float64) @ l2_normalize(cand_texts, np.float64).T, axis=1)
    return float(np.mean(ref == cand))


@dataclass(frozen=True)
class ZeroShotAccuracy:
    top1: float
    top5: float
    predictions: tuple[int, ...]  # top-1 class per image


def class_embeddings(text_embeddings: np.ndarray, templates: int, dtype: type = np.float64) -> np.ndarray:
    """CLIP's prompt ensembling: rows are (class, template) in class-major order; each class is the
    normalised mean of its normalised template embeddings (in float64 for statistics; the runtime
    keeps float32)."""
    per_class = l2_normalize(text_embeddings, dtype).reshape(-1, templates, text_embeddings.shape[-1])
    return l2_normalize(per_class.mean(axis=1))


def zero_shot_accuracy(image_embeddings: np.ndarray, classes: np.ndarray, labels: np.ndarray) -> ZeroShotAccuracy:
    scores = l2_normalize(image_embeddings.astype(np.float64)) @ classes.T
    k = min(5, classes.shape[0])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    labels = np.asarray(labels)
    return ZeroShotAccuracy(
        top1=float((top[:, 0] == labels).mean()),
        top5=float((top == labels[:, None]).any(1).mean()),
        predictions=tuple(int(p) for p in top[:, 0]),
    )
