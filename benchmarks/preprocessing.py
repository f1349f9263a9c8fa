"""Tokenizer and image preprocessing throughput: clipexport's runtime vs open_clip, same inputs,
same run. Writes benchmarks/results/preprocessing.json.

    .venv/bin/python benchmarks/preprocessing.py
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPEATS = 5


def best_rate(fn, count: int) -> float:
    """Items per second, best of REPEATS (the least disturbed run)."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return count / min(times)


def hf_fast_tokenizer():
    """Hugging Face's Rust-backed CLIP tokenizer (transformers 5's CLIPTokenizer), built offline
    from the same OpenAI vocabulary."""
    from transformers import CLIPTokenizer

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from helpers import clip_vocab

    vocab, merges = clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    assert tokenizer.is_fast, "expected the Rust tokenizer"
    return tokenizer


def main() -> None:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from clipexport.files import write_json_atomic
    from clipexport.runtime import ClipTokenizer, ImagePreprocessor
    from clipexport.datasets import DEFAULT_CAPTIONS, synthetic_images

    rng = np.random.default_rng(0)
    words = "a photo of the big small red blue cat dog car house tree on in with at night".split()
    texts = [" ".join(rng.choice(words, rng.integers(3, 20))) for _ in range(2000)] + list(DEFAULT_CAPTIONS) * 10
    ours_tok, ref_tok = ClipTokenizer(), open_clip.get_tokenizer("ViT-B-32")
    # Fresh tokenizers each run would measure cold caches; both keep their BPE caches warm alike.
    hf_tok = hf_fast_tokenizer()
    tok = {
        "clipexport": best_rate(lambda: ours_tok(texts), len(texts)),
        "open_clip": best_rate(lambda: ref_tok(texts), len(texts)),
        # Rust tokenizer, batch call, padded to 77 like the others.
        "hf_fast": best_rate(
            lambda: hf_tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="np"), len(texts)
        ),
    }
    images = synthetic_images(48, seed=3)
    ours_pre, ref_pre = ImagePreprocessor(), image_transform_v2(PreprocessCfg(size=224), is_train=False)
    import torch

    pre = {
        "clipexport": best_rate(lambda: ours_pre(images), len(images)),
        "open_clip": best_rate(lambda: torch.stack([ref_pre(i) for i in images]), len(images)),
    }
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": sys.version.split()[0],
        },
        "tokenizer_texts_per_s": tok,
        "tokenizer_ratio": tok["clipexport"] / tok["open_clip"],
        "tokenizer_ratio_vs_hf_fast": tok["clipexport"] / tok["hf_fast"],
        "preprocess_images_per_s": pre,
        "preprocess_ratio": pre["clipexport"] / pre["open_clip"],
        "inputs": {"texts": len(texts), "images": len(images), "image_sizes": "mixed, 32x48 .. 1024x256"},
    }
    out = Path(__file__).parent / "results" / "preprocessing.json"
    write_json_atomic(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
