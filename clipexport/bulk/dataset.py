"""The sharded embeddings dataset that `embed --output DIR` writes, and its resume rule.

    DIR/part-00000.parquet     columns `id` (string) and `embedding` (fixed-size list of float32 or
                               float16); rows of inputs [0, shard_size), in input order
    DIR/part-00001.parquet     ...

The folder holds the data files and nothing else, so every reader opens it as it is: Polars
`read_parquet("DIR/")`, DuckDB `read_parquet('DIR/*')`, Hugging Face `load_dataset("parquet",
data_dir=DIR)`, pandas, pyarrow, Ray Data, LanceDB, embedding-reader (Polars and HF `datasets`
refuse a folder holding any other file, a JSON sidecar or a sub-folder included). Each shard says
what made it: its Parquet key-value metadata (`clipexport`) holds the job (artifact and its
manifest's sha256, precision, backend, normalisation, dim, dtype, the input list's sha256 and
size, the shard size, decode) and the shard (index, input range, rows, the sha256 of its ids and
embeddings, skipped inputs). The dataset's manifest is derived from those footers; a shard is
finished when its file is there, so there is nothing else to keep in step.

Each shard is written atomically (temp file, fsync, rename), so a SIGKILL at any moment loses at
most the shards in flight; a rerun of the same command keeps every shard of this job whose
contents still match their sha256 and computes the rest. One job at a time per folder (an flock
on the folder itself, no lock file). Datasets of the first layout (an `_embeddings.json` beside
the shards) are read as they are, and the same embed command run again moves them to this one.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

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
)

FORMAT = "clipexport-embeddings"
VERSION = 2  # 2: the job in every shard's metadata, nothing else in the folder; 1: LEGACY_MANIFEST
METADATA_KEY = b"clipexport"  # the shard's Parquet key-value metadata entry
LEGACY_MANIFEST = "_embeddings.json"  # version 1's manifest, beside the shards (Polars and HF refused the folder)
PAIR_KIND = "pair"  # images with their captions (--pairs): two embedding columns
METADATA_CACHE_SHARDS = 8  # row_metadata keeps this many shards' metadata (a served search's hits)
# The embedding columns of a dataset of each kind, in the order their values are stacked per row.
EMBEDDING_COLUMNS = {PAIR_KIND: ("image_embedding", "text_embedding")}
PLAIN_EMBEDDING = ("embedding",)


def embedding_columns(kind: str) -> dict[str, str]:
    """A dataset kind's embedding columns by what they embed ("image" / "text")."""
    if kind == PAIR_KIND:
        return dict(zip(("image", "text"), EMBEDDING_COLUMNS[PAIR_KIND]))
    return {kind: PLAIN_EMBEDDING[0]}


BEHIND = ".clipexport-dataset"  # the dataset behind another layout of it (bulk/layouts.py)
DEFAULT_SHARD_SIZE = 10_000
DTYPES = ("float32", "float16")
DECODES = ("exact", "fast")


