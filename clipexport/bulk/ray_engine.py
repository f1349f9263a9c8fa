"""The same bulk job on Ray Data (`embed --engine ray`): the unfinished shards' inputs become a
dataset; decode + preprocess run as CPU `map_batches` tasks (the runtime's own preprocessing);
embedding runs in an actor pool, one `ClipRuntime` per actor, loaded once (`--ray-actors`,
`--ray-gpus-per-actor` for GPU nodes); the driver receives the rows in input order and writes the
shards through the same writer as the local engine, so both produce the same dataset and the same
resume rule holds. A dead actor is restarted and its batches retried by Ray; rows are keyed by
input index, so none is lost or doubled.

`ray.init(address=...)` uses `--ray-address`, else RAY_ADDRESS, else starts a local cluster.
Paths must be readable from every node (shared storage, or `s3://` / `gs://` URIs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from clipexport._deps import require
from clipexport.bulk.dataset import PAIR_KIND as PAIRS  # the actors' kind for --pairs: both towers
from clipexport.bulk.input_list import DECODED_COLUMNS, InputList, Item, Kind, towers_of
from clipexport.errors import InputError

if TYPE_CHECKING:
    from clipexport.bulk.job import RayOptions
    from clipexport.bulk.local import EngineSettings, OnBatch

RAY_HINT = "running bulk embedding on Ray (pip install 'clipexport[ray]')"


class _Embedder:
    """A Ray Data actor: one ClipRuntime, loaded once, embedding the decoded batches it is given."""

    def __init__(
        self, artifact: str, precision: str, backend: str, kind: str, threads: int | None, device: str | None = None
    ):
        from clipexport.runtime.clip_runtime import ClipRuntime

        towers = towers_of(kind)
        self.kind = kind
        self.runtime = ClipRuntime.load(
            artifact,
            backend=backend,
            precision={name: precision for name in towers},
            threads=threads,
            towers=towers,
            spin=False,
            device=device,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["ok"].astype(bool)
        dim = self.runtime.manifest.embed_dim
        out = np.zeros((len(ok), 2, dim) if self.kind == PAIRS else (len(ok), dim), np.float32)
        if ok.any():
            texts = [str(t) for t in batch["text"][ok]]
            names = [str(i) for i in batch["id"][ok]]
            if self.kind == Kind.TEXT.value:
                out[ok] = self.runtime.encode_text(texts, max(1, len(texts)), names=names)
            else:
                pixels = self.runtime.encode_pixels(np.stack(list(batch["pixels"][ok])).astype(np.float32))
                if self.kind == PAIRS:  # each image and its caption
                    out[ok] = np.stack([pixels, self.runtime.encode_text(texts, len(texts), names=names)], axis=1)
                else:
                    out[ok] = pixels
        facts = {k: batch[k] for k in DECODED_COLUMNS if k in batch}
        return {"index": batch["index"], "ok": ok, "reason": batch["reason"], "embedding": out, **facts}


def _decode(
    batch: dict[str, np.ndarray], preprocess: Any, exif_transpose: bool, kind: str, fast_decode: bool = False
) -> dict[str, np.ndarray]:
    """CPU map_batches: the runtime's preprocessing of each item; an unreadable one is marked, not raised."""
    count = len(batch["index"])
    ok = np.ones(count, bool)
    reasons = np.array([""] * count, dtype=object)
    if kind == Kind.TEXT.value:
        return {**batch, "ok": ok, "reason": reasons}
    from clipexport.bulk.local import decode_batch
    from clipexport.runtime.preprocess import ImagePreprocessor

    preprocessor = ImagePreprocessor(preprocess, exif_transpose=exif_transpose)
    items = [
        Item(
            str(batch["id"][i]),
            str(batch["where"][i]),
            int(batch["offset"][i]),
            int(batch["size"][i]),
            member=str(batch["member"][i]),
        )
        for i in range(count)
    ]
    decoded = decode_batch(0, items, preprocessor, fast_decode=fast_decode)
    h, w = preprocessor.config.image_size
    pixels = np.zeros((count, 3, h, w), np.float32)
    pixels[list(decoded.kept)] = decoded.pixels
    facts = {name: np.array([None] * count, dtype=object) for name in DECODED_COLUMNS}
    for offset, fact in zip(decoded.kept, decoded.facts):
        for name, value in zip(DECODED_COLUMNS, fact):
            facts[name][offset] = value
    for offset, reason in decoded.skipped:
        ok[offset] = False
        reasons[offset] = reason
    return {
        "index": batch["index"],
        "id": batch["id"],
        "ok": ok,
        "reason": reasons,
        "pixels": pixels,
        "text": batch["text"],
        **facts,
    }


