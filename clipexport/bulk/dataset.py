"""The sharded embeddings dataset that `embed --output DIR` writes, and its resume rule.

    DIR/_embeddings.json       the job: artifact (manifest sha256), precision, backend, normalisation,
                               dim, dtype, the input list's sha256 and size, the shard size, and every
                               finished shard (file, rows, sha256, skipped inputs)
    DIR/part-00000.parquet     columns `id` (string) and `embedding` (fixed-size list of float32 or
                               float16); rows of inputs [0, shard_size), in input order

The Parquet files are plain Arrow tables, readable as they are by pandas, DuckDB, Ray Data,
embedding-reader and autofaiss. Each shard is written atomically (temp file, fsync, rename), and
embeddings.json is rewritten after it, so a SIGKILL at any moment loses at most the shards in
flight; a rerun of the same command keeps every finished shard whose file still has its sha256
and computes the rest. One job at a time per folder (an flock on it).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from clipexport.errors import EnvironmentProblem, InputError
from clipexport.files import sha256_file, utc_timestamp, write_bytes_atomic, write_json_atomic

FORMAT = "clipexport-embeddings"
VERSION = 1
MANIFEST = "_embeddings.json"  # the leading underscore: pandas, pyarrow and Spark skip it when reading the folder
DEFAULT_SHARD_SIZE = 10_000
DTYPES = ("float32", "float16")


class DiskFull(EnvironmentProblem):
    """The output's disk filled up while a shard was written."""


@dataclass(frozen=True)
class Identity:
    """What makes two runs the same job: a resumed run must match all of it."""

    kind: str
    artifact_manifest_sha256: str
    precision: str
    backend: str
    normalized: bool
    dim: int
    dtype: str
    inputs_sha256: str
    inputs: int
    shard_size: int


@dataclass(frozen=True)
class Skipped:
    id: str
    reason: str


@dataclass(frozen=True)
class Shard:
    index: int
    file: str
    first: int  # input index of the shard's first item
    count: int  # inputs in the shard
    rows: int  # embedded rows (count - skipped)
    sha256: str
    skipped: tuple[Skipped, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [asdict(s) for s in self.skipped]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Shard":
        return cls(int(data["index"]), str(data["file"]), int(data["first"]), int(data["count"]), int(data["rows"]),
                   str(data["sha256"]), tuple(Skipped(str(s["id"]), str(s["reason"])) for s in data.get("skipped", ())))


@dataclass
class DatasetState:
    folder: Path
    identity: Identity
    artifact: str
    shards: dict[int, Shard] = field(default_factory=dict)
    created: str = field(default_factory=utc_timestamp)

    @property
    def shard_count(self) -> int:
        return -(-self.identity.inputs // self.identity.shard_size)

    def shard_range(self, index: int) -> tuple[int, int]:
        first = index * self.identity.shard_size
        return first, min(first + self.identity.shard_size, self.identity.inputs)

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.shard_count

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "created": self.created, "updated": utc_timestamp(),
                "artifact": self.artifact, **asdict(self.identity), "complete": self.complete,
                "rows": sum(s.rows for s in self.shards.values()),
                "shards": [self.shards[i].to_dict() for i in sorted(self.shards)]}

    def save(self) -> None:
        write_json_atomic(self.folder / MANIFEST, self.to_dict())


def shard_file(index: int) -> str:
    return f"part-{index:05d}.parquet"


def open_dataset(folder: Path, identity: Identity, artifact: str, overwrite: bool) -> tuple[DatasetState, list[int]]:
    """The folder's state for this job and the shards kept from an earlier run of it. A folder of
    another job is refused (or, with --overwrite, its shards and manifest removed); a folder of
    someone else's files is never touched."""
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        ours = {MANIFEST, *(p.name for p in folder.glob("part-*.parquet"))}
        others = [p.name for p in folder.iterdir() if p.name not in ours and not p.name.startswith(".")]
        if others:
            raise InputError(f"--output {folder} holds other files ({others[0]}, ...), not an embeddings dataset; "
                             "choose a new or empty folder")
        return DatasetState(folder, identity, artifact), []
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError("not a clipexport embeddings manifest")
        earlier = Identity(**{k: data[k] for k in Identity.__dataclass_fields__})
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{manifest} is damaged or not ours ({exc}); pass --overwrite to start over, or "
                         "choose another --output") from None
    if earlier != identity:
        if not overwrite:
            differ = [k for k in Identity.__dataclass_fields__ if getattr(earlier, k) != getattr(identity, k)]
            raise InputError(f"--output {folder} holds embeddings of another job ({', '.join(differ)} differ); "
                             "pass --overwrite to start over, or choose another --output")
        for path in folder.glob("part-*.parquet"):
            path.unlink()
        manifest.unlink()
        return DatasetState(folder, identity, artifact), []
    state = DatasetState(folder, identity, artifact, created=str(data.get("created") or utc_timestamp()))
    if overwrite:
        for path in folder.glob("part-*.parquet"):
            path.unlink()
        return state, []
    kept = []
    for entry in data.get("shards", []):
        shard = Shard.from_dict(entry)
        path = folder / shard.file
        if path.is_file() and path.name == shard_file(shard.index) and sha256_file(path) == shard.sha256:
            state.shards[shard.index] = shard
            kept.append(shard.index)
    return state, kept