@dataclass(frozen=True)
class Identity:
    """What makes two runs the same job: a resumed run must match all of it. A dataset grown with
    `--append` is segments of one job: each its own input list (`SEGMENT_FIELDS`), the rest equal."""

    kind: str
    artifact_manifest_sha256: str
    precision: str
    backend: str
    normalized: bool
    dim: int
    dtype: str
    inputs_sha256: str  # the segment's input list (ids, and the metadata kept)
    inputs: int  # the segment's inputs
    shard_size: int
    decode: str = "exact"  # "fast": JPEGs decoded at a reduced DCT scale (--fast-decode); never mixed
    first_input: int = 0  # the segment's first row of the dataset's inputs (0 but for --append)
    first_shard: int = 0  # the segment's first shard
    columns: str = ""  # the metadata columns and their types (every segment's shards have one schema)

    @property
    def shard_end(self) -> int:
        """One past the segment's last shard."""
        return self.first_shard + -(-self.inputs // self.shard_size)

    def same_job(self, other: "Identity") -> bool:
        return all(getattr(self, k) == getattr(other, k) for k in JOB_FIELDS)

    def follows(self, other: "Identity") -> bool:
        """Whether this segment is the one `--append` adds after `other`."""
        return self.first_input == other.first_input + other.inputs and self.first_shard == other.shard_end


SEGMENT_FIELDS = ("inputs_sha256", "inputs", "first_input", "first_shard")
JOB_FIELDS = tuple(k for k in Identity.__dataclass_fields__ if k not in SEGMENT_FIELDS)


@dataclass(frozen=True)
class Skipped:
    """An input a bulk job left out (--skip-bad): its id and why; the one type of the dataset, the
    .npy path and both engines (the runtime's `SkippedImage` names a caller's item by position)."""

    id: str
    reason: str


def warning_lines(skipped: Sequence[Skipped], notes: Sequence[str]) -> list[str]:
    """What `embed` prints on stderr, whichever output: each input left out, and what the input list said."""
    return [f"skipped {s.id}: {s.reason}" for s in skipped] + [f"warning: {n}" for n in notes]


@dataclass(frozen=True)
class Shard:
    index: int
    file: str
    first: int  # input index of the shard's first item
    count: int  # inputs in the shard
    rows: int  # embedded rows (count - skipped)
    sha256: str  # of the shard's contents (`content_sha256`); in a version-1 dataset, of its file
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
    identity: Identity  # the segment being written (the last one)
    artifact: str
    shards: dict[int, Shard] = field(default_factory=dict)  # every segment's, by global index
    created: str = field(default_factory=utc_timestamp)
    earlier: tuple[Identity, ...] = ()  # the segments before `identity` (--append), in order
    later: tuple[Identity, ...] = ()  # and after it (a resume of an earlier run's segment)

    @property
    def segments(self) -> tuple[Identity, ...]:
        return (*self.earlier, self.identity, *self.later)

    @property
    def shard_count(self) -> int:
        """Shards of the whole dataset (global indices run 0..shard_count-1)."""
        return self.segments[-1].shard_end

    @property
    def inputs(self) -> int:
        last = self.segments[-1]
        return last.first_input + last.inputs

    def segment_of(self, index: int) -> Identity:
        return next(seg for seg in self.segments if seg.first_shard <= index < seg.shard_end)

    def shard_range(self, index: int) -> tuple[int, int]:
        """The dataset's inputs shard `index` holds."""
        segment = self.segment_of(index)
        first = segment.first_input + (index - segment.first_shard) * segment.shard_size
        return first, min(first + segment.shard_size, segment.first_input + segment.inputs)

    def local_range(self, index: int) -> tuple[int, int]:
        """The same, counted in the segment's own input list (what the engines are given)."""
        first, end = self.shard_range(index)
        return first - self.identity.first_input, end - self.identity.first_input

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.shard_count

    def job(self) -> dict[str, Any]:
        """What every shard's metadata says about the job that made it."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "created": self.created,
            "artifact": self.artifact,
            "identity": asdict(self.identity),
        }

    def to_dict(self) -> dict[str, Any]:
        """The dataset's manifest (derived from the shards; the shape readers and indexes take):
        the job, `inputs` of every segment together, and the segments' own input lists."""
        job = {k: v for k, v in asdict(self.identity).items() if k not in SEGMENT_FIELDS}
        return {
            "format": FORMAT,
            "version": VERSION,
            "created": self.created,
            "artifact": self.artifact,
            **job,
            "inputs_sha256": _joined(self.segments) if len(self.segments) > 1 else self.identity.inputs_sha256,
            "inputs": self.inputs,
            "segments": [{k: getattr(seg, k) for k in SEGMENT_FIELDS} for seg in self.segments],
            "complete": self.complete,
            "rows": sum(s.rows for s in self.shards.values()),
            "shards": [self.shards[i].to_dict() for i in sorted(self.shards)],
        }


def _joined(segments: tuple[Identity, ...]) -> str:
    return hashlib.sha256(",".join(seg.inputs_sha256 for seg in segments).encode()).hexdigest()


def shard_file(index: int) -> str:
    return f"part-{index:05d}.parquet"


SHARD_NAME = re.compile(r"part-(\d{5,})\.parquet")
_SHARD_SCHEMA = {"index": int, "file": str, "first": int, "count": int, "rows": int, "sha256": str, "skipped": list}
_ADDED_FIELDS = ("first_input", "first_shard", "columns")  # not in the first layout's manifest
_IDENTITY_SCHEMA = {
    name: (
        bool
        if name == "normalized"
        else int
        if name in ("dim", "inputs", "shard_size", "first_input", "first_shard")
        else str
    )
    for name in Identity.__dataclass_fields__
}
_JOB_SCHEMA = {"format": str, "version": int, "created": str, "artifact": str, "identity": _IDENTITY_SCHEMA}
_LEGACY_SCHEMA = {
    **{name: kind for name, kind in _IDENTITY_SCHEMA.items() if name not in ("decode", *_ADDED_FIELDS)},
    "artifact": str,
    "rows": int,
    "complete": bool,
    "shards": list,
}


def _ours(name: str) -> bool:
    return name == LEGACY_MANIFEST or bool(SHARD_NAME.fullmatch(name))


def _check_identity(data: dict[str, Any]) -> None:
    for name in _ADDED_FIELDS:  # the first layout had one segment and no metadata columns
        data.setdefault(name, Identity.__dataclass_fields__[name].default)
    if data["dim"] < 1 or data["shard_size"] < 1 or data["inputs"] < 0 or data["dtype"] not in DTYPES:
        raise ValueError("dim, shard_size, inputs or dtype out of range")
    if data["first_input"] < 0 or data["first_shard"] < 0:
        raise ValueError("first_input or first_shard out of range")
    if data.setdefault("decode", "exact") not in DECODES:  # datasets made before --fast-decode: exact
        raise ValueError(f"'decode' must be one of {', '.join(DECODES)}")


def _check_shard_entry(entry: Any, where: str) -> None:
    """A shard entry whole and named as this module names shards (a listed file can only be one of
    ours, inside the folder)."""
    check_fields(entry, _SHARD_SCHEMA, where)
    if entry["file"] != shard_file(entry["index"]) or not 0 <= entry["rows"] <= entry["count"]:
        raise ValueError(f"{where}file names {entry['file']!r} with {entry['rows']} of {entry['count']} rows")
    for skipped in entry["skipped"]:
        check_fields(skipped, {"id": str, "reason": str}, f"{where}skipped[].")


def _check_legacy_manifest(data: dict[str, Any]) -> None:
    check_fields(data, _LEGACY_SCHEMA)
    _check_identity(data)
    for number, entry in enumerate(data["shards"]):
        _check_shard_entry(entry, f"shards[{number}].")


def _read_legacy_state(folder: Path, fix: str) -> DatasetState:
    """A version-1 dataset's `_embeddings.json`, schema-checked, as the writer's typed state."""
    data = read_format_json(Path(folder) / LEGACY_MANIFEST, FORMAT, _check_legacy_manifest, fix)
    identity = Identity(**{k: data[k] for k in Identity.__dataclass_fields__})  # defaults set by the check
    state = DatasetState(Path(folder), identity, data["artifact"], created=str(data.get("created") or utc_timestamp()))
    for entry in data["shards"]:
        shard = Shard.from_dict(entry)
        state.shards[shard.index] = shard
    return state


class _Damaged(Exception):
    """A shard of ours (it carries our metadata) that does not hold together: redone on a resume."""


class _Foreign(Exception):
    """A `part-*.parquet` that is not ours as far as anyone can tell: never removed."""


def _read_footer(path: Path) -> tuple[dict[str, Any], Shard]:
    """A shard's job and entry, from its Parquet footer alone (no data read)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        metadata = parquet.schema_arrow.metadata or {}
        rows = parquet.metadata.num_rows
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a truncated or foreign file
        raise _Foreign(f"not a readable Parquet file ({str(exc).splitlines()[0][:120]})") from None
    if METADATA_KEY not in metadata:
        raise _Foreign("a Parquet file that clipexport embed did not write (no clipexport metadata)")
    try:
        data = json.loads(metadata[METADATA_KEY])
        check_fields(data, {**_JOB_SCHEMA, "shard": dict})
        if data["format"] != FORMAT or data["version"] != VERSION:
            raise ValueError(f"format {data['format']!r} version {data['version']}, not {FORMAT!r} {VERSION}")
        _check_identity(data["identity"])
        _check_shard_entry(data["shard"], "shard.")
        shard = Shard.from_dict(data.pop("shard"))
    except (ValueError, KeyError, TypeError) as exc:
        raise _Damaged(f"its clipexport metadata is damaged ({exc})") from None
    if shard.file != path.name or shard.rows != rows:
        raise _Damaged(f"its metadata describes {shard.file} with {shard.rows} rows, not {path.name} with {rows}")
    return data, shard


@dataclass
class _Scan:
    """What a version-2 folder's shard footers say: the dataset (None: no shard of ours), shards of
    ours that do not hold together, files that are not ours, and shards of another job."""

    state: DatasetState | None = None
    damaged: list[Path] = field(default_factory=list)
    foreign: list[tuple[Path, str]] = field(default_factory=list)
    others: list[tuple[Path, Identity]] = field(default_factory=list)  # shards of another job than `state`'s
    broken: str = ""  # segments that do not follow one another (why)


def _scan(folder: Path) -> _Scan:
    scan = _Scan()
    found: list[tuple[Path, dict[str, Any], Identity, Shard]] = []
    for path in sorted(folder.iterdir()):
        if not SHARD_NAME.fullmatch(path.name):
            continue
        try:
            job, shard = _read_footer(path)
        except _Foreign as exc:
            scan.foreign.append((path, str(exc)))
            continue
        except _Damaged:
            scan.damaged.append(path)
            continue
        found.append((path, job, Identity(**job["identity"]), shard))
    if not found:
        return scan
    first_job = min(found, key=lambda f: f[2].first_shard)
    segments: dict[int, Identity] = {}
    for path, _, identity, _ in found:
        if not identity.same_job(first_job[2]):
            scan.others.append((path, identity))
        elif segments.setdefault(identity.first_shard, identity) != identity:
            scan.others.append((path, identity))  # two input lists for one segment: another job's shards
    order = [segments[k] for k in sorted(segments)]
    if order[0].first_input != 0 or order[0].first_shard != 0:
        scan.broken = "its first segment is missing"
    elif not all(b.follows(a) for a, b in zip(order, order[1:])):
        scan.broken = "its segments (runs of --append) do not follow one another"
    state = DatasetState(
        folder, order[-1], first_job[1]["artifact"], created=first_job[1]["created"], earlier=tuple(order[:-1])
    )
    for path, _, identity, shard in found:
        if (path, identity) in scan.others:
            continue
        if not identity.first_shard <= shard.index < identity.shard_end or (
            shard.first,
            shard.first + shard.count,
        ) != state.shard_range(shard.index):
            scan.damaged.append(path)
        else:
            state.shards[shard.index] = shard
    scan.state = state
    return scan


def _differ(a: Identity, b: Identity) -> str:
    return ", ".join(k for k in JOB_FIELDS + SEGMENT_FIELDS if getattr(a, k) != getattr(b, k))


def _read_scan(folder: Path, fix: str) -> DatasetState | None:
    """The dataset for reading: every shard file whole and of one job, else one InputError line."""
    scan = _scan(folder)
    if scan.foreign or scan.damaged:
        path, why = scan.foreign[0] if scan.foreign else (scan.damaged[0], "a shard whose metadata does not match it")
        raise InputError(f"{path} is {why}; {fix}")
    if scan.others:
        path, identity = scan.others[0]
        raise InputError(
            f"{folder} mixes shards of different jobs ({path.name} differs in {_differ(identity, scan.state.identity)}); "
            "move the shards that are not this dataset out, or make it again with --overwrite"
        )
    if scan.broken:
        raise InputError(f"{folder} is not whole: {scan.broken}; {fix}")
    return scan.state


def _clear(folder: Path) -> None:
    """Remove the files a dataset of ours is made of (and nothing else)."""
    for path in folder.iterdir():
        if _ours(path.name) and path.is_file():
            path.unlink()


def open_for_writing(
    folder: Path, identity: Identity, artifact: str, overwrite: bool, progress: Any = None
) -> tuple[DatasetState, list[int]]:
    """The folder's state for this job and the shards kept from an earlier run of it.

    The owned-folder rule: the folder is new, empty, or holds shards of ours; anything else in it
    is refused, naming the file (a `part-00000.parquet` without our metadata is someone else's:
    never replaced, never mixed with this job, --overwrite or not). A dataset of another job is
    refused, or with --overwrite its shards are removed. Shards this job can keep — its own, whole,
    with the contents their metadata's sha256 names — are kept; damaged ones are redone. A
    version-1 dataset of this job has its kept shards rewritten in this layout (`progress` says so)."""
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(folder)
    refuse_foreign(
        folder, _ours, "--output", "not an embeddings dataset (readers of the folder would take them for data)"
    )
    fix = "pass --overwrite to start over (it removes only this dataset's part-*.parquet files), or choose another --output"
    if (folder / LEGACY_MANIFEST).is_file():
        return _open_legacy(folder, identity, artifact, overwrite, fix, progress)
    scan = _scan(folder)
    if scan.foreign:
        path, why = scan.foreign[0]
        raise InputError(
            f"--output {folder} holds {path.name}, {why}: files that are not ours are never replaced or mixed "
            "with a new job; move them out, or choose a new or empty folder"
        )
    earlier = scan.state
    if earlier is None or overwrite:
        if earlier is not None and identity.first_shard:
            raise InputError("--append adds to a dataset; --overwrite starts one over: pass one of them")
        _clear(folder)  # only shards of ours are left by now
        return DatasetState(folder, identity, artifact), []
    segments = earlier.segments
    later: tuple[Identity, ...] = ()
    if identity in segments:  # this segment, again: a resume (of the last run, or of an earlier one's)
        position = segments.index(identity)
        prior, later = segments[:position], segments[position + 1 :]
    elif identity.first_shard and identity.same_job(earlier.identity) and identity.follows(earlier.identity):
        prior = segments  # --append: a new segment after the last
    else:
        other = earlier.identity if not scan.others else scan.others[0][1]
        grow = " (to add inputs to it, pass --append)" if other.same_job(identity) and not identity.first_shard else ""
        raise InputError(
            f"--output {folder} holds embeddings of another job ({_differ(other, identity)} differ){grow}; {fix}"
        )
    if scan.others or scan.broken:
        raise InputError(f"--output {folder} is not one dataset ({scan.broken or 'shards of another job'}); {fix}")
    state = DatasetState(folder, identity, artifact, created=earlier.created, earlier=tuple(prior), later=later)
    kept = []
    for shard in earlier.shards.values():
        if _contents_match(folder / shard.file, shard):
            state.shards[shard.index] = shard
            kept.append(shard.index)
        else:
            scan.damaged.append(folder / shard.file)
    missing = [i for seg in prior for i in range(seg.first_shard, seg.shard_end) if i not in state.shards]
    if missing and not later and identity not in segments:  # --append onto a dataset with a hole
        raise InputError(
            f"--output {folder}: shard {shard_file(missing[0])} of an earlier run is missing or damaged; rerun "
            "the embed command that made it (without its newer inputs) to redo it, then append"
        )
    for path in scan.damaged:  # readers of the folder must never see a shard that is being redone
        path.unlink()
    return state, sorted(kept)


@dataclass(frozen=True)
class AppendPlan:
    """Where `--append` puts the inputs a dataset does not hold yet."""

    present: frozenset[str]  # ids the dataset holds (rows and skipped inputs) before the new segment
    first_input: int
    first_shard: int
    unfinished: Identity | None  # the last segment, when an --append into it did not finish
    recorded: dict[str, tuple] = field(default_factory=dict)  # id -> (input_bytes, input_mtime_ns, input_sha256)


def plan_append(folder: Path) -> AppendPlan:
    """What `embed -o DS --append` adds to: the dataset's ids and where a new segment starts; an
    unfinished last segment is resumed (its inputs are not counted as present)."""
    folder = Path(folder)
    if (folder / LEGACY_MANIFEST).is_file():
        raise InputError(
            f"--append: {folder} is in the first dataset layout; run the embed command that made it once "
            "without --append (it moves the dataset on, re-embedding nothing), then append"
        )
    state = _read_scan(folder, "rerun the embed command that made it") if folder.is_dir() else None
    if state is None:
        raise InputError(f"--append: {folder} holds no dataset yet; run the same command without --append to make it")
    last = state.segments[-1]
    unfinished = any(i not in state.shards for i in range(last.first_shard, last.shard_end))
    holes = [i for i in range(0, last.first_shard) if i not in state.shards]
    if holes:
        raise InputError(
            f"--append: shard {shard_file(holes[0])} of {folder} is missing; rerun the embed command that made "
            "it to redo it, then append"
        )
    import pyarrow.parquet as pq

    entries = [state.shards[i] for i in sorted(state.shards) if not unfinished or i < last.first_shard]
    present: set[str] = set()
    recorded: dict[str, tuple] = {}
    facts = ("input_bytes", "input_mtime_ns", "input_sha256")
    for entry in entries:  # the ids (and what each input was): the writer checks every shard's contents next
        path = folder / entry.file
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=["id", *(n for n in facts if n in names)])
        ids = table.column("id").to_pylist()
        present.update(ids)
        present.update(skipped.id for skipped in entry.skipped)
        if all(n in names for n in facts):
            columns = [table.column(n).to_pylist() for n in facts]
            recorded.update(zip(ids, zip(*columns)))
    if unfinished:
        return AppendPlan(frozenset(present), last.first_input, last.first_shard, last, recorded)
    return AppendPlan(frozenset(present), state.inputs, state.shard_count, None, recorded)


def _open_legacy(
    folder: Path, identity: Identity, artifact: str, overwrite: bool, fix: str, progress: Any
) -> tuple[DatasetState, list[int]]:
    """A version-1 folder: the same job resumes with its kept shards moved to this layout (each
    rewritten with its metadata, then the old manifest removed); another job, as in version 2."""
    try:
        earlier = _read_legacy_state(folder, fix)
    except InputError:
        if not overwrite:
            raise
        _clear(folder)
        return DatasetState(folder, identity, artifact), []
    if earlier.identity != identity or overwrite:
        if not overwrite:
            differ = [k for k in Identity.__dataclass_fields__ if getattr(earlier.identity, k) != getattr(identity, k)]
            raise InputError(f"--output {folder} holds embeddings of another job ({', '.join(differ)} differ); {fix}")
        _clear(folder)
        return DatasetState(folder, identity, artifact), []
    import pyarrow.parquet as pq

    state = DatasetState(folder, identity, artifact, created=earlier.created)
    for shard in sorted(earlier.shards.values(), key=lambda s: s.index):
        path = folder / shard.file
        if shard.index < state.shard_count and path.is_file() and sha256_file(path) == shard.sha256:
            ids, values, extra = _columns(pq.read_table(path))
            write_shard(state, shard.index, ids, values.reshape(len(ids), identity.dim), list(shard.skipped), extra)
    for path in folder.iterdir():  # shards the old manifest did not keep are redone
        if SHARD_NAME.fullmatch(path.name) and shard_index(path.name) not in state.shards:
            path.unlink()
    (folder / LEGACY_MANIFEST).unlink()
    if progress is not None:
        progress(f"moved {len(state.shards)} shards to the layout every reader opens (no {LEGACY_MANIFEST})")
    return state, sorted(state.shards)


def shard_index(name: str) -> int:
    found = SHARD_NAME.fullmatch(name)
    return int(found.group(1)) if found else -1


def content_sha256(ids: list[str], values: np.ndarray, extra: Any = None) -> str:
    """What a shard's metadata pins: its ids, its embeddings as stored (float32/float16, in row
    order) and its metadata columns (`extra`, a table; by value, so a Parquet round trip keeps it).
    Parquet's page checksums catch a damaged file; this catches a rewritten one."""
    digest = hashlib.sha256()
    for text in ids:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    digest.update(np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<"), copy=False).tobytes())
    for name in extra.column_names if extra is not None else ():
        values_json = json.dumps(extra.column(name).to_pylist(), default=str, ensure_ascii=False)
        digest.update(f"\0{name}\0{values_json}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _columns(table: Any) -> tuple[list[str], np.ndarray, Any]:
    """A shard table's ids, its embeddings' flat values (in the dtype they are stored in; a pair's
    image and text rows side by side) and its metadata columns (a table, or None)."""
    names = EMBEDDING_COLUMNS[PAIR_KIND] if "image_embedding" in table.column_names else PLAIN_EMBEDDING
    parts = [embedding_rows(table, name) for name in names]
    values = (parts[0] if len(parts) == 1 else np.stack(parts, axis=1)).reshape(-1)
    extra = [n for n in table.column_names if n not in ("id", *names)]
    return table.column("id").to_pylist(), values, (table.select(extra) if extra else None)


def embedding_rows(table: Any, column: str) -> np.ndarray:
    """A shard table's embedding column as [rows, dim], in the dtype it is stored in."""
    values = table.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(table), -1)


def _contents_match(path: Path, shard: Shard) -> bool:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except Exception:  # damaged pages: the shard is redone
        return False
    return content_sha256(*_columns(table)) == shard.sha256


def _parquet_bytes(
    ids: list[str],
    embeddings: np.ndarray,
    dtype: np.dtype,
    dim: int,
    metadata: dict[str, Any] | None = None,
    extra: Any = None,
) -> tuple[bytes, str]:
    """A shard's Parquet file, in memory: `id`, `embedding`, then the inputs' metadata columns
    (`extra`, a table with a row per id), the job and the shard in its key-value metadata; and
    the sha256 of its contents."""
    from clipexport._deps import require

    pa = require("pyarrow", "writing the sharded embeddings dataset")
    import pyarrow.parquet as pq

    stored = np.ascontiguousarray(embeddings, dtype=dtype)
    values = stored.reshape(-1)
    digest = content_sha256(ids, values, extra)
    arrow_type = pa.float16() if dtype == np.float16 else pa.float32()
    columns = {"id": pa.array(ids, type=pa.string())}
    pair = stored.ndim == 3  # [rows, 2, dim]: an image and its caption
    embedding_names = EMBEDDING_COLUMNS[PAIR_KIND] if pair else PLAIN_EMBEDDING
    for number, name in enumerate(embedding_names):
        part = np.ascontiguousarray(stored[:, number] if pair else stored).reshape(-1)
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(part, type=arrow_type), dim)
    for name in extra.column_names if extra is not None else ():
        columns[name] = extra.column(name)
    table = pa.table(columns)
    if metadata is not None:
        metadata["shard"]["sha256"] = digest
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, ensure_ascii=False)})
    buffer = io.BytesIO()
    # Dictionary encoding for the metadata columns only: embeddings and ids are all distinct, so the
    # writer's dictionary (a hash table over every float) only grows until it gives up. Without it,
    # 1,000 rows x 512 write in 6-11 ms, not 20-25 (200-400 ms the first time in a process), and
    # take a quarter less room.
    dictionary = [name for name in columns if name != "id" and name not in embedding_names]
    pq.write_table(table, buffer, compression="zstd", write_page_checksum=True, use_dictionary=dictionary)
    return buffer.getvalue(), digest


