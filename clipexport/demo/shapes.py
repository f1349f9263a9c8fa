"""Procedural image-caption pairs: shapes x colours x sizes x positions x counts on textured
backgrounds (PIL + numpy only, deterministic by seed). The 48 classes are shape x colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring")
COLOURS = {  # name -> RGB centre; each drawing jitters it a little
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
}
CLASSES = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)
SIZES = {"small": 0.16, "medium": 0.24, "large": 0.34}  # radius as a fraction of the image side
SIZE_WORDS = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium", "medium-sized"),
    "large": ("large", "big", "huge"),
}
POSITIONS = {"center": (0.5, 0.5), "left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73)}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
PLURALS = {"cross": "crosses"}
# CLIP's prompt-ensembling recipe: class embedding = normalised mean over these templates.
ZERO_SHOT_TEMPLATES = (
    "a {}.",
    "a photo of a {}.",
    "a drawing of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a {} on a textured background.",
    "there is a {} in the picture.",
)
RENDER_SCALE = 2  # drawn at 2x and downsampled: smooth edges


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    count: int
    background: int  # texture kind
    seed: int

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"


def random_scene(rng: np.random.Generator, label: str | None = None) -> Scene:
    colour, shape = label.split(" ", 1) if label else (None, None)
    return Scene(
        shape=shape or SHAPES[rng.integers(len(SHAPES))],
        colour=colour or list(COLOURS)[rng.integers(len(COLOURS))],
        size=list(SIZES)[rng.integers(len(SIZES))],
        position=list(POSITIONS)[rng.integers(len(POSITIONS))],
        count=int(rng.choice([1, 1, 1, 2, 3])),
        background=int(rng.integers(4)),
        seed=int(rng.integers(2**31)),
    )


def render(scene: Scene, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(scene.seed)
    big = size * RENDER_SCALE
    image = _background(rng, big, scene.background)
    draw = ImageDraw.Draw(image)
    radius = SIZES[scene.size] * big * (0.75 if scene.count > 1 else 1.0)
    cx, cy = POSITIONS[scene.position]
    centres = _centres(rng, scene.count, cx * big, cy * big, radius, big)
    for x, y in centres:
        colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in COLOURS[scene.colour])
        _draw(draw, scene.shape, x, y, radius * rng.uniform(0.9, 1.1), float(rng.uniform(0, 2 * math.pi)), colour)
    return image.resize((size, size), Image.LANCZOS)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One of many phrasings: synonyms, optional attributes, varied word order."""
    size = SIZE_WORDS[scene.size][rng.integers(len(SIZE_WORDS[scene.size]))]
    noun = scene.shape if scene.count == 1 else PLURALS.get(scene.shape, scene.shape + "s")
    where = f"on the {scene.position}" if scene.position != "center" else "in the middle"
    count = COUNT_WORDS[scene.count]
    one = scene.count == 1
    options = [
        f"{'a' if one else count} {scene.colour} {noun}",
        f"{'a' if one else count} {size} {scene.colour} {noun}",
        f"{'a' if one else count} {scene.colour} {noun} {where}",
        f"a picture of {'a' if one else count} {scene.colour} {noun}",
        f"a drawing of {'a' if one else count} {size} {scene.colour} {noun} {where}",
        f"{'a' if one else count} {noun} that {'is' if one else 'are'} {scene.colour}",
        f"{scene.colour} {noun} {where}",
        f"an image with {count} {scene.colour} {noun}",
        f"{'the' if one else count} {noun} {'is' if one else 'are'} {scene.colour} and {size}",
    ]
    text = options[rng.integers(len(options))]
    return text.replace("a orange", "an orange")


def pairs(count: int, seed: int, size: int = 64) -> tuple[list[Image.Image], list[str], list[str]]:
    """`count` (image, caption, label) samples."""
    rng = np.random.default_rng(seed)
    images, captions, labels = [], [], []
    for _ in range(count):
        scene = random_scene(rng)
        images.append(render(scene, size))
        captions.append(caption(scene, rng))
        labels.append(scene.label)
    return images, captions, labels


