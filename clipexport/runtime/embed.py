"""Batch embedding to a file, as `clipexport embed` does it: rows line up with inputs (an index
file names the input of every row), unreadable images are skipped only when asked and listed,
and an empty result is an error, not an empty file."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from clipexport.artifact.layout import model_prefix
from clipexport.artifact.precision import Precision
from clipexport.datasets import image_paths, read_lines
from clipexport.errors import InputError
from clipexport.files import write_bytes_atomic
from clipexport.runtime.backends import BackendKind
from clipexport.runtime.preprocess import SkippedImage

Advance = Callable[[int, int], None]  # (inputs done in this step, total inputs)


@dataclass(frozen=True)
class EmbedRequest:
    artifact: Path
    output: Path
    images: Sequence[str] = ()
    texts: Path | None = None
    precision: Precision | str = Precision.FP32
    backend: BackendKind | str = BackendKind.ONNXRUNTIME
    batch_size: int = 32
    skip_bad: bool = False
    exif_transpose: bool = False
    server: str | None = None  # a Triton server URL: embed there (ClipClient) instead of in this process
    model: str | None = None  # the served model's name prefix (default: the artifact folder's name)


@dataclass(frozen=True)
class EmbedResult:
    output: Path
    index: Path
    rows: int
    dim: int
    skipped: list[SkippedImage]


def index_path(output: Path) -> Path:
    """OUTPUT.index.txt beside the embeddings: line i names the input of row i."""
    return output.with_name(f"{output.stem}.index.txt")


def embed_to_file(request: EmbedRequest, advance: Advance | None = None) -> EmbedResult:
    from clipexport.runtime.clip_runtime import ClipRuntime

    if bool(request.images) == bool(request.texts):
        raise InputError("pass either --images or --texts (one kind per output file)")
    output = Path(request.output).expanduser()
    if output.is_dir():
        raise InputError(f"--output {output} is a folder; pass a file name such as {output / 'embeddings.npy'}")
    if request.texts:
        texts = read_lines(request.texts)
        if not texts:
            raise InputError(f"text file {request.texts} is empty; put one text per line")
        sources = [f"{request.texts}:{line}" for line in range(1, len(texts) + 1)]
    else:
        paths = image_paths(request.images)
        if not paths:
            raise InputError("no images given; pass image files or folders with --images")
    if request.server:
        embeddings, sources, skipped = _embed_on_server(request, texts if request.texts else None,
                                                        None if request.texts else paths, advance)
        return _write(output, embeddings, sources, skipped)
    with ClipRuntime.load(request.artifact, backend=request.backend, precision=request.precision,
                          exif_transpose=request.exif_transpose) as runtime:
        if request.texts:
            total = len(texts)
            embeddings = runtime.encode_text(texts, request.batch_size, progress=lambda n: advance and advance(n, total),
                                             names=sources)
            skipped: list[SkippedImage] = []
        else:
            total = len(paths)
            result = runtime.embed_images(paths, request.batch_size, request.skip_bad,
                                          progress=lambda n: advance and advance(n, total))
            embeddings, skipped = result.embeddings, result.skipped
            sources = [str(paths[i]) for i in result.indices]
    return _write(output, embeddings, sources, skipped)


def _embed_on_server(request: EmbedRequest, texts: list[str] | None, paths: list[Path] | None,
                     advance: Advance | None) -> tuple[np.ndarray, list[str], list[SkippedImage]]:
    """The same rows from a Triton server; errors name the file:line or path. With skip_bad, a
    refused batch is retried item by item so only the images the server cannot read are left out
    (and listed); a server that is down or fails is never 'skipped'."""
    from clipexport.client import ClipClient, RequestRefused

    model = model_prefix(request.model, explicit=True) if request.model else model_prefix(Path(request.artifact).resolve().name)
    skipped: list[SkippedImage] = []
    with ClipClient(request.server, model=model) as client:
        if texts is not None:
            names = [f"{request.texts}:{line}" for line in range(1, len(texts) + 1)]
            chunks = []
            for start in range(0, len(texts), request.batch_size):
                part = slice(start, start + request.batch_size)
                chunks.append(client.encode_text(texts[part], request.batch_size, names=names[part]))
                if advance:
                    advance(len(chunks[-1]), len(texts))
            return np.concatenate(chunks), names, skipped
        assert paths is not None
        rows, sources = [], []
        for start in range(0, len(paths), request.batch_size):
            part = paths[start:start + request.batch_size]
            try:
                rows.append(client.encode_image(part, request.batch_size))
                sources += [str(p) for p in part]
            except RequestRefused:
                if not request.skip_bad:
                    raise
                for offset, path in enumerate(part):
                    try:
                        rows.append(client.encode_image([path]))
                        sources.append(str(path))
                    except RequestRefused as exc:
                        skipped.append(SkippedImage(start + offset, str(path), str(exc)))
            if advance:
                advance(len(part), len(paths))
        return (np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)), sources, skipped


def _write(output: Path, embeddings: np.ndarray, sources: list[str], skipped: list[SkippedImage]) -> EmbedResult:
    if not len(embeddings):
        raise InputError(f"no input could be embedded ({len(skipped)} skipped); nothing was written")
    buffer = io.BytesIO()
    np.save(buffer, embeddings)
    index = index_path(output)
    write_bytes_atomic(index, ("\n".join(sources) + "\n").encode("utf-8"))
    write_bytes_atomic(output, buffer.getvalue())
    return EmbedResult(output, index, int(embeddings.shape[0]), int(embeddings.shape[1]), skipped)


def collect_labels(labels: str | None, label_list: Sequence[str], labels_file: Path | None) -> list[str]:
    """Class names from --labels (comma-separated), repeatable --label, and --labels-file, in that order."""
    names = [label.strip() for label in (labels or "").split(",") if label.strip()]
    names += [label.strip() for label in label_list]
    if labels_file is not None:
        names += [line.strip() for line in read_lines(labels_file, "labels file") if line.strip()]
    if not names:
        raise InputError("no labels given; pass --labels cat,dog, --label NAME (repeatable) or --labels-file FILE")
    return names