def prepare_writer(identity: Identity) -> None:
    """Load the shard writer's library and start its codec with a one-row table (0.2-0.3 s of CPU,
    most of it pyarrow importing pandas on its first array; a shard of 1,000 rows costs 6-11 ms
    after): a run's start-up cost, paid before the run."""
    _parquet_bytes(["warm-up"], np.zeros((1, identity.dim)), np.dtype(identity.dtype), identity.dim)


def write_shard(
    state: DatasetState,
    index: int,
    ids: list[str],
    embeddings: np.ndarray,
    skipped: list[Skipped],
    extra: Any = None,
) -> Shard:
    """One shard, atomically: the file says what it is, so there is nothing else to write.
    `extra`: the rows' metadata columns (a table, a row per id)."""
    first, last = state.shard_range(index)
    name = shard_file(index)
    entry = Shard(index, name, first, last - first, len(ids), "", tuple(skipped))
    metadata = {**state.job(), "shard": entry.to_dict()}
    dtype, dim = np.dtype(state.identity.dtype), state.identity.dim
    data, digest = _parquet_bytes(ids, embeddings, dtype, dim, metadata, extra)
    try:
        write_bytes_atomic(state.folder / name, data)
    except (DiskFull, OSError) as exc:  # DiskFull from write_bytes_atomic, or a raw ENOSPC
        if not is_disk_full(exc):
            raise
        raise disk_full(state.folder / name, ": finished shards are kept") from None
    shard = Shard(index, name, first, last - first, len(ids), digest, tuple(skipped))
    state.shards[index] = shard
    return shard


