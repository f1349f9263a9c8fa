"""A retrieval set where the demo CLIP is not trivially perfect: scenes with their own captions.

Class-level retrieval on the demo model is 100% R@1 at every precision (48 class prompts), so it
shows no drift. Here every scene gets a caption that names all of its attributes — count, size,
colour, shape and position — in one of several phrasings, and caption -> image retrieval is
measured among all the scenes: many scenes differ only in size or position, which is where a
lossy precision starts to confuse them.

    DIR/<colour>_<shape>/<n>.png   the scenes, by class (image -> image: same class = relevant)
    DIR/captions.tsv               `<colour>_<shape>/<n>.png<TAB>caption`, one line per scene
    DIR/classes.txt                folder<TAB>class prompt

    python -m clipexport.demo.retrieval -o DIR [--scenes 2000] [--seed 1]

The shipped small set (`clipexport/data/demo/retrieval`, `verify --retrieval demo`) is
SHIPPED_SCENES scenes at SHIPPED_SEED; the larger ones are reproducible from their seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from clipexport.demo.shapes import CLASSES, COUNT_WORDS, PLURALS, SIZE_WORDS, Scene, random_scene, render

SHIPPED_SCENES = 500
SHIPPED_SEED = 7
BENCHMARK_SCENES = 2000  # benchmarks/retrieval.py's set
BENCHMARK_SEED = 1


def detailed_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption naming count, size, colour, shape and position, in one of several phrasings
    (every word is in the demo tokenizer's vocabulary)."""
    size = SIZE_WORDS[scene.size][rng.integers(len(SIZE_WORDS[scene.size]))]
    one = scene.count == 1
    noun = scene.shape if one else PLURALS.get(scene.shape, scene.shape + "s")
    count = ("a", "one")[rng.integers(2)] if one else COUNT_WORDS[scene.count]
    where = "in the middle" if scene.position == "center" else f"on the {scene.position}"
    verb = "is" if one else "are"
    options = [
        f"{count} {size} {scene.colour} {noun} {where}",
        f"a picture of {count} {size} {scene.colour} {noun} {where}",
        f"there {verb} {count} {size} {scene.colour} {noun} {where}",
        f"an image with {count} {size} {scene.colour} {noun} {where}",
        f"{count} {scene.colour} {noun} that {verb} {size} {where}",
        f"{where} {count} {size} {scene.colour} {noun}",
    ]
    text = options[rng.integers(len(options))]
    return text.replace("a orange", "an orange")


def write_retrieval_set(folder: Path, scenes: int, seed: int, size: int = 64) -> Path:
    """`scenes` scenes with captions (deterministic by seed) in the layout above."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    lines = []
    for _ in range(scenes):
        scene = random_scene(rng)
        name = scene.label.replace(" ", "_")
        number = counts.get(name, 0)
        counts[name] = number + 1
        (folder / name).mkdir(exist_ok=True)
        render(scene, size).save(folder / name / f"{number}.png", optimize=True)
        lines.append(f"{name}/{number}.png\t{detailed_caption(scene, rng)}")
    (folder / "captions.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    present = [label for label in CLASSES if label.replace(" ", "_") in counts]
    (folder / "classes.txt").write_text(
        "".join(f"{label.replace(' ', '_')}\t{label}\n" for label in present), encoding="utf-8"
    )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=BENCHMARK_SCENES)
    parser.add_argument("--seed", type=int, default=BENCHMARK_SEED)
    args = parser.parse_args()
    write_retrieval_set(args.output, args.scenes, args.seed)
    print(f"wrote {args.output}: {args.scenes} scenes (seed {args.seed})")


if __name__ == "__main__":
    main()
