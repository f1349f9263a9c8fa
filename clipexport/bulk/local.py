"""The pipelined local engine: images decode and preprocess in a pool of worker processes while
the backend runs, batch k on the backend while batches k+1... decode; rows keep input order.

Memory is bounded by the batches in flight (2 per worker), never by the corpus. The decode code
is the runtime's own `ImagePreprocessor` (exact), with the same skip / refuse rule for unreadable
images. Texts need no pool: the tokenizer is cheap next to the text tower.
"""

from __future__ import annotations

import collections
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from clipexport.bulk.sources import InputList, Item, Kind, read_item_bytes
from clipexport.errors import InputError

Advance = Callable[[int, int], None]  # (inputs done in this step, total inputs of the run)
IN_FLIGHT_PER_WORKER = 2

_worker_preprocessor: Any = None


@dataclass(frozen=True)
class Batch:
    """A decoded batch: pixels of the readable items, their offsets in the batch, and the rest."""

    start: int  # input index of the batch's first item
    count: int
    pixels: np.ndarray
    kept: tuple[int, ...]
    skipped: tuple[tuple[int, str], ...]


def _init_worker(preprocess: Any, exif_transpose: bool) -> None:
    """A decode worker: ignores Ctrl-C (the parent stops the pool) and dies with its parent."""
    global _worker_preprocessor
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    from clipexport.runtime.preprocess import ImagePreprocessor

    _worker_preprocessor = ImagePreprocessor(preprocess, exif_transpose=exif_transpose)


def decode_batch(start: int, items: Sequence[Item], preprocessor: Any = None) -> Batch:
    """Read and preprocess `items`; an unreadable one is reported with its id, not raised."""
    preprocessor = preprocessor or _worker_preprocessor
    h, w = preprocessor.config.image_size
    pixels = np.empty((len(items), 3, h, w), np.float32)
    kept, skipped = [], []
    for offset, item in enumerate(items):
        try:
            pixels[len(kept)] = preprocessor.one(read_item_bytes(item), name=f"image {item.id}")
            kept.append(offset)
        except InputError as exc:
            skipped.append((offset, str(exc)))
    return Batch(start, len(items), pixels[:len(kept)], tuple(kept), tuple(skipped))


def _worker_decode(start: int, items: Sequence[Item]) -> Batch:
    return decode_batch(start, items)


class ImagePipeline:
    """Decoded batches in input order, `workers` processes ahead of the consumer."""

    def __init__(self, preprocess: Any, exif_transpose: bool, workers: int):
        import multiprocessing

        self.workers = workers
        # spawn: the workers start clean, whatever threads the backend has (ONNX Runtime's pools).
        self.pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker,
                                                                initargs=(preprocess, exif_transpose))

    def batches(self, inputs: InputList, ranges: Sequence[tuple[int, int]], batch_size: int) -> Iterator[Batch]:
        tasks = ((start, min(start + batch_size, end)) for first, end in ranges for start in range(first, end, batch_size))
        pending: collections.deque = collections.deque()
        limit = self.workers * IN_FLIGHT_PER_WORKER
        for start, end in tasks:
            pending.append(self.pool.apply_async(_worker_decode, (start, inputs.items[start:end])))
            if len(pending) >= limit:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


@dataclass
class Throughput:
    done: int = 0
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    @property
    def per_second(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


def run_local(artifact: Any, backend: str, precision: str, threads: int | None, workers: int | None,
              exif_transpose: bool, skip_bad: bool, inputs: InputList, ranges: Sequence[tuple[int, int]],
              batch_size: int, advance: Advance | None,
              on_batch: Callable[[int, list[int], np.ndarray, list[tuple[int, str]]], None],
              device: str | None = None) -> int:
    """Open the one tower the inputs need (backend threads that sleep between batches, so decode
    workers get the cores) and embed the ranges; returns the embedding width."""
    from clipexport.bulk.sources import default_workers
    from clipexport.runtime.clip_runtime import ClipRuntime

    tower = "text" if inputs.kind is Kind.TEXT else "vision"
    with ClipRuntime.load(artifact, backend=backend, precision={tower: precision}, threads=threads,
                          exif_transpose=exif_transpose, towers=(tower,), spin=False, device=device) as runtime:
        embed_ranges(runtime, inputs, ranges, batch_size, workers or default_workers(threads), exif_transpose,
                     skip_bad, advance, on_batch)
        return runtime.manifest.embed_dim


def embed_ranges(runtime: Any, inputs: InputList, ranges: Sequence[tuple[int, int]], batch_size: int, workers: int,
                 exif_transpose: bool, skip_bad: bool, advance: Advance | None,
                 on_batch: Callable[[int, list[int], np.ndarray, list[tuple[int, str]]], None]) -> None:
    """Embed the inputs of each (first, end) range in order: `on_batch(start, kept input indices,
    embeddings, skipped (input index, reason))` per batch. An unreadable image stops the run
    unless `skip_bad` (then it is reported and left out)."""
    total = sum(end - first for first, end in ranges)
    if inputs.kind is Kind.TEXT:
        for first, end in ranges:
            for start in range(first, end, batch_size):
                part = inputs.items[start:min(start + batch_size, end)]
                names = [item.id for item in part]
                rows = runtime.encode_text([item.text for item in part], batch_size, names=names)
                on_batch(start, list(range(start, start + len(part))), rows, [])
                if advance:
                    advance(len(part), total)
        return
    pipeline = ImagePipeline(runtime.manifest.preprocess, exif_transpose, workers)
    try:
        for batch in pipeline.batches(inputs, ranges, batch_size):
            if batch.skipped and not skip_bad:
                raise InputError(f"{batch.skipped[0][1]} (pass --skip-bad to leave unreadable images out and list them)")
            rows = runtime.encode_pixels(batch.pixels) if len(batch.pixels) else np.zeros((0, runtime.manifest.embed_dim),
                                                                                          np.float32)
            on_batch(batch.start, [batch.start + k for k in batch.kept], rows,
                     [(batch.start + k, reason) for k, reason in batch.skipped])
            if advance:
                advance(batch.count, total)
    finally:
        pipeline.close()
