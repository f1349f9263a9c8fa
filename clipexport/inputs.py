"""The input rules that every surface applies, in one place: the runtime's tokenizers, the
server's python models and `ClipClient` call these functions, so a text the runtime embeds is
a text the server embeds, and a mistake gets the same one-line reason everywhere.

Texts: any `str` is a text, the empty string and whitespace included (open_clip and Hugging Face
embed them: SOT, EOT, padding); what is refused is a non-string, bytes that are not UTF-8, and
a string that cannot be UTF-8 encoded (a lone surrogate). Names say which input it was: a
`file:line`, a path, or `text #i` when the caller has nothing better.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from clipexport.errors import InputError

# What one served request may carry (all its items together), unless `serve --max-request-bytes`
# says otherwise: a 12-megapixel JPEG is 3-6 MB, so a batch of eight camera photos fits; a text
# needs far less (see `runtime.tokenizer.bounded_text`).
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
FETCH_TIMEOUT_S = 10.0  # serve --allow-url-fetch: the default bound on the whole fetch of one image URL
# Triton model names become folder names and URL path parts.
MAX_MODEL_NAME = 64
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def item_name(kind: str, index: int, names: Sequence[str] | None = None) -> str:
    """How an error names item `index`: the caller's name for it (a file:line, a path), else `kind #index`."""
    if names is not None and 0 <= index < len(names):
        return str(names[index])
    return f"{kind} #{index}"


def check_text(value: Any, name: str) -> str:
    """`value` as a text the tokenizers can take, or one InputError line naming it."""
    if isinstance(value, (bytes, bytearray)):
        return decode_text(bytes(value), name)
    if not isinstance(value, str):
        raise InputError(f"{name} is a {type(value).__name__}, not a string; pass texts as str")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{name} is not valid Unicode (a lone surrogate at character {exc.start}); "
            "decode the text with errors='replace' or fix its source"
        ) from None
    return value


def decode_text(raw: bytes, name: str) -> str:
    """UTF-8 bytes (what a client sends) as a text, or one InputError line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not valid UTF-8 (byte {exc.start}); send the text UTF-8 encoded") from None


def check_texts(values: Any, names: Sequence[str] | None = None) -> list[str]:
    """A list of texts from one string or a sequence of them; every item checked by `check_text`."""
    if values is None:
        raise InputError("texts is None; pass a string or a list of strings")
    if isinstance(values, (str, bytes, bytearray)):
        values = [values]
    try:
        items = list(values)
    except TypeError:
        raise InputError(f"texts must be a string or a list of strings, got {type(values).__name__}") from None
    return [check_text(value, item_name("text", i, names)) for i, value in enumerate(items)]


def check_model_name(name: Any, derived: bool = False) -> str:
    """A Triton model name prefix: letters, digits, '_' and '-', starting with a letter or digit,
    at most MAX_MODEL_NAME characters. An explicit --name must already be one (it is what clients
    call, so it is never silently changed); a name derived from a folder is cleaned into one."""
    if not isinstance(name, str):
        raise InputError(f"model name must be a string, got {type(name).__name__}")
    if derived:
        cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")[:MAX_MODEL_NAME].strip("_-")
        if not cleaned:
            raise InputError(f"cannot make a Triton model name from the folder name '{name[:80]}'; pass --name NAME")
        return cleaned
    if len(name) > MAX_MODEL_NAME or not _MODEL_NAME.fullmatch(name):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise InputError(
            f"--name '{shown}' is not a usable model name: use at most {MAX_MODEL_NAME} ASCII letters, "
            "digits, '_' or '-', starting with a letter or digit (clients call <name>_image, <name>_text)"
        )
    return name


def served_name(name: str | None, artifact: str | Path) -> str:
    """The served models' name prefix (`<prefix>_image`, `<prefix>_text`; serve, triton, embed
    --server): `--name` / `--model` checked as given, else the artifact folder's name cleaned into one."""
    if name is not None:
        return check_model_name(name)
    return check_model_name(Path(artifact).resolve().name, derived=True)


def too_large(size: int, limit: int, what: str) -> str:
    """The one wording of the request-size rule (the HTTP front's 413 and the python models' 400)."""
    return (
        f"{what} is {size / 1e6:.1f} MB, over the server's limit of {limit / 1e6:.1f} MB per request; send fewer "
        "or smaller items per request (the operator can raise it with clipexport serve --max-request-bytes)"
    )


def check_request_bytes(size: int, limit: int, what: str) -> None:
    """A request over the byte bound is the client's mistake (HTTP 400 / gRPC INVALID_ARGUMENT)."""
    if size > limit:
        raise InputError(too_large(size, limit, what))


# -- names and files ----------------------------------------------------------------------------
_UNSHOWABLE = re.compile(r"[\x00-\x1f\x7f\\\ud800-\udfff]")
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(name: Any) -> str:
    """A name (a path, an id) as it can be printed, stored in Parquet/JSON and read back line by
    line: bytes that were not UTF-8 (`surrogateescape`, how Python hands them over) become `\\xNN`,
    control characters and the backslash are backslash-escaped, so a file name holding a newline
    can never split a line of an index file into two rows. Plain names are unchanged."""
    text = str(name)
    return _UNSHOWABLE.sub(_escape, text) if _UNSHOWABLE.search(text) else text


def regular_file(path: Any, what: str = "image") -> int:
    """The size of `path`, a regular file, or one InputError line: a missing file, a folder, a FIFO,
    socket or device (never opened: reading a FIFO waits forever), a name too long for the file
    system, or any other reason the OS gives."""
    import errno
    import os
    import stat

    name = shown(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{what} {name} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise InputError(
                f"{what} {name[:120]}... has a file name too long for the file system; rename it"
            ) from None
        raise InputError(f"cannot read {what} {name} ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} {name} is a folder; pass image files (or the folder where folders are accepted)")
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "a device"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "not a regular file"
        )
        raise InputError(f"{what} {name} is {kind}, not a regular file; pass files only")
    return int(info.st_size)


def read_regular_file(path: Any, what: str = "image") -> bytes:
    """The bytes of a regular file (see `regular_file`); an empty one is refused."""
    size = regular_file(path, what)
    if size == 0:
        raise InputError(f"{what} {shown(path)} is empty (0 bytes)")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise InputError(f"cannot read {what} {shown(path)} ({exc.strerror or exc})") from None
