"""Timing: warm-up, then repeated calls until both a count and a duration are reached;
latency percentiles and throughput from the same samples."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


WARMUP = 3  # untimed calls first: ORT/TensorRT allocate and pick kernels on the first runs


@dataclass(frozen=True)
class Timing:
    batch: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    items_per_s: float  # batch / mean latency

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def measure(
    fn: Callable[[], object],
    batch: int,
    warmup: int = WARMUP,
    min_iterations: int = 10,
    min_seconds: float = 1.0,
    max_iterations: int = 1000,
) -> Timing:
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_iterations and (
        len(samples) < min_iterations or time.perf_counter() - start < min_seconds
    ):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return summarize(samples, batch)


def summarize(samples: list[float], batch: int) -> Timing:
    ms = np.asarray(samples) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return Timing(batch, len(samples), float(p50), float(p90), float(p99), mean, batch / (mean / 1000.0))


def gemm_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """The machine's practical FP32 peak: best-of-N square SGEMM through numpy's BLAS, all cores.
    Used as the denominator of "fraction of peak"; vendor theoretical peaks are higher."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * size**3 / best


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
