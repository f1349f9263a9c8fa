"""What `--fast-decode` costs and buys, in one run on this machine. Writes
benchmarks/results/fast-decode.json.

    .venv/bin/python benchmarks/fast_decode.py [--photos-artifact DIR] [--photos 40]

(A) The demo scenes, made camera-like: the 500 shipped scenes upscaled to 1024x1024 JPEGs
(quality 90), embedded by the demo CLIP exactly and with --fast-decode; cosines between the two,
and `verify --retrieval`'s drift matrix with the two as variants (an index built from the exact
embeddings queried with fast-decoded images, and the reverse; caption -> image and image -> image
R@1/5/10, top-10 overlap with exact/exact).
(B) Generated 12 MP photos (bulk_embed.py's generator) through ViT-B-32 (random weights, from
--photos-artifact or exported here): decode + preprocess time per image, exact vs fast, in one
process, and the cosines of the embeddings.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from precision import machine, write_result

from bulk_embed import random_vit_b32

REPO = Path(__file__).resolve().parent.parent
SCENE_SIDE = 1024


def _embed(runtime, pre, paths: list[Path], fast: bool) -> tuple[np.ndarray, float]:
    """(unit embeddings, decode + preprocess seconds per image)."""
    from clipexport.vectors import l2_normalize

    rows, spent = [], 0.0
    for start in range(0, len(paths), 32):
        began = time.perf_counter()
        pixels = pre.normalize(np.stack([pre.pixels(str(p), fast_decode=fast) for p in paths[start : start + 32]]))
        spent += time.perf_counter() - began
        rows.append(runtime.encode_pixels(pixels))
    return l2_normalize(np.concatenate(rows).astype(np.float32), np.float32), spent / len(paths)


def _cosines(a: np.ndarray, b: np.ndarray) -> dict:
    cos = np.sum(a * b, axis=1)
    return {"min": float(cos.min()), "mean": float(cos.mean()), "p01": float(np.quantile(cos, 0.01))}


def _scenes(work: Path) -> Path:
    """The shipped demo scenes as 1024 px JPEGs, with the same class folders and captions.tsv."""
    from PIL import Image

    from clipexport.datasets import retrieval_set_dir

    source, target = retrieval_set_dir("demo"), work / "scenes-jpeg"
    if (target / "captions.tsv").is_file():
        return target
    for path in sorted(source.rglob("*.png")):
        out = (target / path.relative_to(source)).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.convert("RGB").resize((SCENE_SIDE, SCENE_SIDE), Image.LANCZOS).save(out, quality=90)
    captions = (source / "captions.tsv").read_text(encoding="utf-8").replace(".png\t", ".jpg\t")
    (target / "captions.tsv").write_text(captions, encoding="utf-8")
    return target


def scenes_part(work: Path) -> dict:
    from clipexport.artifact.precision import Precision
    from clipexport.datasets import load_retrieval_set
    from clipexport.vectors import l2_normalize
    from clipexport.runtime import ClipRuntime
    from clipexport.runtime.backends import BackendKind
    from clipexport.runtime.preprocess import ImagePreprocessor
    from clipexport.verify.retrieval import Embedded, Variant, drift_matrix

    demo = work / "demo"
    if not (demo / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "clipexport", "export", "demo", "-o", str(demo), "-q"], check=True)
    retrieval = load_retrieval_set(_scenes(work))
    pre = ImagePreprocessor.from_manifest(demo)
    with ClipRuntime.load(demo) as runtime:
        exact, exact_s = _embed(runtime, pre, list(retrieval.images), False)
        fast, fast_s = _embed(runtime, pre, list(retrieval.images), True)
        captions = l2_normalize(runtime.encode_text(list(retrieval.captions)).astype(np.float32), np.float32)
    variants = [
        Variant("exact", demo, Precision.FP32, BackendKind.ONNXRUNTIME),
        Variant("fast-decode", demo, Precision.FP32, BackendKind.ONNXRUNTIME),
    ]
    report = drift_matrix(retrieval, [Embedded(variants[0], exact, captions), Embedded(variants[1], fast, captions)])
    print(report.table(), flush=True)
    return {
        "images": len(retrieval.images),
        "captions": len(retrieval.captions),
        "side": SCENE_SIDE,
        "cosine_fast_vs_exact": _cosines(exact, fast),
        "decode_ms_per_image": {"exact": 1e3 * exact_s, "fast": 1e3 * fast_s},
        "retrieval": report.to_dict(),
    }


def photos_part(work: Path, artifact: Path | None, count: int) -> dict:
    from bulk_embed import _photos

    from clipexport.runtime import ClipRuntime
    from clipexport.runtime.preprocess import ImagePreprocessor

    if artifact is None:
        artifact = work / "vit-b-32"
        random_vit_b32(artifact)
    photos = _photos(work / "photos-12mp", count, (4000, 3000), 2)
    pre = ImagePreprocessor.from_manifest(artifact)
    pre.pixels(str(photos[0]))  # warm up the decoder
    with ClipRuntime.load(artifact, towers=("vision",)) as runtime:
        exact, exact_s = _embed(runtime, pre, photos, False)
        fast, fast_s = _embed(runtime, pre, photos, True)
    return {
        "photos": len(photos),
        "size": "4000x3000 JPEG q90",
        "model": "ViT-B-32 (random weights)",
        "decode_ms_per_image": {"exact": 1e3 * exact_s, "fast": 1e3 * fast_s},
        "decode_speedup": exact_s / fast_s,
        "cosine_fast_vs_exact": _cosines(exact, fast),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipexport-fast-decode")
    parser.add_argument("--photos-artifact", type=Path, default=None)
    parser.add_argument("--photos", type=int, default=40)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "scenes": scenes_part(args.work)}
    print("scenes", {k: v for k, v in result["scenes"].items() if k != "retrieval"}, flush=True)
    result["photos"] = photos_part(args.work, args.photos_artifact, args.photos)
    print("photos", result["photos"], flush=True)
    print(write_result("fast-decode", result))


if __name__ == "__main__":
    main()
