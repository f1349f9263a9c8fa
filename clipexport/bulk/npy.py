"""`embed -o FILE.npy`: every row in one .npy, as `clipexport embed` always wrote it: rows line up
with inputs (an index file names the input of every row), unreadable images are skipped only
when asked and listed, and an empty result is an error, not an empty file. Through the same
pipelined engine as the sharded dataset, or through a Triton server (`--server`)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from clipexport.artifact.precision import Precision
from clipexport.progress import Advance
from clipexport.errors import InputError
from clipexport.files import write_bytes_atomic
from clipexport.inputs import served_name
from clipexport.runtime.backends import BackendKind
from clipexport.bulk.dataset import Skipped, warning_lines

if TYPE_CHECKING:
    from clipexport.bulk.input_list import InputList, InputSpec


@dataclass(frozen=True)
class EmbedRequest:
    artifact: Path
    output: Path
    inputs: "InputSpec | None" = None  # where the inputs come from (clipexport.bulk.input_list)
    images: Sequence[str] = ()  # shorthand for InputSpec(images=...)
    texts: Path | None = None  # shorthand for InputSpec(texts=...)
    precision: Precision = Precision.FP32
    backend: BackendKind = BackendKind.ONNXRUNTIME
    batch_size: int = 32
    skip_bad: bool = False
    exif_transpose: bool = False
    server: str | None = None  # a Triton server URL: embed there (ClipClient) instead of in this process
    model: str | None = None  # the served model's name prefix (default: the artifact folder's name)
    workers: int | None = None  # decode processes (the pipelined engine); default: the cores the backend leaves free
    threads: int | None = None  # the backend's intra-op threads
    device: str | None = None  # backends that take one (openvino)
    fast_decode: bool = False  # JPEGs at a reduced DCT scale, then the exact resize (not bit-exact)

    def __post_init__(self) -> None:  # Python callers may pass names: parsed here, once
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        object.__setattr__(self, "backend", BackendKind.parse(self.backend))

    def spec(self) -> "InputSpec":
        from clipexport.bulk.input_list import InputSpec

        return self.inputs if self.inputs is not None else InputSpec(images=self.images, texts=self.texts)


@dataclass(frozen=True)
class EmbedResult:
    output: Path
    index: Path
    rows: int
    dim: int
    skipped: list[Skipped]
    notes: tuple[str, ...] = ()

    def summary(self) -> list[str]:
        """What the command prints on stdout."""
        return [f"wrote {self.output}: {self.rows} x {self.dim} float32 (row sources: {self.index})"]

    def warnings(self) -> list[str]:
        """What the command prints on stderr: each input left out, and what the input list said."""
        return warning_lines(self.skipped, self.notes)

    def to_json(self) -> dict[str, Any]:
        """What `embed --json` prints: one object."""
        return {
            "output": str(self.output),
            "index": str(self.index),
            "rows": self.rows,
            "dim": self.dim,
            "skipped": [{"id": s.id, "reason": s.reason} for s in self.skipped],
            "notes": list(self.notes),
        }


def index_path(output: Path) -> Path:
    """OUTPUT.index.txt beside the embeddings: line i names the input of row i."""
    return output.with_name(f"{output.stem}.index.txt")


def embed_to_file(request: EmbedRequest, advance: Advance | None = None) -> EmbedResult:
    """One .npy of every row (and its index file), through the same pipelined engine as the sharded
    dataset (decode workers ahead of the backend), or through a Triton server."""
    from clipexport.bulk.local import EngineSettings, run_local
    from clipexport.bulk.input_list import list_inputs

    output = Path(request.output).expanduser()
    if output.is_dir():
        raise InputError(
            f"--output {output} is a folder; pass a file name such as {output / 'embeddings.npy'}, "
            "or a new folder for the sharded dataset"
        )
    if request.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    inputs = list_inputs(request.spec(), strict=not request.skip_bad)
    if request.server:
        embeddings, sources, skipped = _embed_on_server(request, inputs, advance)
        return _write(output, embeddings, sources, skipped, inputs.notes)
    rows: list[np.ndarray] = []
    sources: list[str] = []
    skipped: list[Skipped] = []

    def collect(start: int, kept: list[int], embeddings: np.ndarray, bad: list[tuple[int, str]], facts=()) -> None:
        rows.append(embeddings)
        sources.extend(inputs.items[i].id for i in kept)
        skipped.extend(Skipped(inputs.items[i].id, reason) for i, reason in bad)

    dim = run_local(EngineSettings.of(request), inputs, [(0, len(inputs))], advance, collect).dim
    embeddings = np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)
    return _write(output, embeddings, sources, skipped, inputs.notes)


def _embed_on_server(
    request: EmbedRequest, inputs: "InputList", advance: Advance | None
) -> tuple[np.ndarray, list[str], list[Skipped]]:
    """The same rows from a Triton server; errors name the file:line or path. With skip_bad, a
    refused batch is retried item by item so only the images the server cannot read are left out
    (and listed); a server that is down or fails is never 'skipped'."""
    from clipexport.bulk.input_list import Kind, read_item_bytes
    from clipexport.client import ClipClient, RequestRefused

    model = served_name(request.model or None, request.artifact)
    skipped: list[Skipped] = []
    items = inputs.items
    with ClipClient(request.server, model=model) as client:
        if inputs.kind is Kind.TEXT:
            names = [item.id for item in items]
            chunks = []
            for start in range(0, len(items), request.batch_size):
                part = slice(start, start + request.batch_size)
                chunks.append(
                    client.encode_text([item.text for item in items[part]], request.batch_size, names=names[part])
                )
                if advance:
                    advance(len(chunks[-1]), len(items))
            return np.concatenate(chunks), names, skipped
        rows, sources = [], []
        for start in range(0, len(items), request.batch_size):
            part = items[start : start + request.batch_size]
            payload, names = [], []
            for offset, item in enumerate(part):
                try:
                    payload.append(read_item_bytes(item))
                    names.append(item.id)
                except InputError as exc:
                    if not request.skip_bad:
                        raise
                    skipped.append(Skipped(item.id, str(exc)))
            try:
                if payload:
                    rows.append(client.encode_image(payload, request.batch_size, names=names))
                sources += names
            except RequestRefused:
                if not request.skip_bad:
                    raise
                for data, name in zip(payload, names):
                    try:
                        rows.append(client.encode_image([data], names=[name]))
                        sources.append(name)
                    except RequestRefused as exc:
                        skipped.append(Skipped(name, str(exc)))
            if advance:
                advance(len(part), len(items))
        return (np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)), sources, skipped


def _write(
    output: Path, embeddings: np.ndarray, sources: list[str], skipped: list[Skipped], notes: tuple[str, ...] = ()
) -> EmbedResult:
    if not len(embeddings):
        raise InputError(f"no input could be embedded ({len(skipped)} skipped); nothing was written")
    buffer = io.BytesIO()
    np.save(buffer, embeddings)
    index = index_path(output)
    # Line i names row i: ids are `inputs.shown` names (a newline in a file name is written `\n`),
    # so no name can split a line and shift every later row onto the wrong file.
    lines = list(sources)
    if len(lines) != len(embeddings) or any("\n" in line or "\r" in line for line in lines):
        raise InputError(f"{len(embeddings)} rows but {len(lines)} names; nothing was written")
    write_bytes_atomic(index, "".join(line + "\n" for line in lines).encode("utf-8"))
    write_bytes_atomic(output, buffer.getvalue())
    return EmbedResult(output, index, int(embeddings.shape[0]), int(embeddings.shape[1]), skipped, notes)
