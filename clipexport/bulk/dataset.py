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
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from clipexport.errors import DiskFull, InputError  # DiskFull: re-exported
from clipexport.vectors import l2_normalize
from clipexport.files import (
    check_fields,
    disk_full,
    folder_lock,
    is_disk_full,
    read_format_json,
    sha256_file,
    refuse_foreign,
    utc_timestamp,
    write_bytes_atomic,
    write_json_atomic,
)

FORMAT = "clipexport-embeddings"
VERSION = 1
MANIFEST = "_embeddings.json"  # the leading underscore: pandas, pyarrow and Spark skip it when reading the folder
DEFAULT_SHARD_SIZE = 10_000
DTYPES = ("float32", "float16")
DECODES = ("exact", "fast")


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
    decode: str = "exact"  # "fast": JPEGs decoded at a reduced DCT scale (--fast-decode); never mixed


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
        return cls(
            int(data["index"]),
            str(data["file"]),
            int(data["first"]),
            int(data["count"]),
            int(data["rows"]),
            str(data["sha256"]),
            tuple(Skipped(str(s["id"]), str(s["reason"])) for s in data.get("skipped", ())),
        )


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
        return {
            "format": FORMAT,
            "version": VERSION,
            "created": self.created,
            "updated": utc_timestamp(),
            "artifact": self.artifact,
            **asdict(self.identity),
            "complete": self.complete,
            "rows": sum(s.rows for s in self.shards.values()),
            "shards": [self.shards[i].to_dict() for i in sorted(self.shards)],
        }

    def save(self) -> None:
        write_json_atomic(self.folder / MANIFEST, self.to_dict())


def shard_file(index: int) -> str:
    return f"part-{index:05d}.parquet"


SHARD_NAME = re.compile(r"part-\d{5,}\.parquet")
_SHARD_SCHEMA = {"index": int, "file": str, "first": int, "count": int, "rows": int, "sha256": str, "skipped": list}
_SCHEMA = {
    **{
        name: (bool if name == "normalized" else int if name in ("dim", "inputs", "shard_size") else str)
        for name in Identity.__dataclass_fields__
        if name != "decode"
    },
    "artifact": str,
    "rows": int,
    "complete": bool,
    "shards": list,
}


def _ours(name: str) -> bool:
    return name == MANIFEST or bool(SHARD_NAME.fullmatch(name))


def _check_manifest(data: dict[str, Any]) -> None:
    """The embeddings manifest's schema: every field typed, every shard entry whole and named as
    this module names shards (so a listed file can only be one of ours, inside the folder)."""
    check_fields(data, _SCHEMA)
    if data["dim"] < 1 or data["shard_size"] < 1 or data["inputs"] < 0 or data["dtype"] not in DTYPES:
        raise ValueError("dim, shard_size, inputs or dtype out of range")
    if data.setdefault("decode", "exact") not in DECODES:  # datasets made before --fast-decode: exact
        raise ValueError(f"'decode' must be one of {', '.join(DECODES)}")
    for number, entry in enumerate(data["shards"]):
        check_fields(entry, _SHARD_SCHEMA, f"shards[{number}].")
        if entry["file"] != shard_file(entry["index"]) or not 0 <= entry["rows"] <= entry["count"]:
            raise ValueError(f"shards[{number}] names {entry['file']!r} with {entry['rows']} of {entry['count']} rows")
        for skipped in entry["skipped"]:
            check_fields(skipped, {"id": str, "reason": str}, f"shards[{number}].skipped[].")


def read_manifest_data(folder: Path, fix: str = "rerun the embed command that made it") -> dict[str, Any]:
    """The one reader of `_embeddings.json`: schema-checked (every field typed, every shard entry
    whole), one InputError line on any damage; the manifest as a dict."""
    return read_format_json(Path(folder) / MANIFEST, FORMAT, _check_manifest, fix)


def read_state(folder: Path, fix: str = "rerun the embed command that made it") -> DatasetState:
    """The manifest (`read_manifest_data`) as the writer's typed state."""
    data = read_manifest_data(folder, fix)
    identity = Identity(**{k: data[k] for k in Identity.__dataclass_fields__})
    state = DatasetState(Path(folder), identity, data["artifact"], created=str(data.get("created") or utc_timestamp()))
    for entry in data["shards"]:
        shard = Shard.from_dict(entry)
        state.shards[shard.index] = shard
    return state


def _clear(folder: Path) -> None:
    """Remove the files a dataset of ours is made of (and nothing else)."""
    for path in folder.iterdir():
        if _ours(path.name) and path.is_file():
            path.unlink()


