"""The pipelined local engine: images decode and preprocess in worker processes while the backend
runs, batch k on the backend while batches k+1... decode; rows keep input order.

What crosses a process boundary is each image's resized, cropped **uint8** pixels (3 x 224 x 224 =
147 KiB, a quarter of the float32 tensor), raw on the worker's own socket (`_Channel`): the parent
reads them straight into a receive buffer it reuses (no pickle copy, no fresh pages per chunk:
0.037 ms of parent CPU per image received in a 2-core run, 0.072 through multiprocessing's
Connection and pickle), then normalises each chunk straight into its rows of the batch's float
buffer (on plain pages: `plain_pages_float32`), with the source library's own arithmetic
(`ImagePreprocessor.normalize`: the same bits as image by image, 0.065 ms per 224 px image alone).

How the cores are shared: the decode workers run at the lowest CPU priority (DECODE_NICE), the
backend with its own threads (ONNX Runtime: the physical cores) and the parent at the caller's.
The backend's threads and the parent preempt a worker at once, so a layer split over every core
is never held by a thread waiting behind a decoder, and decoding takes exactly the CPU time the
model leaves (between its batches, and while it writes). That is the time-shared ideal, 1 / (1 /
decode rate + 1 / model rate) on every core, with no measured split to get wrong (the split it
replaced, decode workers and backend threads from the first batches' costs, reached 91-93% of
the ideal at 0.5 MP on 2 cores; this, 95%: benchmarks/results/bulk-scaling-2core-r3.json). Where decoding is a small share of the work and separate
CPUs for each side come within PIN_MIN_FRACTION of that ideal (the 16-vCPU machine at 0.5 MP;
never on 2 cores), the first batches' measured costs pin the sides apart (`pinned_split`) and the
backend's threads may spin: measured there, 14 pinned spinning threads kept 55 img/s beside 2
decoders, against 48 sharing every CPU (before the decoders' priority was lowered).
`--workers` / `--threads` set either side instead. The decode workers start before the backend
loads, so the first images decode while it does.

Memory is bounded by the batches in flight (2 per worker), never by the corpus. The decode code
is the runtime's own `ImagePreprocessor` (exact), with the same skip / refuse rule for unreadable
images. Texts need no pool: the tokenizer is cheap next to the text tower.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import mmap
import os
import pickle
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from clipexport.bulk.input_list import InputList, Item, Kind, item_stat, read_item_bytes, towers_of
from clipexport.progress import Advance
from clipexport.errors import InputError, StepFailed

if TYPE_CHECKING:
    from clipexport.artifact.precision import Precision
    from clipexport.runtime.backends import BackendKind

IN_FLIGHT_PER_WORKER = 2
# The decode workers' niceness: the lowest priority, so the backend's threads and the parent always
# run first and decoding fills what they leave. Measured on 2 cores (ViT-B-32, ONNX Runtime FP32,
# 2 workers beside 2 backend threads): 0.5 MP 1,000 photos 54.4 s vs 58.0 s with the measured split;
# 12 MP 320 photos 48.5 s vs 50.2 s (SCHED_IDLE: 55.0 s at 0.5 MP, no better).
DECODE_NICE = 19
MAX_BATCH_DEATHS = 3  # a batch whose decoding kills this many workers is reported, not retried forever
# The split of the cores is decided once this many images have been through both decode and the
# backend (the first batch of each is a warm-up: the session's first run, the workers' imports).
CALIBRATION_IMAGES = 64

_worker_preprocessor: Any = None
_worker_fast_decode = False


@dataclass(frozen=True)
class Batch:
    """A decoded batch: pixels of the readable items, their offsets in the batch, and the rest."""

    start: int  # input index of the batch's first item
    count: int
    pixels: np.ndarray  # float32 [kept, 3, H, W] (uint8 from a worker; None on its wire, sent raw after it)
    kept: tuple[int, ...]
    skipped: tuple[tuple[int, str], ...]
    decode_seconds: float = 0.0  # the worker's CPU time for the batch
    drafted: int = 0  # JPEGs decoded at a reduced DCT scale (--fast-decode)
    warm: bool = False  # decoded by a worker that had decoded before (its first task pays its imports)
    facts: tuple[tuple, ...] = ()  # per kept image, what decoding told (sources.DECODED_COLUMNS, in order)


# on_batch(start, kept input indices, their embeddings, skipped (input index, reason), what decoding
# told of each kept image (sources.DECODED_COLUMNS; empty for texts)): how an engine hands each
# batch to the writer.
OnBatch = Callable[[int, list[int], np.ndarray, list[tuple[int, str]], Sequence[tuple]], None]


@dataclass
class PipelineStats:
    """What a run measured about itself (benchmarks/bulk_embed.py reports it)."""

    images: int = 0
    batches: int = 0
    bytes_received: int = 0  # from the decode workers: each chunk's framing, pickled facts and raw pixels
    parent_cpu_s: float = 0.0  # the parent's main thread outside the backend: receive, normalise, write
    # The same over the run's second half: what each more image costs once what a run pays once is
    # paid (its first batches' buffers faulted in, the workers' first chunks).
    parent_steady_cpu_s: float = 0.0
    steady_images: int = 0
    backend_cpu_s: float = 0.0  # the process's CPU during the backend's runs (all its threads)
    decode_cpu_s: float = 0.0  # the workers' CPU, summed
    warm_decode_cpu_s: float = 0.0  # the same, over warm workers' batches only (what the split uses)
    warm_decode_images: int = 0
    drafted: int = 0
    workers: int = 0
    threads: int | None = None
    split: str = ""  # how the cores were shared, and why
    dim: int = 0

    @property
    def parent_ms_per_image(self) -> float:
        return 1e3 * self.parent_cpu_s / self.images if self.images else 0.0

    @property
    def parent_steady_ms_per_image(self) -> float:
        return 1e3 * self.parent_steady_cpu_s / self.steady_images if self.steady_images else 0.0

    @property
    def bytes_per_image(self) -> float:
        return self.bytes_received / self.images if self.images else 0.0


def _init_worker(preprocess: Any, exif_transpose: bool, fast_decode: bool = False) -> None:
    """A decode worker ignores Ctrl-C and SIGTERM: both reach the whole process group (a terminal's
    Ctrl-C, `timeout`, systemd, Kubernetes), and a worker that died of one would leave the pool
    waiting forever for its batch. The parent handles them and stops the workers (SIGKILL, see
    `ImagePipeline.close`); a worker also dies with its parent, by SIGKILL, which it cannot ignore."""
    global _worker_preprocessor, _worker_fast_decode
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from clipexport.process import die_with_parent

    die_with_parent(signal.SIGKILL)
    lower_priority(DECODE_NICE)
    from clipexport.runtime.preprocess import ImagePreprocessor

    _worker_preprocessor = ImagePreprocessor(preprocess, exif_transpose=exif_transpose)
    _worker_fast_decode = fast_decode


def lower_priority(niceness: int) -> None:
    """Run the calling process (its threads started from now on too) at `niceness`, where the
    platform has one; raising it needs no privilege."""
    if hasattr(os, "nice"):
        try:
            os.nice(max(0, niceness - os.nice(0)))
        except OSError:
            pass


def decode_batch(
    start: int,
    items: Sequence[Item],
    preprocessor: Any = None,
    fast_decode: bool | None = None,
    normalized: bool = True,
) -> Batch:
    """Read and preprocess `items`; an unreadable one is reported with its id, not raised.
    `normalized=False`: uint8 pixels, as a worker sends them."""
    from clipexport.runtime.preprocess import decode_or_skip

    preprocessor = preprocessor or _worker_preprocessor
    fast = _worker_fast_decode if fast_decode is None else fast_decode
    h, w = preprocessor.config.image_size
    began = time.process_time()
    pixels = np.empty((len(items), 3, h, w), np.uint8)
    drafted, facts = 0, []

    def decode(offset: int, item: Item) -> None:
        nonlocal drafted
        data = read_item_bytes(item)
        pixels[len(facts)], size, reduced = preprocessor.pixels_sized(
            data, name=f"image {item.label}", fast_decode=fast
        )
        stat = item_stat(item)
        facts.append((*size, len(data), stat[1] if stat else None, hashlib.sha256(data).hexdigest()))
        drafted += reduced

    done, skipped = decode_or_skip(items, decode)
    kept = [offset for offset, _ in done]
    out = pixels[: len(kept)]
    if normalized:
        out = preprocessor.normalize(out)
    return Batch(
        start, len(items), out, tuple(kept), tuple(skipped), time.process_time() - began, drafted, facts=tuple(facts)
    )


class _Channel:
    """One end of a decode worker's socket pair. A message is a fixed header (the pickled part's
    length, the raw payload's length), a small pickled object, then an optional raw payload that
    the receiver reads straight into a buffer of its own (`receive`): a decoded chunk's pixels
    cross with one copy in the kernel and none in Python. multiprocessing's Connection reads a
    message in pieces into a growing BytesIO and pickle copies the array out again (the parent's
    CPU per 224 px image received, 2-core run: 0.072 ms that way, 0.037 this way)."""

    HEADER = struct.Struct("!QQ")

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def fileno(self) -> int:  # multiprocessing.connection.wait takes anything with a fileno
        return self.sock.fileno()

    def send(self, message: Any, payload: np.ndarray | None = None) -> None:
        body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        raw = memoryview(b"" if payload is None else np.ascontiguousarray(payload).reshape(-1).view(np.uint8))
        self.sock.sendall(self.HEADER.pack(len(body), raw.nbytes) + body)
        if raw.nbytes:
            self.sock.sendall(raw)

    def receive(self, buffer: Callable[[int], np.ndarray] | None = None) -> tuple[Any, np.ndarray | None, int]:
        """(message, payload, bytes read): the payload is read into `buffer(size)` (a flat uint8
        array of at least `size` bytes), its first `size` bytes returned. EOFError: the other end
        closed between messages; OSError: it closed in the middle of one."""
        head = bytearray(self.HEADER.size)
        self._read_into(memoryview(head), first=True)
        length, size = self.HEADER.unpack(head)
        body = bytearray(length)
        self._read_into(memoryview(body))
        payload = None
        if size:
            target = buffer(size) if buffer is not None else np.empty(size, np.uint8)
            payload = target[:size]
            self._read_into(memoryview(payload))
        return pickle.loads(body), payload, self.HEADER.size + length + size

    def _read_into(self, view: memoryview, first: bool = False) -> None:
        got = 0
        while got < len(view):
            count = self.sock.recv_into(view[got:])
            if count == 0:
                if first and got == 0:
                    raise EOFError
                raise OSError("the other end closed in the middle of a message")
            got += count

    def ready(self) -> bool:
        """Whether a message (or the other end's close) is waiting."""
        from multiprocessing.connection import wait

        return bool(wait([self], 0))

    def close(self) -> None:
        self.sock.close()


def _worker_main(channel: socket.socket, preprocess: Any, exif_transpose: bool, fast_decode: bool) -> None:
    """A decode worker's loop: (start, items) in, a decoded `Batch` out over its own socket: the
    batch without its pixels pickled, then the uint8 pixels raw."""
    _init_worker(preprocess, exif_transpose, fast_decode)
    connection = _Channel(channel)
    warm = False
    while True:
        try:
            task, _, _ = connection.receive()
        except (EOFError, OSError):
            return
        batch = decode_batch(*task, normalized=False)
        connection.send((dataclasses.replace(batch, pixels=None, warm=warm), batch.pixels.shape), batch.pixels)
        warm = True


@dataclass
class _Worker:
    process: Any
    connection: _Channel
    in_flight: collections.deque  # the (start, items) tasks sent and not yet answered, in order


class ImagePipeline:
    """Decoded batches in input order, `workers` processes ahead of the consumer.

    Each worker has its own socket (`_Channel`), so no lock is shared between processes: a worker
    killed at any moment (a group SIGTERM it did not ignore, the OOM killer, a decoder crash)
    cannot leave a lock held that the rest wait on forever, as multiprocessing.Pool's shared
    queues can. A dead worker is replaced and its unanswered batches are sent again (rows are
    keyed by input index, so none is lost or doubled); one batch that kills MAX_BATCH_DEATHS
    workers stops the run."""

    def __init__(
        self,
        preprocess: Any,
        exif_transpose: bool,
        workers: int,
        fast_decode: bool = False,
        stats: PipelineStats | None = None,
    ):
        import multiprocessing

        from clipexport.runtime.preprocess import ImagePreprocessor

        # spawn: the workers start clean, whatever threads the backend has (ONNX Runtime's pools).
        self.context = multiprocessing.get_context("spawn")
        self.args = (preprocess, exif_transpose, fast_decode)
        self.normalizer = ImagePreprocessor(preprocess)
        self.stats = stats if stats is not None else PipelineStats()
        self.workers: list[_Worker] = []
        self.active = workers  # workers beyond this many get no new batches, and stop once idle
        self.deaths: collections.Counter = collections.Counter()
        self.cpus: tuple[int, ...] = ()  # where the workers run once pinned (see pin)
        self.spare: list[np.ndarray] = []  # receive buffers whose chunks are normalised, to reuse
        try:
            for _ in range(workers):
                self.workers.append(self._start())
        except BaseException:
            self.close()  # workers ignore SIGTERM: none may be left for the interpreter's exit to wait on
            raise

    def _start(self) -> _Worker:
        parent, child = socket.socketpair()
        try:
            process = self.context.Process(
                target=_worker_main, args=(child, *self.args), daemon=True, name="clipexport-decode"
            )
            process.start()  # spawn hands the child its end of the pair
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()  # only the worker holds it now: its death is an end of file here
        set_cpus(process.pid, self.cpus)
        return _Worker(process, _Channel(parent), collections.deque())

    def pin(self, cpus: Sequence[int]) -> None:
        """Run the workers (and any that replace one) on `cpus` only."""
        self.cpus = tuple(cpus)
        for worker in self.workers:
            set_cpus(worker.process.pid, self.cpus)

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
                raise StepFailed(
                    f"a decode worker died {self.deaths[start]} times (last exit code {code}) on the batch "
                    f"of inputs {start}..{start + len(items) - 1} (first: {items[0].label}); one of those "
                    "images crashes the decoder: remove it and run the same command again"
                )
        fresh = self._start()
        self.workers[self.workers.index(worker)] = fresh
        for task in worker.in_flight:
            self._send(fresh, task)

    def shrink(self, workers: int) -> None:
        """Keep `workers` decoding; the others finish what they hold and stop."""
        self.active = max(1, min(workers, len(self.workers)))
        self._retire_idle()

    def _retire_idle(self) -> None:
        for worker in list(self.workers[self.active :]):
            if not worker.in_flight:
                self.workers.remove(worker)
                worker.process.kill()
                worker.process.join(timeout=5)
                worker.connection.close()

    def _buffer(self, size: int) -> np.ndarray:
        """A flat uint8 receive buffer of at least `size` bytes: a spare one where one is big enough
        (no fresh pages to fault in), else a new one in place of a spare too small, so there are
        never more buffers than chunks ever held at once."""
        for number, spare in enumerate(self.spare):
            if spare.nbytes >= size:
                return self.spare.pop(number)
        if self.spare:
            self.spare.pop()
        return np.empty(size, np.uint8)

    def _receive(self, worker: _Worker) -> Batch:
        (batch, shape), pixels, size = worker.connection.receive(self._buffer)
        # No payload: every image of the chunk was unreadable (0 rows).
        batch = dataclasses.replace(
            batch, pixels=np.empty(shape, np.uint8) if pixels is None else pixels.reshape(shape)
        )
        worker.in_flight.popleft()
        self.stats.bytes_received += size
        self.stats.decode_cpu_s += batch.decode_seconds
        if batch.warm:
            self.stats.warm_decode_cpu_s += batch.decode_seconds
            self.stats.warm_decode_images += batch.count
        self.stats.drafted += batch.drafted
        return batch

    def batches(self, inputs: InputList, ranges: Sequence[tuple[int, int]], batch_size: int) -> Iterator[Batch]:
        """Model batches of `batch_size` (never across a range's end), in input order. Workers decode
        chunks of a batch (batch_size / workers images), so every worker has work even when the
        run has fewer batches than workers (160 camera photos are 5 batches of 32), and the parent
        assembles each batch from its chunks."""
        from multiprocessing.connection import wait

        chunk = max(1, -(-batch_size // max(1, self.active)))
        chunks_per_batch = -(-batch_size // chunk)
        tasks = (
            (c, b, inputs.items[c : min(c + chunk, b + batch_size, end)])
            for first, end in ranges
            for b in range(first, end, batch_size)
            for c in range(b, min(b + batch_size, end), chunk)
        )
        order: collections.deque = collections.deque()  # (chunk start, its batch's start), in input order
        done: dict[int, Batch] = {}
        parts: list[Batch] = []  # the chunks of the batch being assembled
        buffers: collections.deque = collections.deque([None, None])

        def fill() -> None:
            while len(order) < max(self.active * IN_FLIGHT_PER_WORKER, 2 * chunks_per_batch):
                task = next(tasks, None)
                if task is None:
                    return
                start, batch_start, items = task
                self._send(min(self.workers[: self.active], key=lambda w: len(w.in_flight)), (start, items))
                order.append((start, batch_start))

        def assembled() -> Batch:
            first = parts[0].start
            shape = (sum(len(p.pixels) for p in parts), *parts[0].pixels.shape[1:])
            kept = tuple(p.start - first + k for p in parts for k in p.kept)
            skipped = tuple((p.start - first + k, reason) for p in parts for k, reason in p.skipped)
            # Two float buffers in turn: the consumer is done with batch k when it asks for batch k + 2.
            buffers.rotate()
            if buffers[0] is None or buffers[0].shape != shape:
                buffers[0] = plain_pages_float32(shape)
            pixels, row = buffers[0], 0
            for part in parts:  # each chunk normalised into its rows: no uint8 copy of the batch first
                rows = pixels[row : row + len(part.pixels)]
                done = self.normalizer.normalize(part.pixels, rows)
                if done is not rows:  # HF's float64 arithmetic makes its own array
                    rows[...] = done
                row += len(rows)
                if part.pixels.base is not None and part.pixels.size:  # its receive buffer, free again
                    self.spare.append(part.pixels.base)
            out = Batch(
                first,
                sum(p.count for p in parts),
                pixels,
                kept,
                skipped,
                sum(p.decode_seconds for p in parts),
                sum(p.drafted for p in parts),
                facts=tuple(fact for p in parts for fact in p.facts),
            )
            parts.clear()
            return out

        fill()
        while order:
            if order[0][0] in done:
                start, batch_start = order.popleft()
                if parts and parts[0].start != batch_start:
                    yield assembled()
                parts.append(done.pop(start))
                if not order or order[0][1] != batch_start:
                    yield assembled()
                self._retire_idle()
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
                        batch = self._receive(worker)
                        done[batch.start] = batch
                        continue
                    while worker.connection.ready():  # answers sent before it died still count
                        batch = self._receive(worker)
                        done[batch.start] = batch
                except (EOFError, OSError):
                    pass
                if not worker.process.is_alive():
                    self._replace(worker)
        if parts:
            yield assembled()

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


def plain_pages_float32(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 array on ordinary 4 KiB pages. numpy asks for transparent huge pages
    on arrays of 4 MB and more, and where the kernel compacts memory to give them (THP defrag
    "madvise", Debian's and Ubuntu's default) their first touch can stall: a 32-image batch buffer
    (19 MB) took 70-140 ms of CPU to fault in on this project's 2-core VM, 12 ms on plain pages.
    A run makes two and reuses them, so huge pages would save nothing after."""
    count = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(4 * count, 1)), np.float32, count=count).reshape(shape)


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


def _cpus() -> list[int]:
    """The CPUs this process may use (its affinity), in order."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def _core(cpu: int) -> tuple[str, str]:
    """The physical core a CPU belongs to (sysfs topology); a CPU whose topology cannot be read
    counts as a core of its own."""
    topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
    try:
        with open(f"{topology}/physical_package_id") as package, open(f"{topology}/core_id") as core:
            return package.read().strip(), core.read().strip()
    except OSError:
        return "", str(cpu)


def cores() -> int:
    """The CPUs this process may use (its affinity)."""
    return len(_cpus())


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (sysfs topology; else the logical count).
    ONNX Runtime's default intra-op threads are the physical cores: more threads than that share
    hyper-threads and run slower (measured on the 16-vCPU machine: 36 vs 48 img/s at 16 threads)."""
    return len({_core(cpu) for cpu in _cpus()})


# Pin the two sides to separate CPUs when that split is predicted to reach at least this fraction of
# the shared ideal (cores / (decode + model) per image). Shared cores lost more than this on a
# machine with many while decoders ran at the backend's priority: ONNX Runtime's threads split every
# layer evenly, so one of 15 threads descheduled by a decode worker held the other 14 (16-vCPU Xeon,
# 0.5 MP: 53-77% of the ideal shared); on 2 cores, sharing reached 93% (bulk-scaling-*.json).
PIN_MIN_FRACTION = 0.85
# ... and only while decoding is a small share of the work: pinning keeps the backend's threads from
# being preempted, which matters when they hold most CPUs; when decoding dominates, decoders on a
# fixed set lose the CPUs the model leaves idle between batches. Measured: 16 vCPUs at 12 MP (decode
# 71% of the work) 19.7-20.7 img/s pinned vs 21.6 shared; 2 cores at 12 MP with --fast-decode (46%)
# 7.8-8.0 vs 9.0-9.1; 16 vCPUs at 0.5 MP (9%) 37.8-41.9 pinned vs 36.3 shared.
PIN_MAX_DECODE_SHARE = 0.25


@dataclass(frozen=True)
class Split:
    """Decode workers and backend threads on separate CPUs (the backend's threads may then spin: no
    decode worker waits for their core)."""

    workers: int
    threads: int
    backend_cpus: tuple[int, ...]
    decode_cpus: tuple[int, ...]


def cpu_order() -> list[int]:
    """This process's CPUs, one per physical core first, then their hyper-thread siblings, so a
    side given the first k CPUs gets k distinct cores where the machine has them."""
    seen: collections.Counter = collections.Counter()
    ranked = []
    for cpu in _cpus():
        key = _core(cpu)
        ranked.append((seen[key], cpu))
        seen[key] += 1
    return [cpu for _, cpu in sorted(ranked)]


def pinned_split(decode_cpu: float, model_cpu: float, cpus: Sequence[int] | None = None) -> Split | None:
    """The sides on separate CPUs, when decoding is at most PIN_MAX_DECODE_SHARE of the work and that
    comes within PIN_MIN_FRACTION of the shared ideal: the workers count that maximises
    min(workers / decode, threads / model) over the CPUs. None: both sides stay on every CPU."""
    order = list(cpus) if cpus is not None else cpu_order()
    n = len(order)
    ideal = n / max(decode_cpu + model_cpu, 1e-12)
    best, rate = 0, 0.0
    for workers in range(1, n):
        predicted = min(workers / max(decode_cpu, 1e-12), (n - workers) / max(model_cpu, 1e-12))
        if predicted > rate + 1e-12:
            best, rate = workers, predicted
    share = decode_cpu / max(decode_cpu + model_cpu, 1e-12)
    if not best or rate < PIN_MIN_FRACTION * ideal or share > PIN_MAX_DECODE_SHARE:
        return None
    threads = n - best
    return Split(best, threads, tuple(sorted(order[:threads])), tuple(sorted(order[threads:])))


def set_cpus(pid: int, cpus: Sequence[int]) -> None:
    """Run `pid` (0: the calling thread) on `cpus`; a platform without affinity is left as it is."""
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:  # the process is gone, or a cpuset forbids it: it runs where it may
            pass


@dataclass
class _Open:
    """The runtime of a run: opened once the decode workers have started, re-opened once when the
    measured costs pin the sides apart."""

    load: Callable[[int | None, bool], Any]  # (threads, spin) -> an open runtime
    threads: int | None  # what the backend runs on: --threads, or its default's count (CPU backends)
    preprocess: Any  # the artifact's preprocessing, for the decode workers
    requested: int | None = None  # the threads to open with (None: the backend's default)
    runtime: Any = None
    stats: PipelineStats = field(default_factory=PipelineStats)

    def open(self, threads: int | None = None, spin: bool = False) -> Any:
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None
        if threads is not None:
            self.requested = self.threads = threads
        self.runtime = self.load(self.requested, spin)
        return self.runtime


@dataclass(frozen=True)
class EngineSettings:
    """What an engine runs, whichever engine: the artifact's towers on a backend, and how inputs are
    decoded. `BulkOptions` and `EmbedRequest` carry the same field names (`of`)."""

    artifact: Path
    backend: BackendKind
    precision: Precision
    batch_size: int = 32
    threads: int | None = None  # the backend's intra-op threads; None: its own default
    workers: int | None = None  # decode processes; None: one per CPU, at low priority (images)
    device: str | None = None
    exif_transpose: bool = False
    fast_decode: bool = False
    skip_bad: bool = False

    @classmethod
    def of(cls, options: Any) -> "EngineSettings":
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls)})


def run_local(
    settings: EngineSettings,
    inputs: InputList,
    ranges: Sequence[tuple[int, int]],
    advance: Advance | None,
    on_batch: OnBatch,
) -> PipelineStats:
    """Open the one tower the inputs need (backend threads that sleep between batches, so decode
    workers get the cores) and embed the ranges; returns what the run measured (with `dim`, the
    embedding width)."""
    from clipexport.artifact.manifest import read_manifest
    from clipexport.runtime.clip_runtime import ClipRuntime

    artifact, backend, precision, device = settings.artifact, settings.backend, settings.precision, settings.device
    threads, workers, batch_size = settings.threads, settings.workers, settings.batch_size
    exif_transpose, skip_bad, fast_decode = settings.exif_transpose, settings.skip_bad, settings.fast_decode
    towers = towers_of(inputs.job_kind)
    auto = workers is None and threads is None and inputs.kind is Kind.IMAGE
    machine = cores()

    def load(count: int | None, spin: bool) -> Any:
        return ClipRuntime.load(
            artifact,
            backend=backend,
            precision={name: precision for name in towers},
            threads=count,
            exif_transpose=exif_transpose,
            towers=towers,
            spin=spin,
            device=device,
        )

    # Without --threads, the backend's own default (ONNX Runtime: the physical cores).
    known = threads or (physical_cores() if backend_takes_threads(backend) else None)
    state = _Open(load, known, read_manifest(artifact).preprocess, requested=threads)
    own_cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        # Decoding takes every CPU, or those --threads leaves, at low priority: the backend's threads
        # and the parent run first.
        first_workers = workers or (max(1, machine - threads) if threads else machine)
        embed_ranges(
            state,
            inputs,
            ranges,
            batch_size,
            first_workers,
            exif_transpose,
            skip_bad,
            advance,
            on_batch,
            fast_decode=fast_decode,
            auto=auto,
            machine=machine,
        )
        state.stats.dim = state.runtime.manifest.embed_dim
        state.stats.threads = state.threads
        return state.stats
    finally:
        if state.runtime is not None:
            state.runtime.close()
        if own_cpus is not None:
            set_cpus(0, sorted(own_cpus))  # a pinned run gives the caller's thread its CPUs back


def backend_takes_threads(backend: Any) -> bool:
    """ONNX Runtime and OpenVINO on the CPU split a batch over threads; a GPU backend does not."""
    return str(getattr(backend, "value", backend)) in ("onnxruntime", "openvino")


def embed_ranges(
    state: _Open,
    inputs: InputList,
    ranges: Sequence[tuple[int, int]],
    batch_size: int,
    workers: int,
    exif_transpose: bool,
    skip_bad: bool,
    advance: Advance | None,
    on_batch: OnBatch,
    fast_decode: bool = False,
    auto: bool = False,
    machine: int = 0,
) -> PipelineStats:
    """Embed the inputs of each (first, end) range in order: `on_batch(start, kept input indices,
    embeddings, skipped (input index, reason))` per batch. An unreadable image stops the run
    unless `skip_bad` (then it is reported and left out). `state` holds the run's runtime (opened
    here, after the decode workers start), which `auto` may re-open once, pinned, after measuring."""
    stats = state.stats
    total = sum(end - first for first, end in ranges)
    if inputs.kind is Kind.TEXT:
        if state.runtime is None:
            state.open()
        for first, end in ranges:
            for start in range(first, end, batch_size):
                part = inputs.items[start : min(start + batch_size, end)]
                names = [item.id for item in part]
                rows = state.runtime.encode_text([item.text for item in part], batch_size, names=names)
                on_batch(start, list(range(start, start + len(part))), rows, [], ())
                if advance:
                    advance(len(part), total)
        return stats
    stats.workers = workers
    pipeline = ImagePipeline(state.preprocess, exif_transpose, workers, fast_decode, stats)
    # Only a CPU backend on 2 CPUs or more may be pinned apart from the decoders.
    decided = not (auto and state.threads is not None and machine > 1)
    model_images = 0
    halfway: tuple[float, int] | None = None  # (the parent's CPU, images) once half the images are done
    try:
        if state.runtime is None:
            state.open()  # the workers are starting meanwhile: the first images decode while it loads
        began = time.thread_time()
        for number, batch in enumerate(pipeline.batches(inputs, ranges, batch_size)):
            if batch.skipped and not skip_bad:
                raise InputError(
                    f"{batch.skipped[0][1]} (pass --skip-bad to leave unreadable images out and list them)"
                )
            if len(batch.pixels):
                inside, cpu = time.thread_time(), time.process_time()
                rows = state.runtime.encode_pixels(batch.pixels)
                stats.parent_cpu_s -= time.thread_time() - inside  # the calling thread works in the backend too
                if number:  # the first run of a session warms it up
                    stats.backend_cpu_s += time.process_time() - cpu
                    model_images += len(batch.pixels)
            else:
                rows = np.zeros((0, state.runtime.manifest.embed_dim), np.float32)
            if inputs.pairs:  # the captions of the images kept, beside their image rows
                kept = [inputs.items[batch.start + k] for k in batch.kept]
                texts = state.runtime.encode_text([item.text for item in kept], batch_size, names=[i.id for i in kept])
                rows = np.stack([rows, texts.reshape(rows.shape)], axis=1)
            on_batch(
                batch.start,
                [batch.start + k for k in batch.kept],
                rows,
                [(batch.start + k, reason) for k, reason in batch.skipped],
                batch.facts,
            )
            stats.images += batch.count
            stats.batches += 1
            if halfway is None and 2 * stats.images >= total:
                halfway = (stats.parent_cpu_s + time.thread_time() - began, stats.images)
            if advance:
                advance(batch.count, total)
            if not decided and model_images >= CALIBRATION_IMAGES and stats.warm_decode_images >= CALIBRATION_IMAGES:
                decided = True
                decode = stats.warm_decode_cpu_s / stats.warm_decode_images
                model = stats.backend_cpu_s / model_images
                split = pinned_split(decode, model)
                stats.split = (
                    f"decode {1e3 * decode:.1f} ms + model {1e3 * model:.1f} ms CPU per image on {machine} cores: "
                    + (
                        f"{split.workers} decode workers, {split.threads} backend threads, pinned to "
                        f"{len(split.decode_cpus)} + {len(split.backend_cpus)} CPUs"
                        if split
                        else f"{stats.workers} decode workers at low priority, {state.threads} backend threads, every CPU shared"
                    )
                )
                if split:
                    # The backend's threads start on the caller's CPUs: pin it, then re-open with spinning
                    # threads (nothing else runs on those CPUs now); the workers move to the rest.
                    reopening = time.thread_time()
                    pipeline.shrink(split.workers)
                    stats.workers = split.workers
                    pipeline.pin(split.decode_cpus)
                    set_cpus(0, split.backend_cpus)
                    state.open(split.threads, spin=True)
                    stats.parent_cpu_s -= time.thread_time() - reopening  # the backend's load, once: not per image
        stats.parent_cpu_s += time.thread_time() - began
        if halfway is not None and stats.images > halfway[1]:
            stats.parent_steady_cpu_s = stats.parent_cpu_s - halfway[0]
            stats.steady_images = stats.images - halfway[1]
    finally:
        pipeline.close()
    return stats
