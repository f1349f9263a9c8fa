"""Which FAISS index a dataset gets, by a stated rule (autofaiss's rules, applied by hand: its
numpy<2 pin breaks current pyarrow), and the in-memory build + nprobe tuning that both
`clipexport index` and `verify --retrieval` use.

The rule, for N rows of dimension D and a memory budget B (`--max-memory`, none by default):
1. exact (`Flat`, inner product) when N <= EXACT_MAX_ROWS and N*D*4 bytes fit B;
2. else `IVF{nlist},Flat` with nlist the power of two nearest 2*sqrt(N) (FAISS's guideline is
   4..16*sqrt(N) on big machines; half the lower end keeps k-means on a few cores to about a
   minute at 1M rows), lowered until every list gets MIN_TRAIN_PER_LIST training rows, when
   the vectors themselves fit B; it trains on TRAIN_PER_LIST rows per list;
3. else `IVF{nlist},PQ{m}` (8-bit codes) with the largest m (a divisor of D, at most D/2) whose
   codes fit B; nothing fits: one line naming the smallest budget that would.
nprobe is then tuned on a sample of the index's own rows: the smallest of 1, 2, 3, 4, 6, 8, 12, ...
whose recall@10 against exact search reaches the target (default 0.95).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Sequence

import numpy as np

from clipexport.errors import InputError
from clipexport.parity.retrieval import recall_against_exact
from clipexport.vectors import exact_top_k, exact_top_k_scored, without_own

# Exact search costs N*D multiply-adds per query. benchmarks/retrieval.py measured, on this repo's
# 2-core CI machine: 100k x 512 exact batch-1 p50 in the tens of ms, 1M in hundreds — past 200k
# rows a query stops feeling interactive, so the rule switches to IVF there.
EXACT_MAX_ROWS = 200_000
MIN_TRAIN_PER_LIST = 39  # FAISS's k-means warns below 39 training points per centroid
TRAIN_PER_LIST = 100  # rows per list to train on (FAISS samples at most 256; 100 keeps k-means short)
NLIST_PER_SQRT_N = 2
DEFAULT_TARGET_RECALL = 0.95  # the goal for the approximate index, recall@10 vs exact
RECALL_SAMPLE = 1000  # query rows drawn from the index's own rows to measure recall
RECALL_K = 10
PQ_CODEBOOK = 256  # 8-bit sub-quantizer codes
ID_BYTES = 8  # FAISS stores an int64 id per IVF entry
MAX_MEMORY = 1 << 60  # 1 EiB: a --max-memory past this is a typo (1e999 would overflow an int)


class IndexKind(str, Enum):
    AUTO = "auto"  # the rule above
    EXACT = "exact"
    APPROXIMATE = "approximate"


@dataclass(frozen=True)
class IndexPlan:
    factory: str  # the faiss.index_factory string
    exact: bool
    nlist: int  # 0 for exact
    pq_m: int  # 0 unless PQ
    estimated_bytes: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IndexPlan":
        """The plan an index's manifest recorded (its extra keys, nprobe and the like, ignored)."""
        return cls(
            *(
                data.get(name, default)
                for name, default in (
                    ("factory", ""),
                    ("exact", False),
                    ("nlist", 0),
                    ("pq_m", 0),
                    ("estimated_bytes", 0),
                    ("reason", ""),
                )
            )
        )


def parse_memory(text: str | int | None) -> int | None:
    """'16G', '512M', '2.5GB', '1e9' or an int, in bytes; None stays None."""
    if text is None or isinstance(text, int):
        if isinstance(text, int) and text <= 0:
            raise InputError(f"--max-memory must be positive, got {text}")
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise InputError(f"--max-memory '{text}' is not a size; write e.g. 4G, 512M or a number of bytes")
    value = float(match.group(1)) * 1024 ** "_kmgt".index(match.group(2) or "_")
    if not math.isfinite(value) or value > MAX_MEMORY:
        raise InputError(
            f"--max-memory '{text}' is larger than any machine ({_size(MAX_MEMORY)} at most); write e.g. "
            "64G, or leave it out for no budget"
        )
    if value < 1:
        raise InputError(f"--max-memory must be positive, got '{text}'")
    return int(value)