def open_for_writing(
    folder: Path, identity: Identity, artifact: str, overwrite: bool
) -> tuple[DatasetState, list[int]]:
    """The folder's state for this job and the shards kept from an earlier run of it.

    The owned-folder rule: the folder is new, empty, or carries our manifest; anything else in it
    is refused, naming the file (a `part-00000.parquet` without a manifest may be someone else's,
    or the rest of another job: never replaced, never mixed with this one). A dataset of another
    job is refused, or with --overwrite its shards and manifest are removed; a damaged manifest is
    replaced by --overwrite only where every file in the folder is named as ours."""
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(folder)
    manifest = folder / MANIFEST
    refuse_foreign(
        folder,
        _ours,
        "--output",
        f"{'beside' if manifest.is_file() else 'not'} an embeddings dataset "
        "(readers of the folder would take them for data)",
    )
    if not manifest.is_file():
        shards = sorted(p.name for p in folder.iterdir() if _ours(p.name))
        if shards:
            raise InputError(
                f"--output {folder} holds {shards[0]} but no {MANIFEST}: Parquet files that this command "
                "did not write, or a dataset whose manifest was lost; they are never replaced or mixed "
                "with a new job: remove them yourself, or choose a new or empty folder"
            )
        return DatasetState(folder, identity, artifact), []
    try:
        earlier = read_state(
            folder,
            "pass --overwrite to start over (it removes only this dataset's part-*.parquet "
            "files and its manifest), or choose another --output",
        )
    except InputError:
        if not overwrite:
            raise
        _clear(folder)
        return DatasetState(folder, identity, artifact), []
    if earlier.identity != identity:
        if not overwrite:
            differ = [k for k in Identity.__dataclass_fields__ if getattr(earlier.identity, k) != getattr(identity, k)]
            raise InputError(
                f"--output {folder} holds embeddings of another job ({', '.join(differ)} differ); "
                "pass --overwrite to start over, or choose another --output"
            )
        _clear(folder)
        return DatasetState(folder, identity, artifact), []
    state = DatasetState(folder, identity, artifact, created=earlier.created)
    if overwrite:
        _clear(folder)
        return state, []
    kept = []
    for shard in earlier.shards.values():
        path = folder / shard.file
        if shard.index < state.shard_count and path.is_file() and sha256_file(path) == shard.sha256:
            state.shards[shard.index] = shard
            kept.append(shard.index)
    # Shard files the manifest does not keep (a run killed between a shard and its manifest, a
    # changed file) are recomputed; readers of the folder must never see them meanwhile.
    for path in folder.iterdir():
        if SHARD_NAME.fullmatch(path.name) and path.name not in {state.shards[i].file for i in kept}:
            path.unlink()
    return state, sorted(kept)


def _parquet_bytes(ids: list[str], embeddings: np.ndarray, dtype: np.dtype, dim: int) -> bytes:
    """A shard's Parquet file, in memory."""
    from clipexport._deps import require

    pa = require("pyarrow", "writing the sharded embeddings dataset")
    import pyarrow.parquet as pq

    values = np.ascontiguousarray(embeddings, dtype=dtype).reshape(-1)
    arrow_type = pa.float16() if dtype == np.float16 else pa.float32()
    column = pa.FixedSizeListArray.from_arrays(pa.array(values, type=arrow_type), dim)
    table = pa.table({"id": pa.array(ids, type=pa.string()), "embedding": column})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def prepare_writer(identity: Identity) -> None:
    """Load the shard writer's library and start its codec with a one-row table (0.4 s of CPU the
    first time, 0.04 s per 1,000 rows after): a run's start-up cost, paid before the run."""
    _parquet_bytes(["warm-up"], np.zeros((1, identity.dim)), np.dtype(identity.dtype), identity.dim)


def write_shard(
    state: DatasetState, index: int, ids: list[str], embeddings: np.ndarray, skipped: list[Skipped]
) -> Shard:
    """One shard, atomically, then the manifest that lists it."""
    data = _parquet_bytes(ids, embeddings, np.dtype(state.identity.dtype), state.identity.dim)
    first, last = state.shard_range(index)
    name = shard_file(index)
    import hashlib

    from clipexport.signals import deferred_interrupts

    with deferred_interrupts():  # the shard and the manifest that lists it: both, or neither
        try:
            write_bytes_atomic(state.folder / name, data)
            shard = Shard(index, name, first, last - first, len(ids), hashlib.sha256(data).hexdigest(), tuple(skipped))
            state.shards[index] = shard
            state.save()
        except (DiskFull, OSError) as exc:  # DiskFull from write_bytes_atomic, or a raw ENOSPC
            if not is_disk_full(exc):
                raise
            raise disk_full(state.folder / name, ": finished shards are kept") from None
    return shard


# A row shorter than this is no direction (embeddings are unit vectors or raw projections of norm ~1-100).
MIN_ROW_NORM = 1e-12


