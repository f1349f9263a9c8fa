"""What a bulk job embeds: the input list, made once and in a fixed order, with an id per item.

Images come from files and folders (as `embed --images` always took them), a text file of paths
(`--image-list`), a Parquet or CSV table with a path column (`--image-table`, `--path-column`), and
tar shards in the webdataset layout (`key.jpg` members; a sample's `key.txt` is its caption and its
`key.json` fields are its metadata). Texts come from a text file (one per line, blank lines included) or
a table column (`--text-table`, `--text-column`). Paths may be anything pyarrow's filesystems read
(`s3://`, `gs://`, ...) as well as local files.

Ids: the path as given, the webdataset key (`__key__`: the member's name up to the first dot of its
base name) for a tar member, `file:line` for a text line, `table:row` for a table's text; shown with `inputs.shown` (bytes that are not UTF-8 as `\\xNN`,
control characters escaped), so every id can be printed, stored and read back as one line. The list's sha256 (over kind and ids) is the job's identity: a
resumed run must have the same one. Duplicate ids are refused: an id names one row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tarfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

from clipexport.bulk.dataset import PAIR_KIND
from clipexport.datasets import IMAGE_SUFFIXES, image_paths, is_folder, read_lines
from clipexport.errors import InputError
from clipexport.inputs import read_regular_file, regular_file, shown

TABLE_SUFFIXES = (".parquet", ".csv", ".tsv")
CSV_MAX_BLOCK = 256 << 20  # the largest CSV row read (pyarrow's reader needs a row inside one block)


class Kind(str, Enum):
    IMAGE = "image"
    TEXT = "text"


@dataclass(frozen=True)
class Item:
    """One input. `where` is a path or URI; a tar member also has its byte range in the tar."""

    id: str
    where: str = ""
    offset: int = -1  # tar members: where the member's bytes start
    size: int = -1
    text: str | None = None
    member: str = ""  # tar members: the member's name (the id is the sample's key)

    @property
    def label(self) -> str:
        """How messages name the input: a tar member as `shard.tar:member`, else its id."""
        return shown(f"{self.where}:{self.member}") if self.member else self.id


@dataclass(frozen=True)
class InputList:
    kind: Kind
    items: tuple[Item, ...]
    sha256: str
    notes: tuple[str, ...] = ()  # what the list left out and why (a truncated tar's lost members)
    metadata: Any = None  # a pyarrow Table, row i for items[i]: the columns kept beside the embeddings
    decoded: tuple[str, ...] = ()  # DECODED_COLUMNS the job records as it decodes (images)
    pairs: bool = False  # images with their captions (`Item.text`): both towers embed each row

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: Sequence[int]) -> "InputList":
        """These items alone (in this order), with their metadata: a list of its own (`--append`)."""
        items = tuple(self.items[i] for i in indices)
        metadata = self.metadata.take(list(indices)) if self.metadata is not None else None
        digest = _digest(self.kind, items, metadata, self.decoded, self.pairs)
        return InputList(self.kind, items, digest, self.notes, metadata, self.decoded, self.pairs)

    @property
    def job_kind(self) -> str:
        """What the job embeds: "image", "text", or "pair" (--pairs: each image and its caption)."""
        return PAIR_KIND if self.pairs else self.kind.value

    @property
    def columns(self) -> str:
        """The metadata columns a shard of these inputs gets, with their types."""
        named = [f"{f.name}:{f.type}" for f in self.metadata.schema] if self.metadata is not None else []
        return ",".join([*named, *(f"{name}:{DECODED_TYPES[name]}" for name in self.decoded)])


@dataclass(frozen=True)
class InputSpec:
    """Where a job's inputs come from (one kind per job)."""

    images: Sequence[str] = ()  # files, folders, .tar shards
    image_list: Path | None = None  # a text file, one path per line
    image_table: Path | None = None  # Parquet / CSV with --path-column
    path_column: str = "path"
    texts: Path | None = None  # a text file, one text per line
    text_table: Path | None = None  # Parquet / CSV with --text-column
    text_column: str = "text"
    keep_columns: tuple[str, ...] | None = None  # the metadata columns kept (None: all; (): none)
    pairs: bool = False  # embed each image and its caption (a tar sample's .txt, or caption_column)
    caption_column: str = "caption"  # --image-table's caption column (--pairs)


