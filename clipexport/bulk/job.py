"""`embed --output DIR`: a bulk job from an input list to a sharded, resumable embeddings dataset,
on the pipelined local engine or on Ray Data (`engine="ray"`); both write the same shards with the
same manifest, through the one writer in `dataset.py`."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Sequence
from enum import Enum
from pathlib import Path

import numpy as np

from clipexport.artifact.manifest import Tower, read_manifest
from clipexport.artifact.precision import Precision
from clipexport.bulk.dataset import (
    DEFAULT_SHARD_SIZE,
    DTYPES,
    DatasetState,
    Identity,
    Skipped,
    job_lock,
    open_for_writing,
    prepare_writer,
    warning_lines,
    write_shard,
)
from clipexport.bulk.layouts import Layout, check_folder, dataset_folder, write_clip_retrieval
from clipexport.bulk.local import EngineSettings, PipelineStats
from clipexport.bulk.input_list import DECODED_COLUMNS, DECODED_TYPES, InputList, InputSpec, Kind, list_inputs
from clipexport.datasets import is_folder
from clipexport.errors import InputError
from clipexport.files import created_folder, inside, sha256_file
from clipexport.progress import Advance, Progress, silent
from clipexport.runtime.backends import BackendKind


class Engine(str, Enum):
    LOCAL = "local"  # decode workers + the backend in this process
    RAY = "ray"  # Ray Data: CPU map_batches to decode, an actor pool to embed


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # ray.init(address=...); else RAY_ADDRESS, else a local cluster
    actors: int = 1  # embedding actors (one ClipRuntime each)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0


@dataclass(frozen=True)
class BulkOptions:
    artifact: Path
    output: Path
    inputs: InputSpec
    precision: Precision = Precision.FP32
    backend: BackendKind = BackendKind.ONNXRUNTIME
    batch_size: int = 32
    workers: int | None = None  # decode processes; default: the cores the backend's threads leave free
    threads: int | None = None  # the backend's intra-op threads; default: the backend's own
    device: str | None = None  # backends that take one (openvino: CPU, GPU, NPU, AUTO)
    shard_size: int = DEFAULT_SHARD_SIZE
    dtype: str = "float32"
    skip_bad: bool = False
    exif_transpose: bool = False
    fast_decode: bool = False  # JPEGs at a reduced DCT scale, then the exact resize (not bit-exact; README)
    overwrite: bool = False
    append: bool = False  # embed only the inputs the dataset does not hold yet, into new shards
    layout: Layout = Layout.OURS  # clip-retrieval: img_emb/ text_emb/ metadata/ written from the dataset
    engine: Engine = Engine.LOCAL
    ray: RayOptions = field(default_factory=RayOptions)

    def __post_init__(self) -> None:  # Python callers may pass names: parsed here, once
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        object.__setattr__(self, "backend", BackendKind.parse(self.backend))


@dataclass(frozen=True)
class BulkResult:
    output: Path
    inputs: int
    rows: int
    skipped: list[Skipped]
    shards_written: int
    shards_resumed: int
    computed: int  # inputs processed by this run
    seconds: float
    notes: tuple[str, ...] = ()  # what the input list left out (a truncated tar with --skip-bad)
    stats: PipelineStats | None = None  # what the local engine measured about itself
    layout: str = ""  # another layout written from the dataset: what it holds

    @property
    def per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> list[str]:
        """What the command prints on stdout."""
        resumed = f", {self.shards_resumed} resumed" if self.shards_resumed else ""
        return [
            f"wrote {self.output}: {self.rows} rows of {self.inputs} inputs ({len(self.skipped)} skipped); "
            f"{self.shards_written} shards computed{resumed}; {self.computed} inputs in {self.seconds:.1f} s "
            f"({self.per_second:.1f}/s)",
            *([self.layout] if self.layout else []),
        ]

    def warnings(self) -> list[str]:
        """What the command prints on stderr: each input left out, and what the input list said."""
        return warning_lines(self.skipped, self.notes)

    def to_json(self) -> dict[str, Any]:
        """What `embed --json` prints: one object."""
        return {
            "output": str(self.output),
            "inputs": self.inputs,
            "rows": self.rows,
            "skipped": [{"id": s.id, "reason": s.reason} for s in self.skipped],
            "shards_written": self.shards_written,
            "shards_resumed": self.shards_resumed,
            "computed": self.computed,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.per_second, 3),
            "notes": list(self.notes),
            "split": self.stats.split if self.stats is not None else None,
            "layout": self.layout or None,
        }


def check_options(options: BulkOptions) -> None:
    for value, what in ((options.batch_size, "--batch-size"), (options.shard_size, "--shard-size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{what} must be a positive integer, got {value!r}")
    if options.workers is not None and options.workers < 1:
        raise InputError("--workers must be at least 1")
    if options.dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {options.dtype!r}")
    if options.ray.actors < 1 or options.ray.gpus_per_actor < 0 or options.ray.cpus_per_actor <= 0:
        raise InputError("--ray-actors must be at least 1, --ray-gpus-per-actor >= 0 and --ray-cpus-per-actor > 0")


def embed_dataset(options: BulkOptions, advance: Advance | None = None, progress: Progress = silent) -> BulkResult:
    """The job into `options.output`, in our layout or (`options.layout`) another one written from
    the dataset behind it."""
    if options.layout is Layout.OURS:
        return _embed_dataset(options, advance, progress)
    top = Path(options.output).expanduser()
    if top.exists() and not top.is_dir():
        raise InputError(f"--output {top} is a file; pass a folder for the {options.layout.value} layout")
    check_folder(top)
    result = _embed_dataset(dataclasses.replace(options, output=dataset_folder(top, options.layout)), advance, progress)
    progress(f"writing the {options.layout.value} layout")
    files = write_clip_retrieval(result.output, top)
    layout = f"{options.layout.value} layout: {files} files in {top} (img_emb/, text_emb/, metadata/)"
    return dataclasses.replace(result, output=top, layout=layout)


def _embed_dataset(options: BulkOptions, advance: Advance | None = None, progress: Progress = silent) -> BulkResult:
    check_options(options)
    artifact = Path(options.artifact)
    manifest = read_manifest(artifact)
    output = Path(options.output).expanduser()
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output} is a file; pass a folder for the sharded dataset (or a .npy path)")
    if output.resolve() == artifact.resolve() or artifact.resolve() in output.resolve().parents:
        raise InputError(f"--output {output} is inside the artifact; choose another folder")
    for argument in options.inputs.images:
        if is_folder(Path(argument)) and inside(output, Path(argument)):
            raise InputError(f"--output {output} is inside the input folder {argument}; choose a folder outside it")
    inputs = list_inputs(options.inputs, strict=not options.skip_bad, metadata=True)
    tower = Tower.TEXT if inputs.kind is Kind.TEXT else Tower.VISION
    manifest.tower(tower).graph(options.precision)  # the precision exists, or one line naming the fix
    if inputs.pairs:
        manifest.tower(Tower.TEXT).graph(options.precision)
    first_input = first_shard = 0
    if options.append:
        if options.overwrite:
            raise InputError("--append adds to a dataset and --overwrite starts one over: pass one of them")
        begin = time.monotonic()
        inputs, first_input, first_shard = _appended(output, inputs)
        if not len(inputs):
            return _nothing_new(output, inputs, begin)
    identity = Identity(
        kind=inputs.job_kind,
        artifact_manifest_sha256=sha256_file(artifact / "manifest.json"),
        precision=options.precision.value,
        backend=options.backend.value,
        normalized=manifest.normalized,
        dim=manifest.embed_dim,
        dtype=options.dtype,
        inputs_sha256=inputs.sha256,
        inputs=len(inputs),
        shard_size=options.shard_size,
        decode="fast" if options.fast_decode else "exact",
        first_input=first_input,
        first_shard=first_shard,
        columns=inputs.columns,
    )
    begin = time.monotonic()
    # A run that made the folder and finished no shard leaves nothing behind.
    with created_folder(
        output,
        ours=lambda name: name.startswith("."),  # our temp files
        keep=lambda exc: any(output.glob("part-*.parquet")),
    ):
        return _embed(options, artifact, output, inputs, tower, identity, begin, advance, progress)


def _appended(output: Path, inputs: InputList) -> tuple[InputList, int, int]:
    """--append: the inputs `output` does not hold yet, and where their segment starts."""
    from clipexport.bulk.dataset import plan_append

    plan = plan_append(output)
    listed = {item.id for item in inputs.items}
    new = inputs.subset([i for i, item in enumerate(inputs.items) if item.id not in plan.present])
    changed = _changed([item for item in inputs.items if item.id in plan.recorded], plan.recorded)
    if changed:
        item, why = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise InputError(
            f"--append: input {item.label} changed since it was embedded ({why}){more}; its row would be stale: "
            "give the new content a new name, or make the dataset again with --overwrite"
        )
    respelled = _respelled(new.items, plan.present)
    if respelled is not None:
        raise InputError(
            f"--append: input {respelled[0]} is the dataset's {respelled[1]} under another spelling of its path "
            "(ids are paths as given, so it would be embedded twice); pass the inputs as the dataset's were given"
        )
    gone = len(plan.present - listed)
    notes = (
        (f"{gone} inputs of {output} are not in this input list; they stay (--append never removes rows)",)
        if gone
        else ()
    )
    new = dataclasses.replace(new, notes=new.notes + notes)
    if plan.unfinished is not None and new.sha256 != plan.unfinished.inputs_sha256:
        raise InputError(
            f"--append: the last --append into {output} did not finish, and these are not the inputs it was "
            "adding; rerun that command as it was to finish it, then append these"
        )
    return new, plan.first_input, plan.first_shard


def _changed(items: list, recorded: dict[str, tuple]) -> list[tuple]:
    """Inputs whose content differs from what the dataset recorded when it embedded them: their
    size and modification time first (a stat), their sha256 where those differ (a copy or a touch
    keeps the content); (item, how) for each."""
    import hashlib

    from clipexport.bulk.input_list import item_stat, read_item_bytes

    out = []
    for item in items:
        size, mtime, sha = recorded[item.id]
        if sha is None or ("://" in item.where and not item.where.startswith("file://")):
            continue  # nothing recorded, or an object-store URI (comparing would download it)
        if item_stat(item) == (size, mtime):
            continue
        try:
            data = read_item_bytes(item)
        except InputError as exc:
            out.append((item, f"it cannot be read now: {exc}"))
            continue
        if hashlib.sha256(data).hexdigest() != sha:
            out.append((item, f"its sha256 differs; {size} bytes then, {len(data)} now"))
    return out


def _respelled(items: tuple, present: frozenset[str]) -> tuple[str, str] | None:
    """A new input that is one of the dataset's files under another spelling of its path (relative
    vs absolute, through a link): (its id, the dataset's id), else None."""
    import os

    def tail(path: str) -> str:  # candidates by file name; samefile decides
        return os.path.basename(path)

    by_tail: dict[str, list[str]] = {}
    for known in present:
        by_tail.setdefault(tail(known), []).append(known)
    for item in items:
        if item.member or item.text is not None or "://" in item.where:
            continue
        for known in by_tail.get(tail(item.id), ()):
            try:
                if os.path.samefile(item.where, known):
                    return item.id, known
            except OSError:  # the dataset's path does not resolve from here
                continue
    return None


def _nothing_new(output: Path, inputs: InputList, begin: float) -> BulkResult:
    from clipexport.bulk.dataset import read_manifest as read_dataset

    data = read_dataset(output)
    skipped = [Skipped(s["id"], s["reason"]) for entry in data["shards"] for s in entry["skipped"]]
    notes = (*inputs.notes, f"nothing new: every input is in {output} already")
    return BulkResult(
        output, data["inputs"], data["rows"], skipped, 0, len(data["shards"]), 0, time.monotonic() - begin, notes
    )


def _embed(
    options: BulkOptions,
    artifact: Path,
    output: Path,
    inputs: InputList,
    tower: Tower,
    identity: Identity,
    begin: float,
    advance: Advance | None,
    progress: Progress,
) -> BulkResult:
    with job_lock(output):
        state, kept = open_for_writing(output, identity, str(artifact.resolve()), options.overwrite, progress)
        todo = [index for index in range(identity.first_shard, identity.shard_end) if index not in state.shards]
        if kept:
            progress(f"resuming: {len(kept)} of {state.shard_count} shards already done")
        ranges = [state.local_range(index) for index in todo]  # in this run's own input list
        stats = None
        if ranges:
            writer = _ShardWriter(state, inputs, todo)
            if options.engine is Engine.RAY:
                from clipexport.bulk.ray_engine import run_on_ray

                run_on_ray(
                    EngineSettings.of(options),
                    options.ray,
                    options.shard_size,
                    inputs,
                    ranges,
                    advance,
                    writer.on_batch,
                )
            else:
                from clipexport.bulk.local import run_local

                prepare_writer(identity)  # the writer's start-up, paid before the run (not per image)

                settings = dataclasses.replace(EngineSettings.of(options), artifact=artifact)
                stats = run_local(settings, inputs, ranges, advance, writer.on_batch)
                if stats.split:
                    progress(f"how the CPUs were shared: {stats.split}")
            writer.finish()
    rows = sum(s.rows for s in state.shards.values())
    skipped = [s for index in sorted(state.shards) for s in state.shards[index].skipped]
    if rows == 0:
        raise InputError(
            f"no input could be embedded ({len(skipped)} skipped, the first: {skipped[0].id}: {skipped[0].reason})"
            if skipped
            else "no input could be embedded"
        )
    return BulkResult(
        output,
        state.inputs,
        rows,
        skipped,
        len(todo),
        len(kept),
        sum(end - first for first, end in ranges),
        time.monotonic() - begin,
        inputs.notes + _fast_decode_note(options, stats),
        stats,
    )


def _fast_decode_note(options: BulkOptions, stats: PipelineStats | None) -> tuple[str, ...]:
    """--fast-decode applies to JPEGs: say once when it left some (or all) images as they were."""
    if not options.fast_decode or stats is None or stats.drafted == stats.images:
        return ()
    return (
        f"--fast-decode applies to JPEGs only: {stats.images - stats.drafted} of {stats.images} images were "
        "decoded in full (not JPEGs, or their reduced decode failed)",
    )


class _ShardWriter:
    """Gathers each shard's batches (they arrive in input order) and writes it when it is whole."""

    def __init__(self, state: DatasetState, inputs: InputList, todo: list[int]):
        self.state, self.inputs = state, inputs
        self.pending = {index: {"kept": [], "rows": [], "skipped": [], "facts": [], "seen": 0} for index in todo}

    def on_batch(
        self,
        start: int,
        kept: list[int],
        rows: np.ndarray,
        skipped: list[tuple[int, str]],
        facts: Sequence[tuple] = (),
    ) -> None:
        index = self.state.identity.first_shard + start // self.state.identity.shard_size
        shard = self.pending[index]
        shard["kept"] += kept
        shard["facts"] += facts
        shard["rows"].append(np.asarray(rows, np.float32))
        shard["skipped"] += [Skipped(self.inputs.items[i].id, reason) for i, reason in skipped]
        shard["seen"] += len(kept) + len(skipped)
        first, end = self.state.local_range(index)
        if shard["seen"] == end - first:
            width = (2, self.state.identity.dim) if self.inputs.pairs else (self.state.identity.dim,)
            embeddings = np.concatenate(shard["rows"]) if shard["rows"] else np.zeros((0, *width))
            ids = [self.inputs.items[i].id for i in shard["kept"]]
            write_shard(self.state, index, ids, embeddings, shard["skipped"], self._extra(shard))
            del self.pending[index]

    def _extra(self, shard: dict[str, Any]) -> Any:
        """The shard's metadata columns: the inputs' own (`InputList.metadata`), then for images
        the `width` and `height` each was decoded at."""
        import pyarrow as pa

        metadata = self.inputs.metadata
        extra = metadata.take(shard["kept"]) if metadata is not None else None
        if not self.inputs.decoded:
            return extra
        columns = {name: extra.column(name) for name in extra.column_names} if extra is not None else {}
        for name in self.inputs.decoded:
            at = DECODED_COLUMNS.index(name)
            values = [fact[at] for fact in shard["facts"]]
            columns[name] = pa.array(values, getattr(pa, DECODED_TYPES[name])())
        return pa.table(columns)

    def finish(self) -> None:
        if self.pending:  # an engine that stopped early without raising would be a bug: never claim it finished
            raise InputError(
                f"the run ended with shards {sorted(self.pending)} unfinished; run the same command again "
                "to finish them"
            )
