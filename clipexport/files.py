"""Atomic writes and hashing: an interrupted run never leaves a file that looks valid."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from clipexport.errors import ClipExportError, DiskFull, InputError, ManifestError

_CHUNK = 1 << 20


DATA_DIR = Path(__file__).resolve().parent / "data"


def package_data(*parts: str) -> Path:
    """A file shipped in clipexport/data. Found from this module's own file, not through
    importlib.resources: a folder named `clipexport` in the working directory (the parent of a
    clone, with an editable install) turns the package into a namespace package, whose resources
    are a MultiplexedPath that cannot join several parts."""
    return DATA_DIR.joinpath(*parts)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def make_public(path: str | os.PathLike[str], directory: bool = False) -> None:
    """mkstemp/mkdtemp create owner-only entries; give the final artifact the usual permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_recorded_sha256(
    path: str | os.PathLike[str],
    expected: str | None,
    fix: str,
    *,
    actual: str | None = None,
    recorded_in: str = "the manifest",
    error: type[ClipExportError] = ManifestError,
) -> None:
    """The one check of a file (or folder: pass its `actual` digest) against the sha256 recorded
    when it was made: a changed file is reported, never used. No record, nothing to check."""
    if not expected:
        return
    actual = actual if actual is not None else sha256_file(path)
    if actual != expected:
        raise error(
            f"{path} does not match {recorded_in} (sha256 {actual[:12]}… vs recorded {expected[:12]}…): "
            f"it changed since it was recorded; {fix}"
        )


Schema = Mapping[str, "type | tuple[type, ...] | Schema"]


def check_fields(data: Any, schema: Schema, where: str = "") -> None:
    """Raise TypeError / KeyError naming the first field of `data` that is missing or not of its
    type in `schema` (key -> type, tuple of types, or a nested schema for a JSON object). JSON's
    booleans are never numbers here, and `float` takes an int."""
    if not isinstance(data, dict):
        raise TypeError(f"{where or 'the document'} must be a JSON object, got {type(data).__name__}")
    for key, kind in schema.items():
        if key not in data:
            raise KeyError(f"missing '{where}{key}'")
        value = data[key]
        if isinstance(kind, Mapping):
            check_fields(value, kind, f"{where}{key}.")
            continue
        kinds = kind if isinstance(kind, tuple) else (kind,)
        kinds = kinds + ((int,) if float in kinds else ())
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            expected = "/".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise TypeError(f"'{where}{key}' must be {expected}, got {type(value).__name__} {str(value)[:40]!r}")


def read_format_json(path: Path, fmt: str, check: Callable[[dict], Any] | Schema, fix: str) -> dict:
    """A JSON manifest of ours (`"format": fmt`): the one validating reader of our manifests.
    `check` is a schema (`check_fields`) or a function raising KeyError / TypeError / ValueError on
    a missing or mistyped field; a damaged file is one InputError line ending in `fix`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != fmt:
            raise ValueError(f"not a {fmt} manifest")
        if isinstance(check, Mapping):
            check_fields(data, check)
        else:
            check(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is damaged ({str(exc).strip(chr(39))}); {fix}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror or exc}); {fix}") from None
    return data


def refuse_foreign(folder: Path, ours: Callable[[str], bool], option: str, what: str) -> None:
    """The owned-folder rule's first half: an output folder holds nothing that `ours` does not
    claim (hidden names aside: editors' and file managers' files, and our own temp files); one
    InputError line naming the first such file otherwise. `what` says what the folder is not."""
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and not ours(p.name))
    if foreign:
        raise InputError(
            f"{option} {folder} holds other files ({foreign[0]}{', ...' if len(foreign) > 1 else ''}), "
            f"{what}; move them out, or choose a new or empty folder"
        )


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it (both resolved): an output inside an input."""
    path, folder = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return path == folder or folder in path.parents


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(target) from None
        raise InputError(f"cannot write {target} ({exc.strerror or exc}); choose a writable location") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        make_public(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(target) from None
        raise


def is_disk_full(exc: BaseException) -> bool:
    """A write that failed for want of space (ENOSPC) or quota (EDQUOT)."""
    return isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))