def _connect(address: str | None) -> Any:
    ray = require("ray", RAY_HINT)
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS") or None
        try:
            ray.init(address=target, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
        except ConnectionError as exc:
            from clipexport.errors import EnvironmentProblem

            raise EnvironmentProblem(
                f"cannot reach the Ray cluster at {target} ({exc}); check --ray-address / "
                "RAY_ADDRESS, or leave both unset for a local cluster"
            ) from None
    from clipexport.signals import sigterm_as_interrupt

    sigterm_as_interrupt(force=True)  # ray.init replaced it: SIGTERM stops the driver like Ctrl-C (exit 130)
    return ray


def run_on_ray(
    options: EngineSettings,
    ray: RayOptions,
    shard_size: int,
    inputs: InputList,
    ranges: Sequence[tuple[int, int]],
    advance: Callable | None,
    on_batch: OnBatch,
) -> None:
    from clipexport.artifact.manifest import read_manifest

    _connect(ray.address)
    data = require("ray.data", RAY_HINT)

    context = data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in input order
    context.enable_progress_bars = False
    indices = [i for first, end in ranges for i in range(first, end)]
    rows = [
        {
            "index": i,
            "id": inputs.items[i].id,
            "where": inputs.items[i].where,
            "offset": inputs.items[i].offset,
            "size": inputs.items[i].size,
            "text": inputs.items[i].text or "",
            "member": inputs.items[i].member,
        }
        for i in indices
    ]
    manifest = read_manifest(options.artifact)
    batch = options.batch_size
    dataset = data.from_items(rows, override_num_blocks=max(1, len(rows) // (batch * 4)))
    dataset = dataset.map_batches(
        _decode,
        batch_size=batch,
        batch_format="numpy",
        num_cpus=1,
        fn_kwargs={
            "preprocess": manifest.preprocess,
            "exif_transpose": options.exif_transpose,
            "kind": inputs.job_kind,
            "fast_decode": options.fast_decode,
        },
    )
    dataset = dataset.map_batches(
        _Embedder,
        batch_size=batch,
        batch_format="numpy",
        concurrency=ray.actors,
        num_gpus=ray.gpus_per_actor or None,
        num_cpus=ray.cpus_per_actor,
        fn_constructor_kwargs={
            "artifact": str(Path(options.artifact).resolve()),
            "precision": str(options.precision),
            "backend": str(options.backend),
            "kind": inputs.job_kind,
            "threads": options.threads,
            "device": options.device,
        },
        max_restarts=-1,
        max_task_retries=-1,
    )
    total = len(indices)
    for result in dataset.iter_batches(batch_size=batch, batch_format="numpy"):
        index = result["index"].astype(np.int64)
        ok = result["ok"].astype(bool)
        shard = index // shard_size
        for value in np.unique(shard):  # a batch of the driver may span two shards: one call per shard
            part = shard == value
            bad = part & ~ok
            if bad.any() and not options.skip_bad:
                raise InputError(
                    f"{result['reason'][np.argmax(bad)]} (pass --skip-bad to leave unreadable images out and list them)"
                )
            kept = part & ok
            on_batch(
                int(index[part][0]),
                [int(i) for i in index[kept]],
                result["embedding"][kept],
                [(int(i), str(r)) for i, r in zip(index[bad], result["reason"][bad])],
                list(zip(*(result[name][kept] for name in DECODED_COLUMNS))) if "width" in result else (),
            )
        if advance:
            advance(len(index), total)
