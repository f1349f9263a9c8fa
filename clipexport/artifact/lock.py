"""An advisory lock per artifact folder, held around every read-modify-write of its manifest (and
while reports and engines are published), so two runs at once (`quantize --precision fp16 &` and
`quantize --precision int8 &`) both land: each re-reads the manifest under the lock and adds its
own entries to what is there now."""

from __future__ import annotations

import contextlib
import os
from typing import Callable

from clipexport.artifact.manifest import Manifest, read_manifest, write_manifest
from clipexport.files import folder_lock


def artifact_lock(root: str | os.PathLike[str]) -> contextlib.AbstractContextManager[None]:
    """The artifact folder's lock (`files.folder_lock`): waits until the other run is done with it."""
    return folder_lock(root, "the artifact folder")


def update_manifest(
    root: str | os.PathLike[str], change: Callable[[Manifest], Manifest], publish: Callable[[], None] | None = None
) -> Manifest:
    """Under the lock: run `publish` (move new files in), re-read the manifest as it is now, apply
    `change`, write it atomically. Returns what was written."""
    with artifact_lock(root):
        if publish is not None:
            publish()
        manifest = change(read_manifest(root))
        write_manifest(root, manifest)
        return manifest
