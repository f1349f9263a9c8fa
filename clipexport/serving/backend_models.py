"""Triton python-backend models, imported by the one-line `model.py` files that
`clipexport triton` and `clipexport serve` write (`from ... import TextEmbedModel as TritonPythonModel`).

Triton hands `execute` every request of a dynamic batch at once. Each request's items are decoded
on their own, so a corrupt image or an empty string fails that request with a one-line message
and the others in the batch still get their answer; the good items of all requests then run as
one batch through `clipexport.runtime`.

Settings come from the model config's `parameters`: `artifact` (the artifact folder, relative to
the model's version folder unless absolute), `precision`, `backend`, `buckets` (tokenize only),
`max_request_bytes` (the bound on one request's items together).

A client's mistake (an unreadable image, text that is not UTF-8, a request over the byte bound)
is answered INVALID_ARG: HTTP 400 / gRPC INVALID_ARGUMENT, with the runtime's own one-line reason
(the rules live in `clipexport.inputs` and the runtime, not here). Anything else is INTERNAL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from clipexport.errors import ClipExportError, InputError
from clipexport.inputs import DEFAULT_MAX_REQUEST_BYTES, check_request_bytes, decode_text, item_name

# Text lengths the tokenize model pads each request to (then the context length): Triton's dynamic
# batcher only batches requests whose tensors have the same shape, so a handful of lengths keep
# most prompts batchable while keeping most of the fast path's savings. See docs/serving.md.
DEFAULT_BUCKETS = (16, 32)


class _BatchedModel:
    input_name = "INPUT"
    output_name = "OUTPUT"

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils  # only exists inside Triton's python backend

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        self.parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        artifact = Path(self.parameters.get("artifact", "artifact"))
        self.artifact = artifact if artifact.is_absolute() else version_dir / artifact
        self.max_request_bytes = int(self.parameters.get("max_request_bytes") or DEFAULT_MAX_REQUEST_BYTES)
        try:
            self.setup()
        except ClipExportError as exc:  # `clipexport serve` reads this line back: same message and exit code
            import sys

            print(f"clipexport-error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            raise

    def _error(self, exc: Exception) -> Any:
        """The client's mistakes are INVALID_ARG (400); a failure of ours is INTERNAL (500)."""
        pb = self.pb
        code = getattr(pb.TritonError, "INVALID_ARG" if isinstance(exc, InputError) else "INTERNAL", None)
        message = f"{exc}" if isinstance(exc, ClipExportError) else f"{type(exc).__name__}: {exc}"
        message = message.splitlines()[0] if message.strip() else type(exc).__name__
        return pb.TritonError(message) if code is None else pb.TritonError(message, code)

    def setup(self) -> None:
        raise NotImplementedError

    def decode(self, item: Any, index: int) -> Any:
        raise NotImplementedError

    def compute(self, items: list[Any]) -> np.ndarray:
        raise NotImplementedError

    def respond(self, outputs: np.ndarray) -> np.ndarray:
        """One request's slice of the batch output, as that request's output tensor."""
        return outputs

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        responses: list[Any] = [None] * len(requests)
        items: list[Any] = []
        owners: list[tuple[int, int, int]] = []  # (request, first item, count)
        for r, request in enumerate(requests):
            try:
                values = pb.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
                check_request_bytes(
                    sum(len(v) for v in values if isinstance(v, (bytes, np.bytes_))),
                    self.max_request_bytes,
                    "the request's items",
                )
                decoded = [self.decode(value, i) for i, value in enumerate(values)]
            except ClipExportError as exc:
                responses[r] = pb.InferenceResponse(error=self._error(exc))
                continue
            owners.append((r, len(items), len(decoded)))
            items.extend(decoded)
        if items:
            try:
                outputs = self.compute(items)
            except Exception as exc:  # the runtime failed on good input: every request of this batch says why
                for r, _, _ in owners:
                    responses[r] = pb.InferenceResponse(error=self._error(exc))
                return responses
            for r, start, count in owners:
                tensor = pb.Tensor(self.output_name, self.respond(outputs[start : start + count]))
                responses[r] = pb.InferenceResponse(output_tensors=[tensor])
        return responses

    def finalize(self) -> None:
        close = getattr(getattr(self, "runtime", None), "close", None)
        if close:
            close()