@dataclass(frozen=True)
class EmbeddingsDataset:
    """The one reader of a dataset `embed -o DIR` wrote (`index`, `search`, `verify`'s tests and the
    benchmarks read it through this): the manifest checked once, each shard file checked against its
    sha256 the first time this reader opens it."""

    folder: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    _checked: set = field(default_factory=set, compare=False, repr=False)  # shard files whose sha256 matched

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def _table(self, entry: dict[str, Any], columns: list[str] | None = None) -> Any:
        import pyarrow.parquet as pq

        path = self.folder / entry["file"]
        if entry["file"] not in self._checked:
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                raise InputError(
                    f"{path} is missing or does not match {self.folder / MANIFEST} (sha256); "
                    "rerun the embed command that made the dataset"
                )
            self._checked.add(entry["file"])
        return pq.read_table(path, columns=columns)

    def shards(self, start: int = 0, unit: bool = False) -> Iterator[tuple[int, list[str], np.ndarray]]:
        """(first row, ids, rows) per shard, from shard `start`, in the dtype they are stored in.
        `unit`: float32, every row checked finite and non-zero, then L2-normalised (what an index takes)."""
        row = 0
        for number, entry in enumerate(self.manifest["shards"]):
            if number >= start:
                path = self.folder / entry["file"]
                table = self._table(entry)
                values = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                raw = values.reshape(len(table), -1)
                if raw.shape[1] != self.dim:
                    raise InputError(
                        f"{path} holds {raw.shape[1]}-d rows, not the {self.dim} its manifest says; "
                        "rerun the embed command"
                    )
                ids = table.column("id").to_pylist()
                if unit:
                    raw = raw.astype(np.float32)
                    _check_rows(raw, ids, path)
                    raw = l2_normalize(raw, np.float32)
                yield row, ids, raw
            row += int(entry["rows"])

    def ids(self, stop: int | None = None) -> list[str]:
        """The ids of every row (of the shards before `stop`), in row order: the id column alone."""
        out: list[str] = []
        for entry in self.manifest["shards"][:stop]:
            out += self._table(entry, ["id"]).column("id").to_pylist()
        return out


def _check_rows(raw: np.ndarray, ids: list[str], path: Path) -> None:
    """Every row is a direction: finite, with a norm (a NaN row would stop FAISS's k-means with a
    traceback, and a zero row has no cosine with anything)."""
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(raw.astype(np.float64), axis=1)
    bad = ~np.isfinite(norms) | (norms < MIN_ROW_NORM)
    if bad.any():
        first = int(np.argmax(bad))
        what = "NaN or infinity" if not np.isfinite(raw[first]).all() else "a zero vector"
        raise InputError(
            f"row {first} of {path.name} ({ids[first]}) is {what}"
            f"{f' (and {int(bad.sum()) - 1} more rows)' if bad.sum() > 1 else ''}, which no index can "
            "rank; re-embed that input (clipexport embed checks every output) or leave it out"
        )


def read_embeddings(folder: Path, what: str = "DATASET", finished: bool = True) -> EmbeddingsDataset:
    """A dataset to read. `finished`: refuse one still being written or with no rows (what an index
    needs); else a partial one is read as far as its manifest lists shards."""
    from clipexport._deps import require

    require("pyarrow", "reading the embeddings dataset")
    folder = Path(folder).expanduser()
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise InputError(
            f"{what} {folder} is not an embeddings dataset (no {MANIFEST}); make one with "
            "`clipexport embed ARTIFACT --images ... -o DIR`"
        )
    manifest = read_manifest_data(folder)
    if finished and not manifest.get("complete"):
        raise InputError(
            f"{what} {folder} is not finished ({len(manifest['shards'])} shards done); run the same "
            "embed command again to finish it, then index it"
        )
    if finished and int(manifest["rows"]) == 0:
        raise InputError(f"{what} {folder} has no rows (every input was skipped); nothing to index")
    return EmbeddingsDataset(folder, manifest, sha256_file(manifest_path))


def _remove_stale_temps(folder: Path) -> None:
    """Temp files of a killed run (write_bytes_atomic's `.name.*.tmp`) are never ours to keep."""
    for path in folder.glob(".part-*.tmp"):
        path.unlink(missing_ok=True)
    for path in folder.glob(f".{MANIFEST}.*.tmp"):
        path.unlink(missing_ok=True)


def job_lock(folder: Path, command: str = "clipexport embed", option: str = "--output") -> Any:
    """One job per output folder (created if missing): a second run is refused at once instead of
    writing beside it (`files.folder_lock`)."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder_lock(
        folder,
        f"the {option} folder",
        busy=f"another {command} is writing to {folder}; wait for it "
        f"to finish (a rerun afterwards resumes) or choose another {option}",
    )


__all__ = [
    "DEFAULT_SHARD_SIZE",
    "DTYPES",
    "DatasetState",
    "DiskFull",
    "Identity",
    "MANIFEST",
    "Shard",
    "Skipped",
    "EmbeddingsDataset",
    "MIN_ROW_NORM",
    "open_for_writing",
    "read_embeddings",
    "read_manifest_data",
    "read_state",
    "shard_file",
    "job_lock",
    "write_shard",
]
