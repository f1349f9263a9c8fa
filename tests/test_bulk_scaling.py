"""Bulk embedding that scales (issue 30): uint8 pixels from the decode workers, raw on each worker's
socket into reused receive buffers, normalised exactly in the parent; decoders at low priority
(pinned apart where measured costs say so), a worker killed mid-batch, and `--fast-decode`
(recorded, never mixed, said once for non-JPEGs)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipexport.artifact.manifest import Convention, ResizeMode
from clipexport.bulk.dataset import read_manifest
from clipexport.bulk.job import BulkOptions, embed_dataset
from clipexport.bulk import local
from clipexport.bulk.local import Split, pinned_split
from clipexport.bulk.input_list import InputSpec
from clipexport.cli import main
from clipexport.runtime import ClipRuntime
from clipexport.runtime.preprocess import ImagePreprocessor, default_config

# The same graph and preprocessing in one process or another: a few float32 ulps (test_bulk.py).
ROWS_MAX_ABS = 1e-6
# --fast-decode on these smooth 1600x1200 JPEGs: the 4x DCT-reduced decode then the exact resize
# lands within a few grey levels of the full decode; the tiny random model maps that to cosines of
# 0.99+ (the README's figures for ViT-B-32 and the demo scenes come from benchmarks/bulk_embed.py).
FAST_DECODE_MIN_COSINE = 0.99


def _photo(path: Path, seed: int, size=(96, 72), fmt: str = "JPEG") -> Path:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 32 + 1, size[0] // 32 + 1, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.BICUBIC).save(path, format=fmt, quality=92)
    return path


def _reference_normalize(pre: ImagePreprocessor, chw: np.ndarray) -> np.ndarray:
    """The per-image arithmetic the runtime used before batches were normalised in place."""
    cfg = pre.config
    if cfg.convention is Convention.HF:
        mean, std = np.asarray(cfg.mean).reshape(3, 1, 1), np.asarray(cfg.std).reshape(3, 1, 1)
        return ((chw.astype(np.float64) * cfg.rescale_factor - mean) / std).astype(np.float32)
    if cfg.convention is Convention.HF_TORCHVISION:
        scale = np.float32(1.0 / cfg.rescale_factor)
        mean = (np.asarray(cfg.mean, np.float32) * scale).reshape(3, 1, 1)
        std = (np.asarray(cfg.std, np.float32) * scale).reshape(3, 1, 1)
        return (chw.astype(np.float32) - mean) / std
    return (chw.astype(np.float32) / np.float32(255) - pre._mean) / pre._std


@pytest.mark.parametrize("convention", [Convention.OPEN_CLIP, Convention.HF, Convention.HF_TORCHVISION])
def test_batch_normalisation_gives_the_per_image_bits_for_every_byte(convention: Convention) -> None:
    config = dataclasses.replace(
        default_config(16),
        convention=convention,
        resize_mode=ResizeMode.SHORTEST,
        mean=(0.48145466, 0.4578275, 0.40821073),
        std=(0.26862954, 0.26130258, 0.27577711),
    )
    pre = ImagePreprocessor(config)
    every = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16), (2, 3, 16, 16)).copy()
    batch = pre.normalize(every)
    assert batch.dtype == np.float32
    for image in range(len(every)):
        assert np.array_equal(batch[image].view(np.uint32), _reference_normalize(pre, every[image]).view(np.uint32))


def test_decode_workers_run_at_low_priority_and_start_before_the_backend_loads(
    tiny_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    paths = [_photo(photos / f"{i:03d}.jpg", 300 + i) for i in range(12)]
    seen: dict = {}
    real_open = local._Open.open

    def open_(state, *args, **kwargs):
        seen.setdefault(
            "workers at open", [p.pid for p in multiprocessing.active_children() if p.name == "clipexport-decode"]
        )
        return real_open(state, *args, **kwargs)

    def advance(done: int, total: int) -> None:
        for process in multiprocessing.active_children():
            if process.name == "clipexport-decode" and process.is_alive():
                seen.setdefault("niceness", {})[process.pid] = os.getpriority(os.PRIO_PROCESS, process.pid)

    monkeypatch.setattr(local._Open, "open", open_)
    result = embed_dataset(_options(tiny_vit, tmp_path / "ds", photos, workers=2), advance)
    assert result.rows == len(paths)
    assert len(seen["workers at open"]) == 2, seen  # the first images decode while the backend loads
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert seen["niceness"] and set(seen["niceness"].values()) == {max(mine, local.DECODE_NICE)}, seen


def test_the_sides_are_pinned_to_separate_cpus_where_that_pays() -> None:
    # The costs of benchmarks/results/bulk-scaling-16core-pinned.json (16 vCPUs) and bulk-scaling-2core.json.
    sixteen = list(range(16))
    assert pinned_split(15.1, 153.0, sixteen) == Split(2, 14, tuple(range(14)), (14, 15))  # 0.5 MP
    # 12 MP: decoding is most of the work, and shared CPUs measured faster (21.6 vs 19.7-20.7 img/s).
    assert pinned_split(298.8, 124.4, sixteen) is None
    assert pinned_split(84.4, 97.3, [0, 1]) is None  # 12 MP --fast-decode
    # On 2 cores one CPU each halves the model (0.5 MP) or starves decoding (12 MP): both share.
    assert pinned_split(8.2, 94.1, [0, 1]) is None
    assert pinned_split(169.0, 98.0, [0, 1]) is None
    assert pinned_split(10.0, 10.0, [0]) is None  # one CPU: nothing to separate
    # Hyper-thread siblings come last, so the backend's CPUs are distinct cores.
    order = local.cpu_order()
    assert sorted(order) == sorted(os.sched_getaffinity(0))


def test_a_pinned_run_keeps_every_row_and_gives_the_caller_its_cpus_back(
    tiny_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("pinning needs 2 CPUs; this process may use 1")
    photos = tmp_path / "photos"
    photos.mkdir()
    paths = [_photo(photos / f"{i:03d}.jpg", 200 + i) for i in range(80)]  # past CALIBRATION_IMAGES
    calls = []
    real = local.set_cpus
    monkeypatch.setattr(local, "PIN_MIN_FRACTION", 0.0)  # pin whatever the costs
    monkeypatch.setattr(local, "PIN_MAX_DECODE_SHARE", 1.0)
    monkeypatch.setattr(local, "set_cpus", lambda pid, cpus: (calls.append((pid, tuple(cpus))), real(pid, cpus)))
    before = os.sched_getaffinity(0)
    result = embed_dataset(_options(tiny_vit, tmp_path / "ds", photos, batch_size=8))
    assert "pinned to" in result.stats.split, result.stats.split
    assert os.sched_getaffinity(0) == before
    backend = [cpus for pid, cpus in calls if pid == 0][0]
    workers = {cpus for pid, cpus in calls if pid != 0 and cpus}
    assert len(workers) == 1 and not set(backend) & set(next(iter(workers))), calls
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "ds")
    assert table.column("id").to_pylist() == [str(p) for p in paths]
    with ClipRuntime.load(tiny_vit) as runtime:
        reference = runtime.encode_image([str(p) for p in paths])
    np.testing.assert_allclose(np.stack(table.column("embedding").to_pylist()), reference, atol=ROWS_MAX_ABS, rtol=0)


def _options(artifact: Path, output: Path, folder: Path, **kwargs) -> BulkOptions:
    return BulkOptions(
        artifact=artifact,
        output=output,
        inputs=InputSpec(images=[str(folder)]),
        batch_size=kwargs.pop("batch_size", 4),
        shard_size=kwargs.pop("shard_size", 8),
        **kwargs,
    )


def test_uint8_transfer_and_stats(tiny_vit: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    paths = [_photo(photos / f"{i:03d}.jpg", i) for i in range(80)]  # past CALIBRATION_IMAGES
    result = embed_dataset(_options(tiny_vit, tmp_path / "ds", photos, batch_size=8))
    stats = result.stats
    h, w = 64, 64
    # uint8 pixels, pickled: the image's bytes and a little framing, not 4 bytes per value.
    assert 3 * h * w <= stats.bytes_per_image < 3 * h * w * 1.25, stats
    assert stats.split and stats.images == 80 and stats.parent_cpu_s > 0, stats
    # The steady-state figure is the run's second half: its batches from the 40th image on.
    assert stats.steady_images == 40 and 0 < stats.parent_steady_cpu_s < stats.parent_cpu_s, stats
    import pyarrow.parquet as pq

    rows = np.stack(pq.read_table(tmp_path / "ds").column("embedding").to_pylist())
    with ClipRuntime.load(tiny_vit) as runtime:
        np.testing.assert_allclose(rows, runtime.encode_image([str(p) for p in paths]), atol=ROWS_MAX_ABS, rtol=0)


def test_a_decode_worker_killed_mid_run_is_replaced_and_every_row_kept(tiny_vit: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    paths = [_photo(photos / f"{i:03d}.jpg", 100 + i, size=(640, 480)) for i in range(48)]
    killed = []

    def advance(done: int, total: int) -> None:
        if not killed:
            workers = [p for p in multiprocessing.active_children() if p.name == "clipexport-decode" and p.is_alive()]
            for process in workers[:1]:
                os.kill(process.pid, signal.SIGKILL)
                killed.append(process.pid)

    result = embed_dataset(_options(tiny_vit, tmp_path / "ds", photos, workers=2, batch_size=4), advance)
    assert killed and result.rows == 48
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "ds")
    assert table.column("id").to_pylist() == [str(p) for p in paths]
    with ClipRuntime.load(tiny_vit) as runtime:
        reference = runtime.encode_image([str(p) for p in paths])
    np.testing.assert_allclose(np.stack(table.column("embedding").to_pylist()), reference, atol=ROWS_MAX_ABS, rtol=0)


def test_fast_decode_is_close_recorded_and_never_mixed(tiny_vit: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        _photo(photos / f"{i:03d}.jpg", 200 + i, size=(1600, 1200))
    embed_dataset(_options(tiny_vit, tmp_path / "exact", photos))
    fast = embed_dataset(_options(tiny_vit, tmp_path / "fast", photos, fast_decode=True))
    assert fast.stats.drafted == 6 and not fast.notes
    import pyarrow.parquet as pq

    a, b = (np.stack(pq.read_table(tmp_path / d).column("embedding").to_pylist()) for d in ("exact", "fast"))
    cosines = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosines.min() >= FAST_DECODE_MIN_COSINE and not np.array_equal(a, b), cosines
    assert read_manifest(tmp_path / "fast")["decode"] == "fast"
    # A dataset made one way never resumes the other.
    refused = CliRunner().invoke(
        main,
        [
            "embed",
            str(tiny_vit),
            "--images",
            str(photos),
            "-o",
            str(tmp_path / "exact"),
            "--shard-size",
            "8",
            "--batch-size",
            "4",
            "--fast-decode",
        ],
    )
    assert refused.exit_code == 2 and "decode" in refused.output, refused.output
    # PNGs: no effect, said once.
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i in range(3):
        _photo(pngs / f"{i}.png", i, fmt="PNG")
    said = embed_dataset(_options(tiny_vit, tmp_path / "png-ds", pngs, fast_decode=True))
    assert said.notes == (
        "--fast-decode applies to JPEGs only: 3 of 3 images were decoded in full (not JPEGs, or their reduced decode failed)",
    ), said.notes


def test_a_failing_draft_decode_falls_back_to_the_full_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import JpegImagePlugin

    path = _photo(tmp_path / "a.jpg", 1, size=(1200, 900))
    pre = ImagePreprocessor(default_config(64))
    full = pre.pixels(str(path))

    def broken(self, mode, size):
        raise OSError("draft failed")

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", broken)
    assert np.array_equal(pre.pixels(str(path), fast_decode=True), full)
    # ... and counts as decoded in full, not as fast-decoded (the count behind --fast-decode's note).
    from clipexport.bulk.input_list import Item

    batch = local.decode_batch(0, [Item(id=str(path), where=str(path))], pre, fast_decode=True, normalized=False)
    assert batch.drafted == 0 and np.array_equal(batch.pixels[0], full)
    monkeypatch.undo()
    assert local.decode_batch(0, [Item(id=str(path), where=str(path))], pre, fast_decode=True).drafted == 1


@pytest.mark.parametrize("convention", [Convention.OPEN_CLIP, Convention.HF])
def test_a_batch_assembled_from_chunks_has_the_runtimes_bits(tmp_path: Path, convention: Convention) -> None:
    """Two workers decode a batch's two chunks; the parent normalises each into its rows of the batch
    (HF's float64 arithmetic makes its own array, copied in): the bits of the runtime, image by image."""
    from clipexport.bulk.input_list import list_inputs

    paths = [_photo(tmp_path / f"{i}.jpg", 400 + i, size=(120, 90)) for i in range(6)]
    config = dataclasses.replace(default_config(32), convention=convention, resize_mode=ResizeMode.SHORTEST)
    pre = ImagePreprocessor(config)
    inputs = list_inputs(InputSpec(images=[str(tmp_path)]))
    pipeline = local.ImagePipeline(config, False, workers=2)
    try:
        batches = list(pipeline.batches(inputs, [(0, len(paths))], batch_size=4))
    finally:
        pipeline.close()
    assert [len(b.pixels) for b in batches] == [4, 2]
    got = np.concatenate([b.pixels for b in batches])
    want = np.stack([_reference_normalize(pre, pre.pixels(str(p))) for p in paths])
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_the_worker_channel_reads_pixels_into_the_callers_buffer_and_names_a_cut_message() -> None:
    """A message's raw payload lands in the buffer the receiver gives (no copy of its own); the
    other end closing between messages is EOFError, in the middle of one OSError (never a hang or
    a short array taken for pixels)."""
    left, right = socket.socketpair()
    sender, receiver = local._Channel(left), local._Channel(right)
    pixels = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    buffer = np.zeros(200, np.uint8)
    sender.send({"start": 7}, pixels)
    message, payload, size = receiver.receive(lambda n: buffer)
    assert message == {"start": 7} and np.shares_memory(payload, buffer) and size > pixels.nbytes
    assert np.array_equal(payload.reshape(pixels.shape), pixels)
    sender.send(("task", [1, 2]))
    assert receiver.receive()[:2] == (("task", [1, 2]), None)
    # A header that promises 96 bytes of pixels, 10 of them sent, then the sender is gone.
    body = __import__("pickle").dumps("cut")
    left.sendall(local._Channel.HEADER.pack(len(body), 96) + body + bytes(10))
    left.close()
    with pytest.raises(OSError, match="middle of a message"):
        receiver.receive()
    with pytest.raises(EOFError):
        receiver.receive()
    receiver.close()


def test_receive_buffers_are_reused_not_allocated_per_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh memory costs page faults (on a VM, 20-70 ms per 10 MB first touched): the parent reuses
    each chunk's receive buffer once the chunk is normalised, so a run allocates no more of them
    than it ever holds at once, however many chunks it receives."""
    from clipexport.bulk.input_list import list_inputs

    for i in range(24):
        _photo(tmp_path / f"{i:02d}.jpg", 700 + i, size=(80, 60))
    config = dataclasses.replace(default_config(32), resize_mode=ResizeMode.SHORTEST)
    inputs = list_inputs(InputSpec(images=[str(tmp_path)]))
    allocated = []
    real_empty = np.empty

    def counting_empty(shape, dtype=float, *args, **kwargs):
        out = real_empty(shape, dtype, *args, **kwargs)
        if np.dtype(dtype) == np.uint8 and out.ndim == 1:
            allocated.append(out.nbytes)
        return out

    pipeline = local.ImagePipeline(config, False, workers=2)
    monkeypatch.setattr(local.np, "empty", counting_empty)
    try:
        batches = list(pipeline.batches(inputs, [(0, 24)], batch_size=4))  # 12 chunks of 2 images
    finally:
        monkeypatch.undo()
        pipeline.close()
    assert sum(len(b.pixels) for b in batches) == 24
    assert 0 < len(allocated) <= 6, allocated  # at most the chunks in flight (4) and the batch being assembled (2)


def test_shards_keep_embeddings_and_ids_out_of_the_parquet_dictionary(tiny_vit: Path, tmp_path: Path) -> None:
    """Every embedding value and id is distinct: a dictionary for them is a hash table over every
    float that the writer builds and then drops (a shard's write 3x slower, 200-400 ms of CPU the
    first time in a process, a quarter bigger). Metadata columns keep theirs (repeated values)."""
    import pyarrow.parquet as pq

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        _photo(photos / f"{i}.jpg", 900 + i)
    embed_dataset(_options(tiny_vit, tmp_path / "ds", photos))
    group = pq.read_metadata(sorted((tmp_path / "ds").glob("part-*.parquet"))[0]).row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)}
    dictionary = {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}
    for path, used in encodings.items():
        if path == "id" or path.startswith("embedding"):
            assert not dictionary & set(used), (path, used)
    assert dictionary & set(encodings["width"]), encodings


def test_the_command_line_gives_arrow_the_c_librarys_malloc_unless_the_caller_chose() -> None:
    """The CLI's processes allocate Arrow buffers with malloc (the default pool stalls on huge-page
    compaction between shards, see clipexport/cli.py); a pool the caller set is kept."""
    import subprocess
    import sys

    code = "import clipexport.cli, pyarrow; print(pyarrow.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert ours.stdout.strip() == "system"
    chosen = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "ARROW_DEFAULT_MEMORY_POOL": "jemalloc"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert chosen.stdout.strip() == "jemalloc", chosen.stderr
