"""`clipexport embed`: one options class and one entry whatever the output. A folder gets the
sharded, resumable Parquet dataset (`job.embed_dataset`, local or on Ray); a `.npy` file gets one
array with its row index (`npy.embed_to_file`, here or through a Triton server). Which options
apply to which output is decided here, once, with one line naming the fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipexport.artifact.precision import Precision
from clipexport.bulk.dataset import DEFAULT_SHARD_SIZE
from clipexport.bulk.job import BulkOptions, BulkResult, Engine, RayOptions
from clipexport.bulk.layouts import Layout
from clipexport.bulk.npy import EmbedRequest, EmbedResult
from clipexport.bulk.input_list import InputSpec
from clipexport.errors import InputError
from clipexport.progress import Advance, Progress, silent
from clipexport.runtime.backends import BackendKind


@dataclass(frozen=True)
class EmbedOptions:
    artifact: Path
    output: Path  # a folder: the sharded dataset; NAME.npy: one array
    inputs: InputSpec
    precision: Precision = Precision.FP32
    backend: BackendKind = BackendKind.ONNXRUNTIME
    batch_size: int = 32
    workers: int | None = None
    threads: int | None = None
    device: str | None = None
    fast_decode: bool = False
    skip_bad: bool = False
    exif_transpose: bool = False
    # the dataset's
    shard_size: int = DEFAULT_SHARD_SIZE
    dtype: str = "float32"
    overwrite: bool = False
    append: bool = False
    layout: Layout = Layout.OURS
    engine: Engine = Engine.LOCAL
    ray: RayOptions = field(default_factory=RayOptions)
    # the .npy file's
    server: str | None = None  # embed on a Triton server (ClipClient) instead of in this process
    model: str | None = None  # the served model's name prefix

    def __post_init__(self) -> None:  # Python callers may pass names: parsed here, once
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        object.__setattr__(self, "backend", BackendKind.parse(self.backend))

    @property
    def to_file(self) -> bool:
        return Path(self.output).suffix.lower() == ".npy"


def _shared(options: EmbedOptions) -> dict[str, Any]:
    names = ("artifact", "output", "inputs", "precision", "backend", "batch_size", "workers", "threads", "device")
    return {name: getattr(options, name) for name in names} | {
        "fast_decode": options.fast_decode,
        "skip_bad": options.skip_bad,
        "exif_transpose": options.exif_transpose,
    }


def embed(
    options: EmbedOptions, advance: Advance | None = None, progress: Progress = silent
) -> BulkResult | EmbedResult:
    """Run `embed` into `options.output`; the result's `summary()`, `warnings()` and `to_json()` are
    what the command prints."""
    from clipexport.bulk.job import embed_dataset
    from clipexport.bulk.npy import embed_to_file

    if options.to_file:
        dataset_only = (
            (options.append, "--append grows"),
            (options.inputs.pairs, "--pairs writes two embedding columns of"),
            (options.layout is not Layout.OURS, "--layout is the shape of"),
            (options.inputs.keep_columns is not None, "--keep-columns chooses the columns of"),
        )
        for given, what in dataset_only:
            if given:
                raise InputError(f"{what} a dataset folder; pass -o DIR (a .npy file holds the embeddings alone)")
        return embed_to_file(EmbedRequest(**_shared(options), server=options.server, model=options.model), advance)
    if options.server:
        raise InputError("--server writes a .npy file; pass -o NAME.npy (the sharded dataset runs here or on Ray)")
    bulk = BulkOptions(
        **_shared(options),
        shard_size=options.shard_size,
        dtype=options.dtype,
        overwrite=options.overwrite,
        append=options.append,
        layout=options.layout,
        engine=options.engine,
        ray=options.ray,
    )
    return embed_dataset(bulk, advance, progress)