def disk_full(target: Path, kept: str = "") -> DiskFull:
    """The one wording of a full disk (exit 3), with what a rerun keeps when there is something."""
    return DiskFull(
        f"no space left on the device of {target.parent} while writing {target.name}; free space and run "
        f"the same command again{kept}"
    )


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def utc_timestamp() -> str:
    """The time an artifact, report or engine was made: UTC, to the second, ISO 8601."""
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def make_staging_dir(parent: Path, prefix: str) -> Path:
    """A hidden working folder named `<prefix><pid>-<random>`: the pid lets a later run tell a
    crashed run's leftovers (its process is gone) from a run still going on beside it."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))


def fresh_staging_dir(
    parent: Path,
    prefix: str,
    what: str,
    fix: str,
    announce: Callable[[str], None],
    stale_prefixes: tuple[str, ...] = (),
) -> Path:
    """Clean up what interrupted runs of `what` left under `parent` (saying so), then make this
    run's staging folder; an unwritable `parent` is one clear line ending in `fix`."""
    for name in (prefix, *stale_prefixes):
        for stale in remove_stale_staging(parent, name):
            announce(f"removed {stale.name}, left by an interrupted {what}")
    try:
        return make_staging_dir(parent, prefix)
    except OSError as exc:
        raise InputError(f"cannot write into {parent} ({exc.strerror or exc}); {fix}") from None


@contextmanager
def staging_folder(
    parent: Path,
    prefix: str,
    what: str,
    fix: str,
    announce: Callable[[str], None],
    stale_prefixes: tuple[str, ...] = (),
    public: bool = False,
) -> Iterator[Path]:
    """The one staging / publish / roll-back shape of every step that writes a folder: a fresh
    staging folder (`fresh_staging_dir`) for the block, removed when it ends. A block that
    succeeded has published (renamed) it, so nothing is left either way; one that failed or was
    interrupted leaves nothing half-written. `public`: readable by others (umask), as artifacts are."""
    path = fresh_staging_dir(parent, prefix, what, fix, announce, stale_prefixes)
    try:
        if public:
            make_public(path, directory=True)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_staging(parent: Path, prefix: str, separator: str = "-", folders: bool = True) -> list[Path]:
    """The one dead-owner cleanup: remove our own entries under `parent`, named
    `{prefix}{pid}{separator}...`, whose process no longer runs (SIGKILL, power loss) — staging
    folders (`folders`), or files such as serve's shared-memory regions. Entries of live processes,
    links and anything not named like ours are left alone."""
    import shutil

    removed: list[Path] = []
    try:
        entries = list(parent.glob(f"{prefix}*")) if parent.is_dir() else []
    except OSError:
        return removed
    for path in entries:
        pid_text = path.name[len(prefix) :].split(separator, 1)[0]
        kind_ok = path.is_dir() if folders else path.is_file()
        if not kind_ok or path.is_symlink() or not pid_text.isdigit() or pid_alive(int(pid_text)):
            continue
        try:
            shutil.rmtree(path) if folders else path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (someone else's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def publish_folder(staging: Path, output: Path) -> None:
    """Swap a staged folder into place; the old one is removed only after the swap."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}-{staging.name.rsplit('-', 1)[-1]}")
        output.rename(old)
    staging.rename(output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str, busy: str | None = None) -> Iterator[None]:
    """The one folder lock: an exclusive flock on the folder itself (Linux locks directory handles,
    so no lock file is left in it), released when the block ends or the process dies, kill -9
    included. `busy`: another holder refuses at once with InputError(busy); None: wait for it.
    `what` names the folder in the error a folder that cannot be opened gives."""
    import fcntl  # POSIX; the tools run on Linux (servers, Jetson)

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise InputError(f"cannot open {what} {folder} ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy is not None else 0))
        except BlockingIOError:
            raise InputError(busy) from None
        yield
    finally:
        os.close(fd)  # closing the last handle releases the lock


@contextmanager
def created_folder(
    folder: Path, ours: Callable[[str], bool], keep: Callable[[BaseException], bool] = lambda exc: False
) -> Iterator[None]:
    """The one "remove the folder I created" rule, around a step that writes into `folder`: when
    the block fails and the folder did not exist before it, the folder goes again — unless
    `keep(exc)` says what it holds is worth resuming, or it holds anything not `ours(name)`
    (someone else's file is never deleted)."""
    import shutil

    created = not os.path.lexists(folder)
    try:
        yield
    except BaseException as exc:
        if (
            created
            and folder.is_dir()
            and not folder.is_symlink()
            and not keep(exc)
            and all(ours(entry.name) for entry in folder.iterdir())
        ):
            shutil.rmtree(folder, ignore_errors=True)
        raise