# The dataset's own columns: an input column of that name is kept as `input_<name>`.
OWN_COLUMNS = ("id", "embedding")
# What decoding an image tells — its full size, and what the input was: its bytes, modification
# time (files and tar shards) and sha256, by which --append notices an input changed under the
# same id — recorded beside its embedding unless --keep-columns leaves it out, or an input column of
# that name is kept instead. Their Arrow types, by name.
DECODED_COLUMNS = ("width", "height", "input_bytes", "input_mtime_ns", "input_sha256")
DECODED_TYPES = {
    "width": "int32",
    "height": "int32",
    "input_bytes": "int64",
    "input_mtime_ns": "int64",
    "input_sha256": "string",
}


def list_inputs(spec: InputSpec, strict: bool = True, metadata: bool = False) -> InputList:
    """The inputs of `spec` in a fixed order. `strict` (no --skip-bad): a damaged tar shard is
    refused; otherwise its readable members are kept and `notes` says what was lost. `metadata`:
    also what each input carries (`InputList.metadata`): every column of --image-table /
    --text-table but the paths, the text of --texts rows, a tar sample's caption (`.txt`) and JSON
    fields (`.json`) with its shard, as far as `spec.keep_columns` keeps them."""
    notes: list[str] = []
    segments: list[tuple[int, Any]] = []  # (rows, their metadata table or None), in item order
    image_sources = bool(spec.images) or spec.image_list is not None or spec.image_table is not None
    text_sources = spec.texts is not None or spec.text_table is not None
    if image_sources == text_sources:
        raise InputError(
            "pass either images (--images, --image-list, --image-table) or texts (--texts, "
            "--text-table): one kind per output"
        )
    if text_sources:
        if spec.texts is not None and spec.text_table is not None:
            raise InputError("pass --texts or --text-table, not both")
        if spec.texts is not None:
            items = _text_lines(spec.texts)
            segments.append((len(items), {"text": [item.text for item in items]}))
        else:
            table = _read_table(spec.text_table)
            items = _table_texts(spec.text_table, spec.text_column, table)
            segments.append((len(items), table))
        kind = Kind.TEXT
    else:
        items = []
        if spec.images:
            items += _image_arguments(spec.images, strict, notes, segments)
        if spec.image_list is not None:
            items += [Item(shown(p), p) for p in _path_lines(spec.image_list)]
            segments.append((len(items) - sum(n for n, _ in segments), None))
        if spec.image_table is not None:
            table = _read_table(spec.image_table)
            items += [Item(shown(p), p) for p in _table_column(spec.image_table, spec.path_column, "path", table)]
            segments.append((len(items) - sum(n for n, _ in segments), table.drop_columns([spec.path_column])))
        kind = Kind.IMAGE
    if not items:
        raise InputError(
            "no inputs found: the files, folders, lists or tables given hold no "
            f"{'texts' if kind is Kind.TEXT else 'images'}"
        )
    _refuse_duplicates(items)
    decoded = DECODED_COLUMNS if kind is Kind.IMAGE and metadata else ()
    kept = _metadata_table(segments, spec.keep_columns, notes, decoded) if metadata else None
    if spec.keep_columns is not None:
        decoded = tuple(name for name in decoded if name in spec.keep_columns)
    if kept is not None:
        decoded = tuple(name for name in decoded if name not in kept.column_names)
    if not spec.pairs:
        return InputList(kind, tuple(items), _digest(kind, items, kept, decoded), tuple(notes), kept, decoded)
    if kind is Kind.TEXT:
        raise InputError(
            "--pairs embeds images with their captions; pass images (a tar with .txt captions, or --image-table)"
        )
    captions = _captions(segments, spec.caption_column)
    items = [dataclasses.replace(item, text=caption) for item, caption in zip(items, captions)]
    whole = InputList(kind, tuple(items), "", tuple(notes), kept, decoded, True)
    missing = [i for i, caption in enumerate(captions) if not isinstance(caption, str)]
    if missing and strict:
        raise InputError(
            f"--pairs: input {items[missing[0]].label} has no caption (no .txt in its tar sample, or an empty "
            f"'{spec.caption_column}' cell){f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; add "
            "them, or pass --skip-bad to leave the images without one out"
        )
    if len(missing) == len(items):
        raise InputError(
            f"--pairs: none of the {len(items)} images has a caption ('{spec.caption_column}', or a tar sample's .txt)"
        )
    if missing:
        whole = dataclasses.replace(
            whole, notes=whole.notes + (f"--pairs: {len(missing)} images without a caption are left out",)
        )
    left_out = set(missing)
    return whole.subset([i for i in range(len(items)) if i not in left_out])


