"""Retrieval sets: a folder with `captions.tsv` (image<TAB>caption) and/or class subfolders, or the
shipped demo scenes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from clipexport.errors import InputError
from clipexport.files import package_data
from clipexport.datasets.files import IMAGE_SUFFIXES, read_lines

CAPTIONS_FILE = "captions.tsv"
DEMO_RETRIEVAL = "demo"  # `verify --retrieval demo`: the shipped demo scenes


@dataclass(frozen=True)
class RetrievalSet:
    """A retrieval benchmark folder: the gallery (every image of the class subfolders, then any
    other image captions.tsv names), each image's class (-1: none) for image -> image, and
    caption -> image pairs from DIR/captions.tsv (`image path<TAB>caption`, paths relative to DIR)."""

    root: Path
    images: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    captions: tuple[str, ...]
    caption_images: tuple[int, ...]  # gallery row of each caption
    caption_names: tuple[str, ...]  # captions.tsv:line, for error messages

    def relevant_images(self) -> list[frozenset[int]]:
        """Per gallery row: the other rows of its class (empty when it has none)."""
        by_class: dict[int, list[int]] = {}
        for row, label in enumerate(self.labels):
            if label >= 0:
                by_class.setdefault(label, []).append(row)
        return [
            frozenset(r for r in by_class.get(label, []) if r != row) if label >= 0 else frozenset()
            for row, label in enumerate(self.labels)
        ]


def retrieval_set_dir(folder: str | Path) -> Path:
    if str(folder) == DEMO_RETRIEVAL:
        return package_data("demo", "retrieval")
    return Path(folder).expanduser()


def load_retrieval_set(folder: str | Path) -> RetrievalSet:
    from clipexport.inputs import check_text

    root = retrieval_set_dir(folder)
    if not root.is_dir():
        raise InputError(
            f"--retrieval {root} does not exist; pass a folder with {CAPTIONS_FILE} (image<TAB>caption) "
            "and/or one subfolder of images per class (or 'demo')"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    images: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        images += files
        labels += [index] * len(files)
    rows = {p.resolve(): i for i, p in enumerate(images)}
    captions, caption_images, names = [], [], []
    captions_path = root / CAPTIONS_FILE
    if captions_path.is_file():
        for number, line in enumerate(read_lines(captions_path, CAPTIONS_FILE), start=1):
            where = f"{captions_path}:{number}"
            if not line.strip():
                continue
            if "\t" not in line:
                raise InputError(f"{where} has no tab; write `image path<TAB>caption`")
            path_text, caption = line.split("\t", 1)
            path = Path(path_text).expanduser()
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise InputError(
                    f"{where}: image {path_text} does not exist; fix the path (relative to {root}) or remove the line"
                )
            key = path.resolve()
            if key not in rows:
                rows[key] = len(images)
                images.append(path)
                labels.append(-1)
            check_text(caption, where)
            captions.append(caption)
            caption_images.append(rows[key])
            names.append(where)
    if not captions and sum(1 for label in labels if label >= 0) < 2:
        raise InputError(
            f"--retrieval {root} has neither {CAPTIONS_FILE} nor class subfolders of images; add "
            f"{CAPTIONS_FILE} (image<TAB>caption per line) or one subfolder of images per class"
        )
    if len(images) < 2:
        raise InputError(f"--retrieval {root} has {len(images)} image; retrieval needs at least 2")
    return RetrievalSet(
        root, tuple(images), tuple(labels), tuple(classes), tuple(captions), tuple(caption_images), tuple(names)
    )
