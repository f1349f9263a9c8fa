"""What a bulk job embeds: the input list, made once and in a fixed order, with an id per item.

Images come from files and folders (as `embed --images` always took them), a text file of paths
(`--image-list`), a Parquet or CSV table with a path column (`--image-table`, `--path-column`), and
tar shards in the webdataset layout (`key.jpg` members; the other members, captions and JSON, are
not images and are left out). Texts come from a text file (one per line, blank lines included) or
a table column (`--text-table`, `--text-column`). Paths may be anything pyarrow's filesystems read
(`s3://`, `gs://`, ...) as well as local files.

Ids: the path as given, `shard.tar:member` for a tar member, `file:line` for a text line,
`table:row` for a table's text; shown with `inputs.shown` (bytes that are not UTF-8 as `\\xNN`,
control characters escaped), so every id can be printed, stored and read back as one line. The list's sha256 (over kind and ids) is the job's identity: a
resumed run must have the same one. Duplicate ids are refused: an id names one row.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Sequence

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


@dataclass(frozen=True)
class InputList:
    kind: Kind
    items: tuple[Item, ...]
    sha256: str
    notes: tuple[str, ...] = ()  # what the list left out and why (a truncated tar's lost members)

    def __len__(self) -> int:
        return len(self.items)


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


def list_inputs(spec: InputSpec, strict: bool = True) -> InputList:
    """The inputs of `spec` in a fixed order. `strict` (no --skip-bad): a damaged tar shard is
    refused; otherwise its readable members are kept and `notes` says what was lost."""
    notes: list[str] = []
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
        items = _text_lines(spec.texts) if spec.texts is not None else _table_texts(spec.text_table, spec.text_column)
        kind = Kind.TEXT
    else:
        items = []
        if spec.images:
            items += _image_arguments(spec.images, strict, notes)
        if spec.image_list is not None:
            items += [Item(shown(p), p) for p in _path_lines(spec.image_list)]
        if spec.image_table is not None:
            items += [Item(shown(p), p) for p in _table_column(spec.image_table, spec.path_column, "path")]
        kind = Kind.IMAGE
    if not items:
        raise InputError(
            "no inputs found: the files, folders, lists or tables given hold no "
            f"{'texts' if kind is Kind.TEXT else 'images'}"
        )
    _refuse_duplicates(items)
    digest = hashlib.sha256(kind.value.encode())
    for item in items:
        digest.update(b"\0" + item.id.encode("utf-8", "surrogateescape"))
    return InputList(kind, tuple(items), digest.hexdigest(), tuple(notes))


def _image_arguments(arguments: Sequence[str], strict: bool, notes: list[str]) -> list[Item]:
    out: list[Item] = []
    plain: list[str] = []
    for argument in arguments:
        if str(argument).lower().endswith(".tar") and not is_folder(Path(argument)):
            out += [Item(shown(p), str(p)) for p in image_paths(plain)]
            plain = []
            out += _tar_members(Path(argument), strict, notes)
        else:
            plain.append(argument)
    return out + [Item(shown(p), str(p)) for p in image_paths(plain)]


TAR_BLOCK = 512


def _tar_members(path: Path, strict: bool, notes: list[str]) -> list[Item]:
    """The image members of a webdataset-style tar, with their byte ranges (read without extracting).
    Python's tarfile stops quietly at a header cut short, so a tar truncated there would lose its
    remaining members unsaid: the archive must end in its end-of-archive (zero) block, and every
    member's data must lie inside the file."""
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
    return [
        Item(shown(f"{path}:{m.name}"), str(path), m.offset_data, m.size)
        for m in whole
        if m.name.lower().endswith(IMAGE_SUFFIXES)
    ]


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


def _table_column(path: Path, column: str, what: str) -> list[str]:
    table = _read_table(path)
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


def _table_texts(path: Path, column: str) -> list[Item]:
    return [
        Item(shown(f"{path}:{row}"), text=value)
        for row, value in enumerate(_table_column(path, column, "text"), start=1)
    ]


def _refuse_duplicates(items: list[Item]) -> None:
    seen: dict[str, int] = {}
    for number, item in enumerate(items, start=1):
        first = seen.setdefault(item.id, number)
        if first != number:
            raise InputError(
                f"input {item.id} is listed twice (items {first} and {number}); every input is one row: "
                "remove the duplicate (a file given both alone and inside a folder?)"
            )


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