# A row shorter than this is no direction (embeddings are unit vectors or raw projections of norm ~1-100).
MIN_ROW_NORM = 1e-12


@dataclass(frozen=True)
class EmbeddingsDataset:
    """The one reader of a dataset `embed -o DIR` wrote (`index`, `search`, `verify`'s tests and the
    benchmarks read it through this): the manifest checked once, each shard's contents checked
    against their sha256 the first time this reader opens it."""

    folder: Path
    manifest: dict[str, Any]
    manifest_sha256: str  # the dataset's fingerprint (`fingerprint`): what an index records
    _checked: set = field(default_factory=set, compare=False, repr=False)  # shard files whose sha256 matched
    column: str = ""  # the embedding column read (a --pairs dataset has two; "": the first)
    _metadata_cache: dict = field(default_factory=dict, compare=False, repr=False)  # shard number -> its rows' metadata
    _metadata_lock: Any = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def home(self) -> Path:
        """The folder the user named: the dataset's own, or the one in another layout it is behind."""
        return self.folder.parent if self.folder.name == BEHIND else self.folder

    @property
    def embedding_column(self) -> str:
        return self.column or EMBEDDING_COLUMNS.get(self.manifest.get("kind", ""), PLAIN_EMBEDDING)[0]

    @property
    def kind(self) -> str:
        """What the rows read are embeddings of: "image" or "text" (a pair's column says which)."""
        if self.manifest.get("kind") == PAIR_KIND:
            return "text" if self.embedding_column == "text_embedding" else "image"
        return str(self.manifest.get("kind", "rows"))

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def _table(self, entry: dict[str, Any], columns: list[str] | None = None) -> Any:
        import pyarrow.parquet as pq

        path = self.folder / entry["file"]
        if entry["file"] in self._checked:
            return pq.read_table(path, columns=columns)
        legacy = self.manifest["version"] == 1
        damaged = f"{path} is missing or does not match the dataset's record of it (sha256)"
        if legacy and (not path.is_file() or sha256_file(path) != entry["sha256"]):
            raise InputError(f"{damaged}; rerun the embed command that made the dataset")
        try:
            table = pq.read_table(path, page_checksum_verification=True)
        except Exception as exc:  # a damaged page, a truncated file
            raise InputError(
                f"{path} cannot be read ({str(exc).splitlines()[0][:120]}); rerun the embed command that made "
                "the dataset (it redoes that shard)"
            ) from None
        if not legacy and content_sha256(*_columns(table)) != entry["sha256"]:
            raise InputError(f"{damaged}; rerun the embed command that made the dataset (it redoes that shard)")
        self._checked.add(entry["file"])
        return table.select(columns) if columns else table

    def read_shard(self, entry: dict[str, Any]) -> Any:
        """A shard's whole table (every column), its contents checked against their sha256."""
        return self._table(entry)

    def shards(self, start: int = 0, unit: bool = False) -> Iterator[tuple[int, list[str], np.ndarray]]:
        """(first row, ids, rows) per shard, from shard `start`, in the dtype they are stored in.
        `unit`: float32, every row checked finite and non-zero, then L2-normalised (what an index takes)."""
        row = 0
        for number, entry in enumerate(self.manifest["shards"]):
            if number >= start:
                path = self.folder / entry["file"]
                table = self._table(entry, ["id", self.embedding_column])
                ids = table.column("id").to_pylist()
                raw = embedding_rows(table, self.embedding_column)
                if raw.shape[1] != self.dim:
                    raise InputError(
                        f"{path} holds {raw.shape[1]}-d rows, not the {self.dim} its manifest says; "
                        "rerun the embed command"
                    )
                if unit:
                    raw = raw.astype(np.float32)
                    _check_rows(raw, ids, path)
                    raw = l2_normalize(raw, np.float32)
                yield row, ids, raw
            row += int(entry["rows"])

    def row_metadata(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """Each row's metadata columns (every column but the embeddings; `id` included), in the
        order asked: what a served search answers beside ids and scores. A shard's metadata is read
        once and kept (the last METADATA_CACHE_SHARDS shards read)."""
        starts = np.cumsum([0] + [int(entry["rows"]) for entry in self.manifest["shards"]])
        out: list[dict[str, Any]] = []
        for row in rows:
            if not 0 <= row < self.rows:
                raise InputError(f"row {row} is outside the dataset's {self.rows} rows")
            number = int(np.searchsorted(starts, row, side="right")) - 1
            out.append(self._metadata(number)[row - int(starts[number])])
        return out

    def _metadata(self, number: int) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        cache = self._metadata_cache  # served searches call this from several threads: the lock guards it
        with self._metadata_lock:
            found = cache.get(number)
        if found is None:
            entry = self.manifest["shards"][number]
            embedding = {c for columns in EMBEDDING_COLUMNS.values() for c in columns} | set(PLAIN_EMBEDDING)
            kept = [name for name in pq.read_schema(self.folder / entry["file"]).names if name not in embedding]
            found = self._table(entry, kept).to_pylist()
            with self._metadata_lock:
                cache[number] = found
                while len(cache) > METADATA_CACHE_SHARDS:
                    cache.pop(next(iter(cache)))
        return found

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


def read_manifest(
    folder: Path, what: str = "DATASET", fix: str = "rerun the embed command that made it"
) -> dict[str, Any] | None:
    """The dataset's manifest (version 2: derived from its shards' footers; version 1: its
    `_embeddings.json`), schema-checked, one InputError line on any damage; None where `folder`
    holds no dataset."""
    folder = Path(folder)
    if (folder / LEGACY_MANIFEST).is_file():
        data = read_format_json(folder / LEGACY_MANIFEST, FORMAT, _check_legacy_manifest, fix)
        data["version"] = 1
        return data
    if not folder.is_dir():
        return None
    state = _read_scan(folder, fix)
    return state.to_dict() if state is not None else None


def shard_list(manifest: dict[str, Any]) -> list[list[Any]]:
    """A dataset's shards in row order as an index records them: [file, content sha256, rows] (an
    index holds the dataset's first shards while this list starts with its record)."""
    return [[entry["file"], entry["sha256"], int(entry["rows"])] for entry in manifest["shards"]]


def fingerprint(folder: Path, manifest: dict[str, Any] | None = None) -> str | None:
    """What an index records of the dataset it was built from, to notice a changed one: the sha256
    of the manifest (version 1: of its file, as indexes built then recorded it)."""
    folder = Path(folder)
    if (folder / LEGACY_MANIFEST).is_file():
        return sha256_file(folder / LEGACY_MANIFEST)
    if manifest is None:
        try:
            manifest = read_manifest(folder)
        except InputError:
            return "damaged"
    if manifest is None:
        return None
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def read_embeddings(
    folder: Path, what: str = "DATASET", finished: bool = True, column: str | None = None
) -> EmbeddingsDataset:
    """A dataset to read. `finished`: refuse one still being written or with no rows (what an index
    needs); else a partial one is read as far as its shards go."""
    from clipexport._deps import require

    require("pyarrow", "reading the embeddings dataset")
    folder = Path(folder).expanduser()
    if (folder / BEHIND).is_dir() and not any(SHARD_NAME.fullmatch(p.name) for p in folder.iterdir()):
        folder = folder / BEHIND  # a folder in another layout (clip-retrieval's): the dataset behind it
    manifest = read_manifest(folder, what)
    if manifest is None:
        raise InputError(
            f"{what} {folder} is not an embeddings dataset (no part-*.parquet of clipexport embed); make one "
            "with `clipexport embed ARTIFACT --images ... -o DIR`"
        )
    if finished and not manifest.get("complete"):
        raise InputError(
            f"{what} {folder} is not finished ({len(manifest['shards'])} shards done); run the same "
            "embed command again to finish it, then index it"
        )
    if finished and int(manifest["rows"]) == 0:
        raise InputError(f"{what} {folder} has no rows (every input was skipped); nothing to index")
    names = EMBEDDING_COLUMNS.get(manifest.get("kind", ""), PLAIN_EMBEDDING)
    if column is not None and column not in names:
        raise InputError(f"--column {column}: {what} {folder} has the embedding columns {', '.join(names)}")
    return EmbeddingsDataset(folder, manifest, fingerprint(folder, manifest) or "", column=column or "")


def _remove_stale_temps(folder: Path) -> None:
    """Temp files of a killed run (write_bytes_atomic's `.name.*.tmp`) are never ours to keep."""
    for path in folder.glob(".part-*.tmp"):
        path.unlink(missing_ok=True)
    for path in folder.glob(f".{LEGACY_MANIFEST}.*.tmp"):
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
    "AppendPlan",
    "EMBEDDING_COLUMNS",
    "embedding_columns",
    "embedding_rows",
    "PAIR_KIND",
    "DEFAULT_SHARD_SIZE",
    "DTYPES",
    "DatasetState",
    "DiskFull",
    "EmbeddingsDataset",
    "Identity",
    "LEGACY_MANIFEST",
    "METADATA_KEY",
    "MIN_ROW_NORM",
    "Shard",
    "Skipped",
    "content_sha256",
    "fingerprint",
    "job_lock",
    "open_for_writing",
    "plan_append",
    "read_embeddings",
    "read_manifest",
    "shard_file",
    "shard_list",
    "write_shard",
]
