"""ClipRuntime: an artifact folder in, embeddings and zero-shot probabilities out. No torch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from clipexport.artifact.manifest import Manifest, Tower, read_manifest
from clipexport.artifact.precision import Precision
from clipexport.datasets import check_templates
from clipexport.errors import InputError
from clipexport.parity.stats import class_embeddings
from clipexport.vectors import l2_normalize
from clipexport.runtime.backends import BackendKind, BackendOptions, Runner, open_backend
from clipexport.runtime.preprocess import ImageInput, ImagePreprocessor, SkippedImage
from clipexport.runtime.text_length import trim
from clipexport.runtime.hf_tokenizer import load_tokenizer

DEFAULT_BATCH_SIZE = 32
DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass(frozen=True)
class ImageEmbeddings:
    """Embeddings of the images that could be read, with the input index of every row, and what was skipped."""

    embeddings: np.ndarray  # float32 [kept, D]
    indices: np.ndarray  # int64 [kept]: row i embeds input indices[i]
    skipped: list[SkippedImage] = field(default_factory=list)


class ClipRuntime:
    def __init__(
        self,
        artifact_dir: Path,
        manifest: Manifest,
        backends: dict[Tower, Runner],
        tokenizer: Callable[[Sequence[str]], np.ndarray] | None,
        preprocessor: ImagePreprocessor,
    ):
        self.artifact_dir = artifact_dir
        self.manifest = manifest
        self._backends = backends
        self.tokenizer = tokenizer
        self.preprocessor = preprocessor
        self._label_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], np.ndarray] = {}

    @classmethod
    def load(
        cls,
        artifact_dir: str | os.PathLike,
        backend: BackendKind | str = BackendKind.ONNXRUNTIME,
        precision: Precision | str | Mapping[str, Precision | str] = Precision.FP32,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        exif_transpose: bool = False,
        towers: Sequence[Tower | str] | None = None,
        spin: bool = True,
        device: str | None = None,
    ) -> "ClipRuntime":
        """Open both towers of an artifact folder; the files are checked against the manifest's sha256.

        `precision` picks the graph variant ("fp32", "fp16", "int8") for both towers, or per tower:
        {"vision": "int8", "text": "fp16"} (a tower left out runs fp32). `backend` is one of
        `BackendKind`; a backend that cannot run here fails with one line, never falls back quietly.
        `exif_transpose` rotates photos by their EXIF orientation first (open_clip does not).
        `towers` opens only those (a server's image model needs no text tower); the others refuse.
        `device` is for backends that take one (openvino: "CPU", "GPU", "NPU", "AUTO").
        `spin=False` makes idle backend threads sleep instead of spinning (when other processes, such
        as decode workers, share the cores).
        """
        if not isinstance(artifact_dir, (str, os.PathLike)):
            raise InputError(f"artifact_dir must be a path to an artifact folder, got {type(artifact_dir).__name__}")
        root = Path(artifact_dir)
        manifest = read_manifest(root)
        kind = BackendKind.parse(backend)
        chosen = per_tower_precision(precision)
        wanted = [Tower(t) for t in towers] if towers is not None else list(Tower)
        backends: dict[Tower, Runner] = {}
        try:  # a tower or the tokenizer failing to open closes what did open
            for tower in wanted:
                backends[tower] = open_backend(
                    root,
                    manifest,
                    tower,
                    chosen[tower],
                    kind,
                    BackendOptions(providers=providers, threads=threads, spin=spin, device=device),
                )
            tokenizer = load_tokenizer(root, manifest.tokenizer) if Tower.TEXT in wanted else None
        except BaseException:
            for runner in backends.values():
                runner.close()
            raise
        return cls(
            root, manifest, backends, tokenizer, ImagePreprocessor(manifest.preprocess, exif_transpose=exif_transpose)
        )

    def ran_on(self, tower: Tower | str) -> str:
        """What actually runs `tower` (backend and providers/engine)."""
        return self._runner(Tower(tower)).ran_on

    def _runner(self, tower: Tower) -> Runner:
        if tower not in self._backends:
            raise InputError(
                f"this runtime was loaded without the {tower.value} tower (ClipRuntime.load(..., towers=...))"
            )
        return self._backends[tower]

    def encode_image(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        if images is None:
            raise InputError("images is None; pass a path, bytes, a PIL image, an array, or a list of them")
        items = [images] if not isinstance(images, (list, tuple)) else list(images)
        _check_batch_size(batch_size)
        vision = self._runner(Tower.VISION)
        return self._stack(
            [vision.run(self.preprocessor(items[i : i + batch_size])) for i in range(0, len(items), batch_size)]
        )

    def embed_images(
        self,
        images: Sequence[ImageInput],
        batch_size: int = DEFAULT_BATCH_SIZE,
        skip_bad: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> ImageEmbeddings:
        """Embed many images in batches; with `skip_bad`, unreadable ones are left out and listed,
        and `indices` says which input each row belongs to. `progress(n)` after every batch."""
        _check_batch_size(batch_size)
        chunks, indices, skipped = [], [], []
        for start in range(0, len(images), batch_size):
            part = list(images[start : start + batch_size])
            batch, bad = self.preprocessor.process(part, on_error="skip" if skip_bad else "raise")
            bad = [SkippedImage(start + s.index, s.name, s.reason) for s in bad]
            skipped += bad
            missing = {s.index for s in bad}
            indices += [start + i for i in range(len(part)) if start + i not in missing]
            if len(batch):
                chunks.append(self._runner(Tower.VISION).run(batch))
            if progress:
                progress(len(part))
        return ImageEmbeddings(self._stack(chunks), np.asarray(indices, np.int64), skipped)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed an already preprocessed float32 [N,3,H,W] batch."""
        return self._stack([self._runner(Tower.VISION).run(pixels)])

    def encode_text(
        self,
        texts: str | Sequence[str] | np.ndarray,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Callable[[int], None] | None = None,
        names: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Texts, or token ids int64 [N, <= context_length] for tokenizers the runtime does not implement.
        `names` (a file:line per text) is what an error names instead of `text #i`."""
        _check_batch_size(batch_size)
        text = self._runner(Tower.TEXT)
        if isinstance(texts, np.ndarray):
            ids = text.check_ids(texts)  # dtype, vocabulary range and length, before the fast path cuts it
        else:
            if self.tokenizer is None:
                raise InputError(
                    f"this artifact has no runtime tokenizer ({self.manifest.tokenizer.kind}); pass token ids, "
                    "or re-export with a tokenizer that has a tokenizer.json"
                )
            ids = self.tokenizer(texts, names)
        properties, tokenizer = self.manifest.tower(Tower.TEXT).properties, self.manifest.tokenizer
        out = []
        for i in range(0, len(ids), batch_size):
            # The fast path: each batch cut after its last end-of-text token (exact; see text_length.py).
            out.append(text.run(trim(ids[i : i + batch_size], properties, tokenizer)))
            if progress:
                progress(len(ids[i : i + batch_size]))
        return self._stack(out)

    def classify(
        self,
        images: ImageInput | Sequence[ImageInput],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> np.ndarray:
        """Zero-shot probabilities [N, len(labels)] using the manifest's logit scale (and bias)."""
        label_embeds = self.label_embeddings(labels, templates)
        image_embeds = l2_normalize(self.encode_image(images, batch_size))
        logits = self.manifest.logit_scale * image_embeds @ label_embeds.T
        if self.manifest.logit_bias is not None:  # SigLIP: independent sigmoids, not a softmax
            return 1.0 / (1.0 + np.exp(-(logits + self.manifest.logit_bias)))
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def label_embeddings(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
        """One unit vector per label: the mean of its template embeddings (CLIP's prompt ensembling), cached."""
        labels = check_labels(labels)
        templates = check_templates(templates or DEFAULT_TEMPLATES)
        key = (labels, templates)
        if key not in self._label_cache:
            prompts = [t.format(label) for label in labels for t in templates]
            self._label_cache[key] = class_embeddings(self.encode_text(prompts), len(templates), np.float32)
        return self._label_cache[key]

    def _stack(self, chunks: list[np.ndarray]) -> np.ndarray:
        chunks = [c for c in chunks if len(c)]
        return (
            np.concatenate(chunks).astype(np.float32, copy=False)
            if chunks
            else np.zeros((0, self.manifest.embed_dim), np.float32)
        )

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._label_cache.clear()

    def __enter__(self) -> "ClipRuntime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def per_tower_precision(precision: Precision | str | Mapping[str, Precision | str]) -> dict[Tower, Precision]:
    """One precision for both towers, or a {tower: precision} mapping whose keys must be tower names."""
    if isinstance(precision, (str, Precision)):
        return {tower: Precision.parse(precision) for tower in Tower}
    if not isinstance(precision, Mapping):
        raise InputError(f"precision must be a name or a {{tower: precision}} mapping, got {type(precision).__name__}")
    unknown = [k for k in precision if k not in {t.value for t in Tower}]
    if unknown:
        raise InputError(f"precision names unknown tower(s) {', '.join(map(repr, unknown))} (towers: vision, text)")
    return {tower: Precision.parse(precision.get(tower.value, Precision.FP32)) for tower in Tower}


def check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    if isinstance(labels, str):
        raise InputError(
            f"labels must be a list of class names, not one string ({labels!r}); pass [{labels!r}] for a single label"
        )
    out = tuple(labels)
    if not out:
        raise InputError("classify needs at least one label")
    bad = [label for label in out if not isinstance(label, str) or not label.strip()]
    if bad:
        raise InputError(f"labels must be non-empty strings, got {bad[0]!r}")
    duplicates = sorted({label for label in out if out.count(label) > 1})
    if duplicates:
        raise InputError(f"duplicate label(s) {', '.join(map(repr, duplicates))}: each class must appear once")
    return out


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
