"""An advisory lock per artifact folder, held around every read-modify-write of its manifest (and
while reports and engines are published), so two runs at once (`quantize --precision fp16 &` and
`quantize --precision int8 &`) both land: each re-reads the manifest under the lock and adds its
own entries to what is there now."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

from clipexport.artifact.manifest import Manifest, read_manifest, write_manifest
from clipexport.errors import InputError


@contextlib.contextmanager
def artifact_lock(root: str | os.PathLike[str]) -> Iterator[None]:
    """Exclusive flock on the artifact folder itself (Linux locks directory handles too, so no
    lock file is left in the folder); blocks until the other run is done with it."""
    import fcntl  # POSIX; the artifact tools run on Linux (servers, Jetson)

    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise InputError(f"cannot open the artifact folder {root} ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last handle releases the lock


def update_manifest(root: str | os.PathLike[str], change: Callable[[Manifest], Manifest],
                    publish: Callable[[], None] | None = None) -> Manifest:
    """Under the lock: run `publish` (move new files in), re-read the manifest as it is now, apply
    `change`, write it atomically. Returns what was written."""
    with artifact_lock(root):
        if publish is not None:
            publish()
        manifest = change(read_manifest(root))
        write_manifest(root, manifest)
        return manifest
