"""The user's own image folders (read recursively) and text files, one item per line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable


from clipexport._deps import require
from clipexport.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(folder: str | Path, option: str = "--images", what: str = "image folder") -> list[Path]:
    """Every image file in a folder and its subfolders (hidden ones left out), sorted by relative
    path; one clear line naming `option` when there is none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"{what} {root} does not exist; pass an existing folder with {option}")
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not paths:
        raise InputError(f"{what} {root} has no images ({', '.join(IMAGE_SUFFIXES)}); add some or drop {option}")
    return paths


def is_folder(path: Path) -> bool:
    """Path.is_dir that answers False, not OSError, for a name the file system cannot even look up
    (ENAMETOOLONG): reading the file then says why in one line."""
    try:
        return path.is_dir()
    except OSError:
        return False


def image_paths(items: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given and every image file inside folders (sorted by name), in argument order:
    what `embed --images` and `classify` take."""
    paths: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if is_folder(path):
            paths.extend(image_files(path, "IMAGES", "image folder"))
        else:
            paths.append(path)
    return paths


def load_image_folder(folder: str | Path) -> tuple[list[Any], list[str]]:
    """(images, names) of every image file in a folder, sorted by name."""
    Image = require("PIL.Image", "reading images")
    paths = image_files(folder)
    images = []
    for path in paths:
        try:
            with Image.open(path) as handle:
                handle.load()
                images.append(handle.copy())
        except Exception as exc:
            raise InputError(f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or replace it") from None
    return images, [p.name for p in paths]


def read_lines(path: str | Path, what: str = "text file") -> list[str]:
    """The file's lines, split on "\n" only (a U+2028 or form feed inside a caption stays in it),
    "\r\n" endings and a final newline removed, blank lines kept: line i is row i."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise InputError(f"{what} {file} is a folder; pass a UTF-8 file with one text per line")
    if not file.is_file():
        raise InputError(f"{what} {file} does not exist; pass a UTF-8 file with one text per line")
    try:
        text = file.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first line
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {file} is not UTF-8 ({exc}); re-save it as UTF-8") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {file} ({exc.strerror})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def load_text_file(path: str | Path) -> list[str]:
    """One caption per line, blank lines skipped (an empty caption is still tested by default):
    for verification and calibration sets, where a row's position does not matter."""
    texts = [line for line in read_lines(path) if line.strip()]
    if not texts:
        raise InputError(f"text file {Path(path).expanduser()} has no captions; put one caption per line")
    return texts


# CLIP's 7-template ImageNet ensemble (the CLIP authors' prompt-engineering notebook): the default
# for --labeled-images without --templates or a templates.txt in the folder.