def _captions(segments: list[tuple[int, Any]], column: str) -> list[Any]:
    """Each input's caption (None where it has none): the segments' `column` (a tar sample's .txt is
    its `caption`)."""
    out: list[Any] = []
    for rows, table in segments:
        if isinstance(table, dict):
            values = table.get(column)
        elif table is not None and column in table.column_names:
            values = table.column(column).to_pylist()
        else:
            values = None
        out += list(values) if values is not None else [None] * rows
    return out


def _digest(kind: Kind, items: Sequence[Item], metadata: Any, decoded: tuple[str, ...], pairs: bool = False) -> str:
    """The input list's sha256: its kind, ids, and the metadata kept (other columns or values are
    another job); with --pairs, the captions too."""
    digest = hashlib.sha256(kind.value.encode())
    if pairs:
        digest.update(b"\0pairs")
        for item in items:
            digest.update(b"\0" + (item.text or "").encode("utf-8", "surrogatepass"))
    for item in items:
        digest.update(b"\0" + item.id.encode("utf-8", "surrogateescape"))
    if metadata is not None:
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, metadata.schema) as writer:
            writer.write_table(metadata.combine_chunks())
        digest.update(b"\0metadata\0" + sink.getvalue().to_pybytes())
    digest.update(("\0decoded\0" + ",".join(decoded)).encode() if decoded else b"")
    return digest.hexdigest()