def _nlist(rows: int) -> int:
    target = NLIST_PER_SQRT_N * math.sqrt(rows)
    nlist = 2 ** max(0, round(math.log2(max(target, 1))))
    while nlist > 1 and rows < MIN_TRAIN_PER_LIST * nlist:
        nlist //= 2
    return nlist


def plan_index(rows: int, dim: int, kind: IndexKind = IndexKind.AUTO, max_memory: int | None = None) -> IndexPlan:
    if rows < 1:
        raise InputError("the dataset has no rows to index; embed some inputs first")
    flat = rows * dim * 4
    budget = max_memory if max_memory is not None else math.inf
    if kind is IndexKind.EXACT or (kind is IndexKind.AUTO and rows <= EXACT_MAX_ROWS and flat <= budget):
        if flat > budget:
            raise InputError(
                f"an exact index of {rows} x {dim} needs {_size(flat)}, over --max-memory {_size(budget)}; "
                "raise it or use --kind approximate"
            )
        why = (
            "requested" if kind is IndexKind.EXACT else f"{rows} rows <= {EXACT_MAX_ROWS}: exact search is fast enough"
        )
        return IndexPlan("Flat", True, 0, 0, flat, why)
    nlist = _nlist(rows)
    centroids = nlist * dim * 4
    ivf_flat = flat + rows * ID_BYTES + centroids
    if ivf_flat <= budget:
        why = (
            f"{rows} rows > {EXACT_MAX_ROWS}" if kind is IndexKind.AUTO else "approximate requested"
        ) + f"; nlist {nlist} ~ {NLIST_PER_SQRT_N}*sqrt(N); the vectors fit the memory budget"
        return IndexPlan(f"IVF{nlist},Flat", False, nlist, 0, ivf_flat, why)
    for m in sorted((m for m in range(1, dim // 2 + 1) if dim % m == 0), reverse=True):
        size = rows * (m + ID_BYTES) + centroids + PQ_CODEBOOK * dim * 4
        if size <= budget:
            return IndexPlan(
                f"IVF{nlist},PQ{m}",
                False,
                nlist,
                m,
                size,
                f"the vectors ({_size(flat)}) are over --max-memory {_size(budget)}: PQ{m} codes "
                f"({m} bytes per row) fit",
            )
    smallest = rows * (1 + ID_BYTES) + centroids + PQ_CODEBOOK * dim * 4
    raise InputError(
        f"no index of {rows} x {dim} fits --max-memory {_size(budget)} (the smallest, PQ1, needs "
        f"{_size(smallest)}); raise --max-memory"
    )


def _size(n: float) -> str:
    if n == math.inf:
        return "unlimited"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def faiss_module() -> Any:
    from clipexport._deps import require

    return require("faiss", "building and searching vector indexes")


def new_index(plan: IndexPlan, dim: int) -> Any:
    faiss = faiss_module()
    return faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)


def training_rows(plan: IndexPlan, rows: int) -> int:
    """How many rows to train on: TRAIN_PER_LIST per list, and enough for PQ's 256-entry codebooks."""
    if plan.exact:
        return 0
    return min(rows, max(TRAIN_PER_LIST * plan.nlist, PQ_CODEBOOK * MIN_TRAIN_PER_LIST if plan.pq_m else 0))


def set_nprobe(index: Any, nprobe: int) -> None:
    if nprobe:
        faiss_module().extract_index_ivf(index).nprobe = int(nprobe)


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) for unit-normalised float32 queries, best first.

    An exact (Flat) index is searched as one BLAS matrix product over its stored vectors:
    benchmarks/retrieval.py measured FAISS's IndexFlatIP 2x slower than that on this repo's 2-core
    machine at batch 1 (205 vs 100 ms at 1M rows) and up to 3x at batch 64; the answer is the same."""
    queries = np.ascontiguousarray(queries, np.float32)
    faiss = faiss_module()
    if isinstance(index, faiss.IndexFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT:
        vectors = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
        return exact_top_k_scored(queries, vectors, int(k))
    scores, rows = index.search(queries, int(k))
    return scores, rows


@dataclass(frozen=True)
class Tuned:
    nprobe: int  # 0 for exact
    recall: dict[str, float]  # query kind -> recall@10 vs exact at that nprobe
    curve: list[dict[str, Any]]  # every nprobe tried


def tune_nprobe(
    index: Any,
    plan: IndexPlan,
    samples: dict[str, tuple[np.ndarray, np.ndarray, Sequence[int] | None]],
    target: float = DEFAULT_TARGET_RECALL,
) -> Tuned:
    """The smallest nprobe (1, 2, 3, 4, 6, 8, ...) whose recall@10 against exact search reaches `target` for
    every query kind in `samples` (kind -> (queries, exact top-k rows, own row per query or None));
    the last one tried (nprobe = nlist, an exhaustive scan) when none does."""
    if plan.exact:
        return Tuned(0, {kind: 1.0 for kind in samples}, [])
    curve = []
    nprobe = 1
    while True:
        set_nprobe(index, nprobe)
        recall = {kind: _recall(index, q, exact, own) for kind, (q, exact, own) in samples.items()}
        curve.append({"nprobe": nprobe, **{f"recall_at_{RECALL_K}_{k}": v for k, v in recall.items()}})
        if all(v >= target for v in recall.values()) or nprobe >= plan.nlist:
            return Tuned(nprobe, recall, curve)
        nprobe = min(_next_probe(nprobe), plan.nlist)


def _next_probe(nprobe: int) -> int:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ...: powers of two and the halfway steps between them, so
    the tuned value overshoots the target by at most 1.5x the lists scanned."""
    power = 1 << (nprobe.bit_length() - 1)
    return power * 3 // 2 if nprobe == power and power >= 2 else power * 2


def _recall(index: Any, queries: np.ndarray, exact: np.ndarray, own: Sequence[int] | None) -> float:
    k = exact.shape[1]
    _, found = search(index, queries, k + (1 if own is not None else 0))
    if own is not None:
        found = without_own(found, own, k)
    return recall_against_exact(found, exact, k)


def recall_samples(
    vectors: np.ndarray,
    rng: np.random.Generator,
    extra: dict[str, np.ndarray] | None = None,
    size: int = RECALL_SAMPLE,
    own_kind: str = "image",
) -> dict[str, tuple[np.ndarray, np.ndarray, Sequence[int] | None]]:
    """Query samples with their exact answers over `vectors`: rows of the index itself (their own
    row excluded from both answers), and any other query sets (e.g. text queries on an image index)."""
    own = np.sort(rng.choice(len(vectors), min(size, len(vectors)), replace=False))
    samples: dict[str, tuple[np.ndarray, np.ndarray, Sequence[int] | None]] = {}
    k = min(RECALL_K, len(vectors) - 1)
    if k >= 1:
        samples[own_kind] = (vectors[own], exact_top_k(vectors[own], vectors, k, exclude=own.tolist()), own.tolist())
    for kind, queries in (extra or {}).items():
        picked = queries[np.sort(rng.choice(len(queries), min(size, len(queries)), replace=False))]
        samples[kind] = (picked, exact_top_k(picked, vectors, min(RECALL_K, len(vectors))), None)
    return samples


def build_in_memory(
    vectors: np.ndarray,
    plan: IndexPlan,
    seed: int = 0,
    extra_queries: dict[str, np.ndarray] | None = None,
    target: float = DEFAULT_TARGET_RECALL,
) -> tuple[Any, Tuned]:
    """An index over unit-normalised float32 `vectors`, trained, filled and tuned (verify --retrieval)."""
    index = new_index(plan, vectors.shape[1])
    rng = np.random.default_rng(seed)
    if not plan.exact:
        pick = rng.choice(len(vectors), training_rows(plan, len(vectors)), replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(pick)], np.float32))
    index.add(np.ascontiguousarray(vectors, np.float32))
    tuned = (
        tune_nprobe(index, plan, recall_samples(vectors, rng, extra_queries), target)
        if not plan.exact
        else Tuned(0, {}, [])
    )
    return index, tuned


__all__ = [
    "DEFAULT_TARGET_RECALL",
    "EXACT_MAX_ROWS",
    "IndexKind",
    "IndexPlan",
    "RECALL_K",
    "RECALL_SAMPLE",
    "Tuned",
    "build_in_memory",
    "faiss_module",
    "new_index",
    "parse_memory",
    "plan_index",
    "recall_samples",
    "search",
    "set_nprobe",
    "training_rows",
    "tune_nprobe",
]
