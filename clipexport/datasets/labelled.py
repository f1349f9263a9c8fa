"""Labelled image folders (an ImageFolder: one subfolder per class) with their prompt templates,
and classify's label lists."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


from clipexport.errors import InputError
from clipexport.datasets.files import IMAGE_SUFFIXES, read_lines

DEFAULT_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
TEMPLATES_FILE = "templates.txt"


@dataclass(frozen=True)
class LabelledSet:
    """An ImageFolder: one subfolder per class. `prompts[i]` is the text for class i: the folder
    name (underscores as spaces) or what classes.txt ("folder<TAB>prompt") / classes.json maps it to."""

    root: Path
    paths: tuple[Path, ...]
    labels: tuple[int, ...]  # class index of each path
    classes: tuple[str, ...]  # folder names
    prompts: tuple[str, ...]
    templates: tuple[str, ...]


def load_labelled_folder(folder: str | Path, templates: str | Path | None = None) -> LabelledSet:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"labelled image folder {root} does not exist; pass a folder with one subfolder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise InputError(
            f"labelled image folder {root} has {len(classes)} class subfolders; zero-shot accuracy needs "
            "at least 2 (one subfolder per class, images inside)"
        )
    mapping = _class_prompts(root)
    unknown = sorted(set(mapping) - set(classes))
    if unknown:
        raise InputError(f"{root}'s class map names folders that do not exist ({', '.join(unknown[:3])}); fix it")
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise InputError(f"class folder {root / name} has no images; add some or remove the folder")
        paths += files
        labels += [index] * len(files)
    prompts = tuple(mapping.get(name, name.replace("_", " ").strip()) for name in classes)
    blank = [name for name, prompt in zip(classes, prompts) if not prompt]
    if blank:
        raise InputError(
            f"class folder '{blank[0]}' of {root} gives an empty prompt (underscores become spaces); "
            "rename it or map it to a text in classes.txt ('folder<TAB>prompt text')"
        )
    if len(set(prompts)) != len(prompts):
        raise InputError(f"two classes of {root} share a prompt text; make each class's text unique")
    return LabelledSet(root, tuple(paths), tuple(labels), tuple(classes), prompts, _templates(root, templates))


def _class_prompts(root: Path) -> dict[str, str]:
    if (root / "classes.json").is_file():
        try:
            data = json.loads((root / "classes.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{root / 'classes.json'} is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip() for v in data.values()):
            raise InputError(f"{root / 'classes.json'} must map folder names to non-empty prompt texts")
        return {str(k): v.strip() for k, v in data.items()}
    if (root / "classes.txt").is_file():
        out = {}
        for number, line in enumerate(read_lines(root / "classes.txt", "class map"), start=1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise InputError(f"{root / 'classes.txt'} line {number}: expected 'folder<TAB>prompt text'")
            name, prompt = line.split("\t", 1)
            if not name.strip() or not prompt.strip():
                raise InputError(
                    f"{root / 'classes.txt'} line {number}: the folder name and the prompt text must "
                    "both be non-empty ('folder<TAB>prompt text')"
                )
            out[name.strip()] = prompt.strip()
        return out
    return {}


def _templates(root: Path, templates: str | Path | None) -> tuple[str, ...]:
    path = Path(templates).expanduser() if templates else root / TEMPLATES_FILE
    if templates is None and not path.is_file():
        return DEFAULT_TEMPLATES
    lines = tuple(t.strip() for t in read_lines(path, "templates file") if t.strip())
    if not lines:
        raise InputError(f"templates file {path} has no templates; put one per line, each with exactly one {{}}")
    try:
        return check_templates(lines)
    except InputError as exc:
        raise InputError(f"templates file {path}: {exc}") from None


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Each template has exactly one `{}` placeholder for the label (CLIP's prompt format)."""
    if isinstance(templates, str):
        templates = (templates,)
    out = tuple(templates)
    for template in out:
        try:
            fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(template) if name is not None]
        except ValueError as exc:
            raise InputError(
                f"template {template!r} is not a valid format string ({exc}); use one {{}} for the label"
            ) from None
        if fields != [("", "")]:
            raise InputError(
                f"template {template!r} must contain exactly one {{}} where the label goes, e.g. 'a photo of a {{}}.'"
            )
    return out


def collect_labels(labels: str | None, label_list: Sequence[str], labels_file: Path | None) -> list[str]:
    """Class names from --labels (comma-separated), repeatable --label, and --labels-file, in that order."""
    names = [label.strip() for label in (labels or "").split(",") if label.strip()]
    names += [label.strip() for label in label_list]
    if labels_file is not None:
        names += [line.strip() for line in read_lines(labels_file, "labels file") if line.strip()]
    if not names:
        raise InputError("no labels given; pass --labels cat,dog, --label NAME (repeatable) or --labels-file FILE")
    return names
