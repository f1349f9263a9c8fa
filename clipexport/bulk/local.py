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
from clipexport.errors import InputError, StepFailed

Advance = Callable[[int, int], None]  # (inputs done in this step, total inputs of the run)
IN_FLIGHT_PER_WORKER = 2
MAX_BATCH_DEATHS = 3  # a batch whose decoding kills this many workers is reported, not retried forever

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
    """A decode worker ignores Ctrl-C and SIGTERM: both reach the whole process group (a terminal's
    Ctrl-C, `timeout`, systemd, Kubernetes), and a worker that died of one would leave the pool
    waiting forever for its batch. The parent handles them and stops the pool (SIGKILL, see
    `ImagePipeline.close`); a worker also dies with its parent, by SIGKILL, which it cannot ignore."""
    global _worker_preprocessor
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from clipexport.process import die_with_parent

    die_with_parent(signal.SIGKILL)
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


def _worker_main(connection: Any, preprocess: Any, exif_transpose: bool) -> None:
    """A decode worker's loop: (start, items) in, a decoded `Batch` out, over its own pipe."""
    _init_worker(preprocess, exif_transpose)
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        connection.send(decode_batch(*task))


@dataclass
class _Worker:
    process: Any
    connection: Any
    in_flight: collections.deque  # the (start, items) tasks sent and not yet answered, in order


class ImagePipeline:
    """Decoded batches in input order, `workers` processes ahead of the consumer.

    Each worker has its own pipe, so no lock is shared between processes: a worker killed at any
    moment (a group SIGTERM it did not ignore, the OOM killer, a decoder crash) cannot leave a
    lock held that the rest wait on forever, as multiprocessing.Pool's shared queues can. A dead
    worker is replaced and its unanswered batches are sent again (rows are keyed by input index,
    so none is lost or doubled); one batch that kills MAX_BATCH_DEATHS workers stops the run."""

    def __init__(self, preprocess: Any, exif_transpose: bool, workers: int):
        import multiprocessing

        # spawn: the workers start clean, whatever threads the backend has (ONNX Runtime's pools).
        self.context = multiprocessing.get_context("spawn")
        self.args = (preprocess, exif_transpose)
        self.workers: list[_Worker] = []
        self.deaths: collections.Counter = collections.Counter()
        try:
            for _ in range(workers):
                self.workers.append(self._start())
        except BaseException:
            self.close()  # workers ignore SIGTERM: none may be left for the interpreter's exit to wait on
            raise

    def _start(self) -> _Worker:
        parent, child = self.context.Pipe(duplex=True)
        process = self.context.Process(target=_worker_main, args=(child, *self.args), daemon=True,
                                       name="clipexport-decode")
        process.start()
        child.close()
        return _Worker(process, parent, collections.deque())

    def _send(self, worker: _Worker, task: tuple[int, Sequence[Item]]) -> None:
        worker.in_flight.append(task)
        try:
            worker.connection.send(task)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # it died: its sentinel says so, and _replace sends the task again

    def _replace(self, worker: _Worker) -> None:
        """A worker died: start another and give it the dead one's unanswered batches."""
        worker.process.join(timeout=1)
        worker.connection.close()
        for start, items in worker.in_flight:
            self.deaths[start] += 1
            if self.deaths[start] >= MAX_BATCH_DEATHS:
                code = worker.process.exitcode
                raise StepFailed(f"a decode worker died {self.deaths[start]} times (last exit code {code}) on the batch "
                                 f"of inputs {start}..{start + len(items) - 1} (first: {items[0].id}); one of those "
                                 "images crashes the decoder: remove it and run the same command again")
        fresh = self._start()
        self.workers[self.workers.index(worker)] = fresh
        for task in worker.in_flight:
            self._send(fresh, task)

    def batches(self, inputs: InputList, ranges: Sequence[tuple[int, int]], batch_size: int) -> Iterator[Batch]:
        from multiprocessing.connection import wait

        tasks = ((start, inputs.items[start:min(start + batch_size, end)])
                 for first, end in ranges for start in range(first, end, batch_size))
        order: collections.deque = collections.deque()  # batch starts, in input order
        done: dict[int, Batch] = {}
        limit = len(self.workers) * IN_FLIGHT_PER_WORKER

        def fill() -> None:
            while len(order) < limit:
                task = next(tasks, None)
                if task is None:
                    return
                self._send(min(self.workers, key=lambda w: len(w.in_flight)), task)
                order.append(task[0])

        fill()
        while order:
            if order[0] in done:
                yield done.pop(order.popleft())
                fill()
                continue
            by_handle = {}
            for worker in self.workers:
                by_handle[worker.connection] = worker
                by_handle[worker.process.sentinel] = worker
            for handle in wait(list(by_handle)):
                worker = by_handle[handle]
                if worker not in self.workers:  # replaced earlier in this round
                    continue
                try:
                    if handle is worker.connection:
                        batch = worker.connection.recv()
                        worker.in_flight.popleft()
                        done[batch.start] = batch
                        continue
                    while worker.connection.poll():  # answers sent before it died still count
                        batch = worker.connection.recv()
                        worker.in_flight.popleft()
                        done[batch.start] = batch
                except (EOFError, OSError):
                    pass
                if not worker.process.is_alive():
                    self._replace(worker)

    def close(self) -> None:
        """Stop every worker at once. SIGKILL: they ignore SIGTERM and SIGINT (see _init_worker), and
        no lock between processes can be left held."""
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.kill()
        for worker in self.workers:
            worker.process.join(timeout=5)
            worker.connection.close()
        self.workers = []


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