def write_labelled_folder(folder: Path, per_class: int, seed: int, size: int = 64) -> None:
    """An ImageFolder of held-out scenes: folder/<colour>_<shape>/<n>.png, plus classes.txt
    mapping each folder to its prompt text ("red circle")."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for label in CLASSES:
        name = label.replace(" ", "_")
        lines.append(f"{name}\t{label}")
        (folder / name).mkdir(exist_ok=True)
        for n in range(per_class):
            render(random_scene(rng, label), size).save(folder / name / f"{n}.png", optimize=True)
    (folder / "classes.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _background(rng: np.random.Generator, size: int, kind: int) -> Image.Image:
    base = rng.integers(90, 200, 3)
    tint = base * rng.uniform(0.7, 1.0, 3)
    y, x = np.mgrid[0:size, 0:size] / size
    if kind == 0:  # noise
        field = rng.normal(0, 1, (size // 8, size // 8))
        field = (
            np.asarray(
                Image.fromarray(((field - field.min()) / (np.ptp(field) + 1e-9) * 255).astype(np.uint8)).resize(
                    (size, size), Image.BICUBIC
                )
            )
            / 255
        )
    elif kind == 1:  # stripes
        angle = rng.uniform(0, math.pi)
        field = 0.5 + 0.5 * np.sin((x * math.cos(angle) + y * math.sin(angle)) * rng.uniform(8, 30))
    elif kind == 2:  # gradient
        field = x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1)
        field = (field - field.min()) / (np.ptp(field) + 1e-9)
    else:  # checks
        cells = int(rng.integers(4, 12))
        field = ((np.floor(x * cells) + np.floor(y * cells)) % 2).astype(float)
    # Muted: low contrast greys/browns, so the shape's colour is the salient one.
    pixels = tint[None, None, :] * (0.75 + 0.25 * field[..., None])
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image.filter(ImageFilter.GaussianBlur(0.5))


def _centres(
    rng: np.random.Generator, count: int, cx: float, cy: float, radius: float, big: int
) -> list[tuple[float, float]]:
    if count == 1:
        return [(cx + rng.uniform(-0.05, 0.05) * big, cy + rng.uniform(-0.05, 0.05) * big)]
    angle = rng.uniform(0, 2 * math.pi)
    spread = radius * 1.25
    out = []
    for k in range(count):
        a = angle + 2 * math.pi * k / count
        x = float(np.clip(cx + spread * math.cos(a), radius, big - radius))
        y = float(np.clip(cy + spread * math.sin(a), radius, big - radius))
        out.append((x, y))
    return out


def _polygon(x: float, y: float, r: float, sides: int, rotation: float) -> list[tuple[float, float]]:
    return [
        (x + r * math.cos(rotation + 2 * math.pi * k / sides), y + r * math.sin(rotation + 2 * math.pi * k / sides))
        for k in range(sides)
    ]


def _draw(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, rotation: float, colour: tuple) -> None:
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif shape == "ring":
        draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=max(2, int(r * 0.35)))
    elif shape == "square":
        draw.polygon(_polygon(x, y, r * 1.15, 4, rotation * 0.2 + math.pi / 4), fill=colour)
    elif shape == "diamond":
        draw.polygon([(x, y - r * 1.2), (x + r * 0.75, y), (x, y + r * 1.2), (x - r * 0.75, y)], fill=colour)
    elif shape == "triangle":
        draw.polygon(_polygon(x, y, r * 1.15, 3, -math.pi / 2 + rotation * 0.15), fill=colour)
    elif shape == "hexagon":
        draw.polygon(_polygon(x, y, r * 1.05, 6, rotation), fill=colour)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r * 1.2 if k % 2 == 0 else r * 0.5
            a = rotation + math.pi * k / 5
            points.append((x + radius * math.cos(a), y + radius * math.sin(a)))
        draw.polygon(points, fill=colour)
    elif shape == "cross":
        w = r * 0.38
        draw.rectangle((x - r, y - w, x + r, y + w), fill=colour)
        draw.rectangle((x - w, y - r, x + w, y + r), fill=colour)
    else:
        raise ValueError(shape)


def vocabulary() -> list[str]:
    """Every word the captions and the zero-shot prompts use (lowercase), sorted: the demo
    tokenizer's word list."""
    words = set(SHAPES) | set(COLOURS) | set(PLURALS.values()) | {s + "s" for s in SHAPES} | set(COUNT_WORDS.values())
    words |= {w for ws in SIZE_WORDS.values() for w in ws} | set(POSITIONS)
    words |= set(
        "a an the of on in with that is are and picture drawing photo image middle there textured background "
        "medium sized".split()
    )
    pieces = set()
    for word in words:
        pieces |= set(word.replace("-", " ").split())
    for template in ZERO_SHOT_TEMPLATES:
        pieces |= set(template.replace("{}", " ").replace(".", " ").split())
    return sorted(pieces) + ["-", "."]


EXAMPLES = ("red circle", "blue star", "green triangle", "yellow square", "purple hexagon", "orange cross")


def write_examples(folder: Path, size: int = 64) -> list[Path]:
    """The README's example images (examples/red-circle.png, ...): one medium shape in the middle."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index, label in enumerate(EXAMPLES):
        colour, shape = label.split(" ")
        scene = Scene(
            shape=shape,
            colour=colour,
            size="medium",
            position="center",
            count=1,
            background=index % 4,
            seed=1000 + index,
        )
        path = folder / f"{label.replace(' ', '-')}.png"
        render(scene, size).save(path, optimize=True)
        out.append(path)
    return out
