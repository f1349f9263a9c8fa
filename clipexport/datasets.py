"""Every data set the tool reads: the default calibration set and its held-out photos (package
data), the verification set (seeded synthetic images, built-in captions), and the user's own
image folders and caption files.

The verification set is deliberately unlike the export's tracing inputs (random tensors, two
short captions): parity is measured on inputs the graph was not traced with, at other batch sizes.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from clipexport._deps import require
from clipexport.errors import InputError

# The default calibration set ships inside the package (clipexport/data/calibration, see its
# README); CLIPEXPORT_CALIBRATION_DIR points at a folder of your own with images/ and captions.txt.
CALIBRATION_DIR_ENV = "CLIPEXPORT_CALIBRATION_DIR"
_PACKAGED_CALIBRATION_DIR = Path(__file__).resolve().parent / "data" / "calibration"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_NUM_IMAGES = 24
DEFAULT_SEED = 1234

# Varied on purpose: empty, one word, long enough to be truncated at the context length,
# punctuation, numbers, non-ASCII, HTML entities, whitespace runs.
DEFAULT_CAPTIONS = (
    "a photo of a cat",
    "a photo of a dog",
    "a diagram of a neural network",
    "",
    "   ",
    "red",
    "A RED DOUBLE-DECKER BUS DRIVING DOWN A RAINY LONDON STREET AT NIGHT",
    "two people riding bicycles along a beach at sunset, with surfers in the water behind them",
    "a bowl of ramen with a soft-boiled egg, nori, scallions and sliced pork on a wooden table",
    "an aerial photograph of farmland: green, yellow & brown fields divided by hedgerows",
    "the number 42 painted on a white door",
    "it's a close-up of a hummingbird's wings mid-flight!!!",
    "café au lait in a ceramic mug, naïve watercolour style",
    "東京の夜景",
    "a 🐶 wearing sunglasses 😎",
    "&quot;vintage&quot; poster &amp;amp; typography",
    "a screenshot of a spreadsheet with\tcolumns and\nrows",
    "x-ray of a human hand",
    " ".join(["a very long caption that keeps describing the same scene over and over"] * 12),
    "a blurry photo of a mountain lake reflecting snow-capped peaks under a clear blue sky",
)


def default_calibration_dir() -> Path:
    configured = os.environ.get(CALIBRATION_DIR_ENV)
    root = Path(configured).expanduser() if configured else _PACKAGED_CALIBRATION_DIR
    if not (root / "images").is_dir() or not (root / "captions.txt").is_file():
        raise InputError(
            f"the default calibration set was not found at {root}; pass --calibration-images DIR and "
            f"--calibration-texts FILE, or set {CALIBRATION_DIR_ENV} to a folder with images/ and captions.txt"
        )
    return root


def heldout_image_dir() -> Path | None:
    """The held-out photos beside the default set (never calibrated on), if this install has them."""
    try:
        folder = default_calibration_dir() / "heldout"
    except InputError:
        return None
    return folder if folder.is_dir() else None


def synthetic_images(count: int = DEFAULT_NUM_IMAGES, seed: int = DEFAULT_SEED) -> list[Any]:
    """Deterministic PIL images: varied sizes, aspect ratios, modes, shapes, gradients and noise."""
    Image = require("PIL.Image", "making verification images")
    ImageDraw = require("PIL.ImageDraw", "making verification images")
    rng = np.random.default_rng(seed)
    sizes = [(224, 224), (640, 480), (300, 500), (97, 131), (1024, 256), (32, 48), (800, 800), (256, 1024)]
    images = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack(
            [
                (xx / max(width - 1, 1)) * rng.uniform(0, 255),
                (yy / max(height - 1, 1)) * rng.uniform(0, 255),
                np.full_like(xx, rng.uniform(0, 255)),
            ],
            axis=-1,
        )
        base += rng.normal(0, rng.uniform(0, 40), size=base.shape)
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 6))):
            x0, x1 = sorted(rng.integers(0, width, 2).tolist())
            y0, y1 = sorted(rng.integers(0, height, 2).tolist())
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        if index % 5 == 4:
            image = image.convert("L")  # grayscale inputs go through the RGB conversion path
        images.append(image)
    return images


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
        return Path(__file__).resolve().parent / "data" / "demo" / "retrieval"
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