def write_shard(state: DatasetState, index: int, ids: list[str], embeddings: np.ndarray,
                skipped: list[Skipped]) -> Shard:
    """One shard, atomically, then the manifest that lists it."""
    from clipexport._deps import require

    pa = require("pyarrow", "writing the sharded embeddings dataset (pip install 'clipexport[bulk]')")
    import pyarrow.parquet as pq

    dtype = np.dtype(state.identity.dtype)
    values = np.ascontiguousarray(embeddings, dtype=dtype).reshape(-1)
    arrow_type = pa.float16() if dtype == np.float16 else pa.float32()
    column = pa.FixedSizeListArray.from_arrays(pa.array(values, type=arrow_type), state.identity.dim)
    table = pa.table({"id": pa.array(ids, type=pa.string()), "embedding": column})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    data = buffer.getvalue()
    first, last = state.shard_range(index)
    name = shard_file(index)
    import hashlib

    from clipexport.signals import deferred_interrupts

    with deferred_interrupts():  # the shard and the manifest that lists it: both, or neither
        try:
            write_bytes_atomic(state.folder / name, data)
        except OSError as exc:
            if getattr(exc, "errno", None) == 28:  # ENOSPC
                raise DiskFull(f"no space left on the device of {state.folder} while writing {name}; free space and "
                               "run the same command again: finished shards are kept") from None
            raise
        shard = Shard(index, name, first, last - first, len(ids), hashlib.sha256(data).hexdigest(), tuple(skipped))
        state.shards[index] = shard
        try:
            state.save()
        except OSError as exc:
            if getattr(exc, "errno", None) == 28:
                raise DiskFull(f"no space left on the device of {state.folder} while updating {MANIFEST}; free "
                               "space and run the same command again") from None
            raise
    return shard


def read_dataset(folder: Path) -> tuple[dict[str, Any], Iterator[tuple[list[str], np.ndarray]]]:
    """(manifest, per-shard (ids, embeddings)) of a finished or partial dataset, each shard checked
    against its sha256."""
    import pyarrow.parquet as pq

    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))

    def shards() -> Iterator[tuple[list[str], np.ndarray]]:
        for entry in manifest["shards"]:
            path = folder / entry["file"]
            if sha256_file(path) != entry["sha256"]:
                raise InputError(f"{path} does not match {folder / MANIFEST} (sha256 differs); rerun the embed job")
            table = pq.read_table(path)
            values = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            yield table.column("id").to_pylist(), values.reshape(len(table), -1)

    return manifest, shards()


def _remove_stale_temps(folder: Path) -> None:
    """Temp files of a killed run (write_bytes_atomic's `.name.*.tmp`) are never ours to keep."""
    for path in folder.glob(".part-*.tmp"):
        path.unlink(missing_ok=True)
    for path in folder.glob(f".{MANIFEST}.*.tmp"):
        path.unlink(missing_ok=True)


class FolderLock:
    """One job per output folder: a second run is refused at once instead of writing beside it."""

    def __init__(self, folder: Path, command: str = "clipexport embed", option: str = "--output"):
        self.folder, self.command, self.option = folder, command, option
        self.fd: int | None = None

    def __enter__(self) -> "FolderLock":
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise InputError(f"another {self.command} is writing to {self.folder}; wait for it to finish "
                             f"(a rerun afterwards resumes) or choose another {self.option}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


__all__ = ["DEFAULT_SHARD_SIZE", "DTYPES", "DatasetState", "DiskFull", "FolderLock", "Identity", "MANIFEST", "Shard",
           "Skipped", "open_dataset", "read_dataset", "shard_file", "write_shard"]
