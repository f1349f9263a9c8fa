"""ClipRuntime: an artifact folder in, embeddings and zero-shot probabilities out. No torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from clipexport.errors import InputError
from clipexport.manifest import Manifest, Tower, check_graph_files, read_manifest
from clipexport.runtime.backends import Backend
from clipexport.runtime.preprocess import ImageInput, ImagePreprocessor
from clipexport.runtime.text_length import trim
from clipexport.runtime.tokenizer import ClipTokenizer

DEFAULT_BATCH_SIZE = 32
DEFAULT_TEMPLATES = ("a photo of a {}.",)


class ClipRuntime:
    def __init__(self, artifact_dir: Path, manifest: Manifest, backends: dict[Tower, Backend],
                 tokenizer: ClipTokenizer | None, preprocessor: ImagePreprocessor):
        self.artifact_dir = artifact_dir
        self.manifest = manifest
        self._backends = backends
        self.tokenizer = tokenizer
        self.preprocessor = preprocessor
        self._label_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], np.ndarray] = {}

    @classmethod
    def load(cls, artifact_dir: str | os.PathLike, backend: str = "onnxruntime", precision: str | Mapping[str, str] = "fp32",
             providers: Sequence[str] | None = None, threads: int | None = None) -> "ClipRuntime":
        """Open both towers of an artifact folder; the files are checked against the manifest's sha256.

        `precision` picks the graph variant ("fp32", "fp16", "int8") for both towers, or per tower:
        {"vision": "int8", "text": "fp16"}.
        """
        root = Path(artifact_dir)
        manifest = read_manifest(root)
        if backend not in BACKENDS:
            raise InputError(f"unknown backend '{backend}' (available: {', '.join(BACKENDS)})")
        backends: dict[Tower, Backend] = {}
        for tower in Tower:
            chosen = precision if isinstance(precision, str) else precision.get(tower.value, "fp32")
            backends[tower] = open_backend(root, manifest, tower, chosen, backend, providers, threads)
        tokenizer = ClipTokenizer.from_manifest(manifest.tokenizer) if manifest.tokenizer.kind == "clip_bpe" else None
        return cls(root, manifest, backends, tokenizer, ImagePreprocessor(manifest.preprocess))

    def encode_image(self, images: ImageInput | Sequence[ImageInput], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        items = [images] if not isinstance(images, (list, tuple)) else list(images)
        vision = self._backends[Tower.VISION]
        out = [vision.run(self.preprocessor(items[i:i + batch_size])) for i in range(0, len(items), batch_size)]
        return self._finish(out)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed an already preprocessed float32 [N,3,H,W] batch."""
        return self._finish([self._backends[Tower.VISION].run(pixels)])

    def encode_text(self, texts: str | Sequence[str] | np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Texts, or token ids int64 [N, context_length] for tokenizers the runtime does not implement."""
        if isinstance(texts, np.ndarray):
            ids = texts.astype(np.int64, copy=False)
        else:
            if self.tokenizer is None:
                raise InputError(f"this model's tokenizer ({self.manifest.tokenizer.kind}) is not built into the runtime; pass token ids")
            ids = self.tokenizer([texts] if isinstance(texts, str) else list(texts))
        text = self._backends[Tower.TEXT]
        properties, eot = self.manifest.tower(Tower.TEXT).properties, self.manifest.tokenizer.eot_id
        # The fast path: each batch cut after its last end-of-text token (exact; see text_length.py).
        out = [text.run(trim(ids[i:i + batch_size], properties, eot)) for i in range(0, len(ids), batch_size)]
        return self._finish(out)

    def classify(self, images: ImageInput | Sequence[ImageInput], labels: Sequence[str],
                 templates: Sequence[str] | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Zero-shot probabilities [N, len(labels)] using the manifest's logit scale (and bias)."""
        if not labels:
            raise InputError("classify needs at least one label")
        label_embeds = self.label_embeddings(labels, templates)
        image_embeds = _unit(self.encode_image(images, batch_size))
        logits = self.manifest.logit_scale * image_embeds @ label_embeds.T
        if self.manifest.logit_bias is not None:  # SigLIP: independent sigmoids, not a softmax
            return 1.0 / (1.0 + np.exp(-(logits + self.manifest.logit_bias)))
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def label_embeddings(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
        """One unit vector per label: the mean of its template embeddings (CLIP's prompt ensembling), cached."""
        templates = tuple(templates or DEFAULT_TEMPLATES)
        key = (tuple(labels), templates)
        if key not in self._label_cache:
            prompts = [t.format(label) for label in labels for t in templates]
            embeds = _unit(self.encode_text(prompts)).reshape(len(labels), len(templates), -1).mean(axis=1)
            self._label_cache[key] = _unit(embeds)
        return self._label_cache[key]

    def _finish(self, chunks: list[np.ndarray]) -> np.ndarray:
        out = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros((0, self.manifest.embed_dim), np.float32)
        if not np.all(np.isfinite(out)):
            raise InputError("the model produced NaN/Inf embeddings; check the inputs and the graph precision")
        return out

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()

    def __enter__(self) -> "ClipRuntime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BACKENDS = ("onnxruntime", "tensorrt", "onnxruntime-trt")


def open_backend(root: Path, manifest: Manifest, tower: Tower, precision: str, backend: str,
                 providers: Sequence[str] | None = None, threads: int | None = None) -> Backend:
    """One tower's graph on one backend:
    - onnxruntime: the ONNX graph, TensorRT/CUDA providers when their libraries load, else CPU;
    - tensorrt: the engine built by `clipexport build` (engines/<tower>.<precision>.plan);
    - onnxruntime-trt: ONNX Runtime's TensorRT provider, caching its engines in engines/ort-trt/."""
    from clipexport.build.plan import ENGINES_DIR

    artifact = manifest.tower(tower)
    if backend == "tensorrt":
        from clipexport.runtime.backends.tensorrt import TensorRTBackend

        plan = root / ENGINES_DIR / f"{tower.value}.{precision}.plan"
        rebuild = f"clipexport build {root} --precision {precision} --towers {tower.value}"
        artifact.graph(precision)  # a clear error when the precision was never made
        return TensorRTBackend(plan, artifact, rebuild)
    from clipexport.runtime.backends.onnxruntime import OnnxRuntimeBackend, tensorrt_provider

    graph = check_graph_files(root, artifact.graph(precision))
    if backend == "onnxruntime-trt":
        providers = [tensorrt_provider(root / ENGINES_DIR / "ort-trt", precision), "CUDAExecutionProvider"]
    return OnnxRuntimeBackend(graph, artifact, providers=providers, threads=threads)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