def _image_bytes(item: Any, index: int) -> bytes:
    if isinstance(item, (bytes, np.bytes_)) and len(item):
        return bytes(item)
    raise InputError(f"{item_name('image', index)} is empty: send the encoded image file's bytes (JPEG, PNG, ...)")


def _text(item: Any, index: int) -> str:
    """The runtime's rule: any UTF-8 text, the empty one included (it embeds like open_clip's)."""
    return decode_text(bytes(item), item_name("text", index)) if isinstance(item, (bytes, np.bytes_)) else str(item)


def _open_runtime(model: _BatchedModel, tower: str) -> Any:
    """The runtime with only the tower this model runs (an image model holds no text session)."""
    from clipexport.runtime import ClipRuntime

    return ClipRuntime.load(
        model.artifact,
        backend=model.parameters.get("backend", "onnxruntime"),
        precision=model.parameters.get("precision", "fp32"),
        towers=(tower,),
    )


class ImageEmbedModel(_BatchedModel):
    """Encoded image bytes -> L2-normalised embedding (preprocessing and the vision tower)."""

    input_name, output_name = "IMAGE", "EMBEDDING"

    def setup(self) -> None:
        self.runtime = _open_runtime(self, "vision")

    def decode(self, item: Any, index: int) -> np.ndarray:
        return self.runtime.preprocessor.one(_image_bytes(item, index), name=item_name("image", index))

    def compute(self, items: list[np.ndarray]) -> np.ndarray:
        return self.runtime.encode_pixels(np.stack(items))


class TextEmbedModel(_BatchedModel):
    """UTF-8 text -> L2-normalised embedding (the runtime's tokenizer, the fast path, the text tower)."""

    input_name, output_name = "TEXT", "EMBEDDING"

    def setup(self) -> None:
        self.runtime = _open_runtime(self, "text")
        if self.runtime.tokenizer is None:
            raise InputError(
                f"{self.artifact}'s tokenizer ({self.runtime.manifest.tokenizer.kind}) has no "
                "torch-free implementation; re-export with a tokenizer that has a tokenizer.json"
            )

    def decode(self, item: Any, index: int) -> str:
        return _text(item, index)

    def compute(self, items: list[str]) -> np.ndarray:
        return self.runtime.encode_text(items)


class PreprocessModel(_BatchedModel):
    """Encoded image bytes -> float32 [3,H,W], the runtime's exact preprocessing (repository ensembles)."""

    input_name, output_name = "IMAGE", "PIXELS"

    def setup(self) -> None:
        from clipexport.runtime.preprocess import ImagePreprocessor

        self.preprocessor = ImagePreprocessor.from_manifest(self.artifact)

    def decode(self, item: Any, index: int) -> np.ndarray:
        return self.preprocessor.one(_image_bytes(item, index), name=item_name("image", index))

    def compute(self, items: list[np.ndarray]) -> np.ndarray:
        return np.stack(items)


class TokenizeModel(_BatchedModel):
    """UTF-8 text -> int64 token ids (repository ensembles). A text graph that may be cut gets each
    request's ids cut after its last real token and padded up to the next bucket length, so equal
    buckets batch together; a fixed-length graph always gets the context length."""

    input_name, output_name = "TEXT", "INPUT_IDS"

    def setup(self) -> None:
        from clipexport.artifact.manifest import Tower, read_manifest
        from clipexport.runtime.hf_tokenizer import load_tokenizer

        manifest = read_manifest(self.artifact)
        self.tokenizer_config = manifest.tokenizer
        self.properties = manifest.tower(Tower.TEXT).properties
        self.tokenizer = load_tokenizer(self.artifact, manifest.tokenizer)
        if self.tokenizer is None:
            raise InputError(f"{self.artifact}'s tokenizer has no torch-free implementation")
        buckets = self.parameters.get("buckets") or ",".join(map(str, DEFAULT_BUCKETS))
        self.buckets = sorted({int(b) for b in buckets.split(",") if b.strip()} | {manifest.tokenizer.context_length})

    def decode(self, item: Any, index: int) -> str:
        return _text(item, index)

    def compute(self, items: list[str]) -> np.ndarray:
        return self.tokenizer(items)

    def respond(self, ids: np.ndarray) -> np.ndarray:
        from clipexport.runtime.text_length import trim

        length = trim(ids, self.properties, self.tokenizer_config).shape[1]
        bucket = next(b for b in self.buckets if b >= length)
        return np.ascontiguousarray(ids[:, :bucket])