def _metadata_table(
    segments: list[tuple[int, Any]], keep: tuple[str, ...] | None, notes: list[str], decoded: tuple[str, ...]
) -> Any:
    """One table of every input's metadata, row i for item i: the segments' columns united (a
    column one source lacks is null there), named apart from the dataset's own columns, then
    those `keep` names (None: all; `decoded` names are the job's to add). None when nothing is kept."""
    if keep == () or not any(table is not None for _, table in segments):
        unknown = [name for name in keep or () if name not in decoded]
        if unknown:
            raise InputError(
                f"--keep-columns names '{unknown[0]}', which the inputs do not have (they carry "
                f"{'only ' + ', '.join(decoded) if decoded else 'no columns'}); leave the option out"
            )
        return None
    import pyarrow as pa

    tables = []
    for rows, table in segments:
        if isinstance(table, dict):
            table = pa.table(table)
        tables.append((rows, table))
    renamed = {}
    for _, table in tables:
        for name in table.column_names if table is not None else ():
            if name in OWN_COLUMNS and name not in renamed:
                renamed[name] = f"input_{name}"
                notes.append(
                    f"the inputs' column '{name}' is kept as '{renamed[name]}' (the dataset's '{name}' is its own)"
                )
    renamed_tables = [
        table.rename_columns([renamed.get(n, n) for n in table.column_names])
        for _, table in tables
        if table is not None
    ]
    try:
        schema = pa.unify_schemas([t.schema for t in renamed_tables], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(
            f"the inputs' columns do not go together ({str(exc).splitlines()[0][:200]}); choose some with --keep-columns"
        ) from None
    parts = iter(renamed_tables)
    whole = pa.concat_tables(
        [
            next(parts) if table is not None else pa.Table.from_pylist([{}] * rows, schema=schema)
            for rows, table in tables
        ],
        promote_options="permissive",
    )
    if keep is None:
        return whole
    wanted = [renamed.get(name, name) if name not in whole.column_names else name for name in keep]
    missing = [name for name in wanted if name not in whole.column_names and name not in decoded]
    if missing:
        raise InputError(
            f"--keep-columns names '{missing[0]}', which the inputs do not have (they have: "
            f"{', '.join([*whole.column_names, *decoded])}); pass some of those, or leave the option out to keep all"
        )
    chosen = [name for name in wanted if name in whole.column_names]
    return whole.select(chosen) if chosen else None


def _image_arguments(
    arguments: Sequence[str], strict: bool, notes: list[str], segments: list[tuple[int, Any]]
) -> list[Item]:
    out: list[Item] = []
    plain: list[str] = []

    def files() -> None:
        paths = [Item(shown(p), str(p)) for p in image_paths(plain)]
        out.extend(paths)
        segments.append((len(paths), None))
        plain.clear()

    for argument in arguments:
        if str(argument).lower().endswith(".tar") and not is_folder(Path(argument)):
            files()
            members, rows = _tar_members(Path(argument), strict, notes)
            out.extend(members)
            segments.append((len(members), rows))
        else:
            plain.append(argument)
    files()
    return out


TAR_BLOCK = 512


def _tar_members(path: Path, strict: bool, notes: list[str]) -> tuple[list[Item], dict[str, list]]:
    """The samples of a webdataset-style tar: each image member with its byte range (read without
    extracting), id its key, and the sample's metadata columns (`source`: the shard; `caption`:
    its `.txt`; its `.json`'s fields). Python's tarfile stops quietly at a header cut short, so a
    tar truncated there would lose its remaining members unsaid: the archive must end in its
    end-of-archive (zero) block, and every member's data must lie inside the file."""
    size = regular_file(path, "tar shard")
    try:
        with tarfile.open(path, "r:") as tar:  # uncompressed: members are byte ranges of the file
            members = [m for m in tar.getmembers() if m.isfile()]
            end = tar.offset
        with open(path, "rb") as handle:
            handle.seek(end)
            marker = handle.read(TAR_BLOCK)
    except (tarfile.TarError, OSError) as exc:
        raise InputError(
            f"cannot read tar shard {shown(path)} ({exc}); pass an uncompressed .tar of image files"
        ) from None
    whole = [m for m in members if m.offset_data + m.size <= size]
    if len(whole) < len(members) or len(marker) < TAR_BLOCK or marker.count(0) != TAR_BLOCK:
        last = whole[-1].name if whole else None
        where = f"after member {last} ({len(whole)} whole members)" if last else "before its first whole member"
        message = f"tar shard {shown(path)} is truncated {where}: the members after that are lost"
        if strict:
            raise InputError(f"{message}; re-create or re-download it, or pass --skip-bad to embed the whole members")
        notes.append(message)
    images = [m for m in whole if m.name.lower().endswith(IMAGE_SUFFIXES)]
    extras: dict[str, dict[str, Any]] = {}
    for member in whole:
        key, _, extension = _sample_key(member.name)
        if extension in ("txt", "json"):
            extras.setdefault(key, {})[extension] = member
    keys = {_sample_key(m.name)[0] for m in images}
    orphan = next((m for k, found in extras.items() if k not in keys for m in found.values()), None)
    if orphan is not None:
        message = f"tar shard {shown(path)} has {orphan.name} but no image of sample '{_sample_key(orphan.name)[0]}'"
        if strict:
            raise InputError(f"{message}; add the image, or pass --skip-bad to embed the samples that have one")
        notes.append(f"{message}: left out")
    rows: list[dict[str, Any]] = []
    with open(path, "rb") as handle:
        for member in images:
            key = _sample_key(member.name)[0]
            row: dict[str, Any] = {"source": shown(path)}
            found = extras.get(key, {})
            if "json" in found:
                row.update(_json_fields(_member_bytes(handle, found["json"]), path, found["json"].name, strict, notes))
            if "txt" in found:
                row["caption"] = _member_bytes(handle, found["txt"]).decode("utf-8", "replace")
            rows.append(row)
    items = [Item(shown(_sample_key(m.name)[0]), str(path), m.offset_data, m.size, member=m.name) for m in images]
    return items, _columns_of(rows)


def _sample_key(name: str) -> tuple[str, str, str]:
    """webdataset's split of a member name: the key (the name up to the first dot of its base
    name, directories kept) and the extension (the rest, lowercased)."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), dot, extension.lower()


def _member_bytes(handle: Any, member: tarfile.TarInfo) -> bytes:
    handle.seek(member.offset_data)
    return handle.read(member.size)


def _json_fields(data: bytes, path: Path, name: str, strict: bool, notes: list[str]) -> dict[str, Any]:
    """A sample's `.json` as columns: its top-level fields, nested values as JSON text (one type
    per column, whatever the samples hold)."""
    try:
        fields = json.loads(data)
        if not isinstance(fields, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        message = f"tar shard {shown(path)} member {name} is not a JSON object ({str(exc)[:80]})"
        if strict:
            raise InputError(f"{message}; fix it, or pass --skip-bad to leave its fields out") from None
        notes.append(f"{message}: its fields are left out")
        return {}
    return {str(k): json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v for k, v in fields.items()}


def _columns_of(rows: list[dict[str, Any]]) -> Any:
    """Row dicts as a table; a field whose values are of several kinds (a number here, text there)
    becomes text."""
    import pyarrow as pa

    names = list(dict.fromkeys(name for row in rows for name in row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return (
        pa.table(columns) if columns else pa.table({"source": pa.array([r.get("source") for r in rows], pa.string())})
    )


def _path_lines(path: Path) -> list[str]:
    lines = [line.strip() for line in read_lines(path, "image list") if line.strip()]
    if not lines:
        raise InputError(f"image list {path} is empty; put one image path per line")
    return lines


def _text_lines(path: Path) -> list[Item]:
    lines = read_lines(path, "text file")
    if not lines:
        raise InputError(f"text file {path} is empty; put one text per line")
    return [Item(shown(f"{path}:{number}"), text=line) for number, line in enumerate(lines, start=1)]


def _read_table(path: Path):
    from clipexport._deps import require

    require("pyarrow", "reading Parquet / CSV inputs")
    import pyarrow.csv
    import pyarrow.parquet

    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"table {file} does not exist; pass a .parquet, .csv or .tsv file")
    suffix = file.suffix.lower()
    try:
        if suffix == ".parquet":
            return pyarrow.parquet.read_table(file)
        if suffix in (".csv", ".tsv"):
            options = pyarrow.csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            # A row must fit in one block of pyarrow's reader (1 MiB by default): a long caption or
            # a JSON cell can be larger, so the block grows with the file, up to CSV_MAX_BLOCK.
            block = min(max(file.stat().st_size + 1, 1 << 20), CSV_MAX_BLOCK)
            return pyarrow.csv.read_csv(
                file, parse_options=options, read_options=pyarrow.csv.ReadOptions(block_size=block)
            )
    except Exception as exc:  # pyarrow's ArrowInvalid and friends
        reason = str(exc).splitlines()[0][:200]
        if "straddling" in reason or "block size" in reason:
            reason = f"a row is larger than {CSV_MAX_BLOCK >> 20} MiB; convert the table to Parquet"
        raise InputError(f"cannot read table {file} ({reason})") from None
    raise InputError(f"table {file} is not .parquet, .csv or .tsv")


def _table_column(path: Path, column: str, what: str, table: Any = None) -> list[str]:
    table = _read_table(path) if table is None else table
    if column not in table.column_names:
        raise InputError(
            f"table {path} has no column '{column}' (columns: {', '.join(table.column_names)}); "
            f"name the {what} column with --{what}-column"
        )
    values = table.column(column).to_pylist()
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str) or (what == "path" and not v.strip())), None)
    if bad is not None:
        raise InputError(f"table {path} row {bad + 1}: column '{column}' is {values[bad]!r}, not a {what}")
    return [v.strip() for v in values] if what == "path" else values


def _table_texts(path: Path, column: str, table: Any = None) -> list[Item]:
    return [
        Item(shown(f"{path}:{row}"), text=value)
        for row, value in enumerate(_table_column(path, column, "text", table), start=1)
    ]


def _refuse_duplicates(items: list[Item]) -> None:
    seen: dict[str, int] = {}
    for number, item in enumerate(items, start=1):
        first = seen.setdefault(item.id, number)
        if first != number:
            raise InputError(
                f"input {item.id} is listed twice (items {first} and {number}); every input is one row: "
                "remove the duplicate (a file given both alone and inside a folder, or two tar samples "
                "with one key?)"
            )


def towers_of(job_kind: str) -> tuple[str, ...]:
    """The towers a job of that kind (`InputList.job_kind`) runs."""
    return ("vision", "text") if job_kind == PAIR_KIND else ("text",) if job_kind == Kind.TEXT.value else ("vision",)


def item_stat(item: Item) -> tuple[int, int] | None:
    """(size, modification time in ns) of a file input — a tar member: its own size, its shard's
    time; None for object-store URIs and what cannot be stat'ed."""
    import os

    if "://" in item.where and not item.where.startswith("file://"):
        return None
    try:
        found = os.stat(Path(item.where.removeprefix("file://")).expanduser())
    except OSError:
        return None
    return (item.size if item.member else found.st_size), found.st_mtime_ns


def read_item_bytes(item: Item) -> bytes:
    """The encoded bytes of an image item: a local file, a tar member's byte range, or a URI."""
    if item.offset >= 0:
        regular_file(item.where, "tar shard")
        try:
            with open(item.where, "rb") as handle:
                handle.seek(item.offset)
                data = handle.read(item.size)
        except OSError as exc:
            raise InputError(f"cannot read tar member {item.id} ({exc.strerror or exc})") from None
        if len(data) != item.size:
            raise InputError(f"tar member {item.id} is truncated ({len(data)} of {item.size} bytes)")
        return data
    if "://" in item.where and not item.where.startswith("file://"):
        from clipexport._deps import require

        fs = require("pyarrow.fs", "reading images from object stores")
        try:
            filesystem, path = fs.FileSystem.from_uri(item.where)
            with filesystem.open_input_stream(path) as stream:
                return stream.read()
        except Exception as exc:
            raise InputError(f"cannot read image {item.where} ({str(exc).splitlines()[0][:200]})") from None
    return read_regular_file(Path(item.where.removeprefix("file://")).expanduser(), "image")
