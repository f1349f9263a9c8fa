"""`clipexport index DATASET -o INDEX`: a FAISS index over the sharded dataset `embed -o DIR` wrote.

    INDEX/_index.json     the dataset (path and its fingerprint, `dataset.fingerprint`), the model artifact,
                          precision, backend, kind, dim, rows; the index plan (factory string, why),
                          nprobe, and its recall@10 against exact search measured on its own rows
                          (and on text queries, with --queries); every file's sha256
    INDEX/index.faiss     the index (inner product on L2-normalised rows = cosine)
    INDEX/ids.parquet     column `id`: row r of the index is that input

Built in passes over the shards: a training sample (approximate indexes), then shard by shard
into the index, checkpointed in INDEX/.building/ (the trained index once, then the filled one
at most every CHECKPOINT_SECONDS), so a killed run resumes where the last checkpoint left it;
the published files and _index.json appear only when the index is whole.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipexport.bulk.dataset import EmbeddingsDataset, embedding_columns, job_lock, read_embeddings, shard_list
from clipexport.bulk.layouts import Layout
from clipexport.errors import InputError
from clipexport.errors import ParityError
from clipexport.files import (
    created_folder,
    inside,
    refuse_foreign,
    read_format_json,
    sha256_file,
    utc_timestamp,
    write_bytes_atomic,
    write_json_atomic,
)
from clipexport.parity.retrieval import RECALL_KS
from clipexport.vectors import TopK
from clipexport.progress import Advance, Progress, silent
from clipexport.search.plan import (
    DEFAULT_TARGET_RECALL,
    RECALL_K,
    RECALL_SAMPLE,
    IndexKind,
    IndexPlan,
    faiss_module,
    new_index,
    plan_index,
    training_rows,
    tune_nprobe,
)

FORMAT = "clipexport-index"
VERSION = 1
MANIFEST = "_index.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
BUILDING = ".building"
CHECKPOINT_SECONDS = float(os.environ.get("CLIPEXPORT_INDEX_CHECKPOINT_SECONDS", "60"))
SEED = 0  # the training sample and the recall sample
# The schema of _index.json, checked before any field is used (`clipexport search`, a rerun of `index`).
INDEX_SCHEMA = {
    "rows": int,
    "dim": int,
    "files": dict,
    "identity": dict,
    "recall_at_10": dict,
    "precision": (str, type(None)),
    "backend": (str, type(None)),
    "artifact": (str, type(None)),
    "dataset": str,
    "dataset_manifest_sha256": str,
    "index": {"factory": str, "exact": bool, "nlist": int, "nprobe": int, "target_recall": float},
}


@dataclass(frozen=True)
class IndexOptions:
    dataset: Path
    output: Path
    kind: IndexKind = IndexKind.AUTO
    max_memory: int | None = None  # bytes
    target_recall: float = DEFAULT_TARGET_RECALL
    queries: Path | None = None  # another dataset (texts, same artifact) to measure recall with
    overwrite: bool = False
    accept_low_recall: bool = False  # publish an index whose recall misses target_recall without failing
    update: bool = False  # add the rows of the dataset's new shards (--append) to the index there
    column: str | None = None  # a --pairs dataset's embedding column (None: image_embedding)
    layout: Layout = Layout.OURS  # clip-retrieval: image.index / text.index + metadata/, as clip_back serves


def meets_target(recall: dict[str, float], target: float) -> bool:
    """Every query kind's measured recall@10 reaches --target-recall."""
    return all(value >= target for value in recall.values())


@dataclass(frozen=True)
class IndexResult:
    output: Path
    rows: int
    plan: IndexPlan
    nprobe: int
    recall: dict[str, float]
    seconds: float
    resumed: bool
    already: bool = False
    target_recall: float = DEFAULT_TARGET_RECALL
    added: int | None = None  # --update: the rows added (None: a build)
    layout: str = ""  # another layout written: what it holds

    @property
    def target_met(self) -> bool:
        return meets_target(self.recall, self.target_recall)

    def summary(self) -> list[str]:
        """What the command prints on stdout."""
        recall = ", ".join(f"{name} {value:.3f}" for name, value in self.recall.items())
        state = "already built" if self.already else ("resumed and built" if self.resumed else "built")
        if self.added is not None:
            state = f"added {self.added} rows to" if self.added else "up to date:"
        probe = f", nprobe {self.nprobe}" if self.nprobe else ""
        lines = [
            f"{state} {self.output}: {self.rows} rows, {self.plan.factory}{probe}; recall@10 vs exact: {recall} "
            f"({self.seconds:.1f} s)"
        ]
        if self.layout:
            lines.append(self.layout)
        if self.added and not self.target_met:
            lines.append(
                f"recall@10 has drifted below --target-recall {self.target_recall} since the index was trained: "
                f"a rebuild is due (clipexport index DATASET -o {self.output} --overwrite)"
            )
        return lines

    def to_json(self) -> dict[str, Any]:
        """What `index --json` prints: one object."""
        return {
            "output": str(self.output),
            "rows": self.rows,
            "index": self.plan.to_dict(),
            "nprobe": self.nprobe,
            "recall_at_10": self.recall,
            "target_recall": self.target_recall,
            "target_met": self.target_met,
            "resumed": self.resumed,
            "already_built": self.already,
            "added": self.added,
            "seconds": round(self.seconds, 3),
        }


def build_index(options: IndexOptions, advance: Advance | None = None, progress: Progress = silent) -> IndexResult:
    if options.layout is Layout.CLIP_RETRIEVAL:
        return _build_clip_retrieval(options, advance, progress)
    begin = time.monotonic()
    if not 0 < options.target_recall <= 1:
        raise InputError(f"--target-recall must be in (0, 1], got {options.target_recall}")
    dataset = read_embeddings(options.dataset, column=options.column)
    queries = read_embeddings(options.queries, "--queries") if options.queries is not None else None
    if queries is not None and queries.dim != dataset.dim:
        raise InputError(
            f"--queries {queries.folder} holds {queries.dim}-d embeddings, the dataset {dataset.dim}-d; "
            "embed the queries with the same artifact"
        )
    plan = plan_index(dataset.rows, dataset.dim, options.kind, options.max_memory)
    output = Path(options.output).expanduser()
    if output.exists() and not output.is_dir():
        raise InputError(f"-o {output} is a file; pass a folder for the index")
    if inside(output, dataset.home):
        raise InputError(
            f"-o {output} is inside the dataset {dataset.home} (readers of the dataset would take the "
            "index files for data); choose a separate folder for the index"
        )
    if inside(dataset.home, output):
        raise InputError(f"-o {output} holds the dataset {dataset.home}; choose a separate folder for the index")
    identity = {
        "dataset_manifest_sha256": dataset.manifest_sha256,
        # Which column, where the dataset has more than one (--pairs).
        **({"column": dataset.embedding_column} if len(embedding_columns(dataset.manifest["kind"])) > 1 else {}),
        "factory": plan.factory,
        "seed": SEED,
        "queries_manifest_sha256": queries.manifest_sha256 if queries else None,
        "target_recall": options.target_recall,
    }
    # A folder this run made goes again: at once when nothing was built, and also with its build
    # state after a failure that a rerun would meet again (a NaN row, a full disk); an interrupted
    # build keeps .building, which the rerun resumes.
    with (
        created_folder(
            output,
            ours=lambda name: _ours(name) or name == BUILDING,
            keep=lambda exc: isinstance(exc, KeyboardInterrupt) and (output / BUILDING).exists(),
        ),
        job_lock(output, "clipexport index", "-o"),
    ):
        done = None if options.update else _existing(output, identity, options.overwrite)
        if options.update:
            result = _update(dataset, queries, output, options, begin, advance, progress)
        elif done is not None:
            result = IndexResult(
                output,
                dataset.rows,
                plan,
                int(done["index"]["nprobe"]),
                done["recall_at_10"],
                time.monotonic() - begin,
                False,
                already=True,
                target_recall=options.target_recall,
            )
        else:
            result = _build(dataset, queries, plan, output, identity, options, begin, advance, progress)
    if not result.target_met and not options.accept_low_recall and result.added is None:
        measured = ", ".join(f"{name} {value:.3f}" for name, value in result.recall.items())
        raise ParityError(
            f"the index {output} ({plan.factory}) reaches recall@10 {measured} against exact search even "
            f"at nprobe {result.nprobe}, below --target-recall {options.target_recall}"
            f"{' (its codes are too coarse for this --max-memory: raise it)' if plan.pq_m else ''}; "
            "it was written, but searches will miss that many true neighbours: pass --accept-low-recall "
            "to use it anyway, or --kind exact"
        )
    return result


CLIP_BACK_NAMES = ("image.index", "text.index", "metadata")  # what clip_back loads from an index folder


def _build_clip_retrieval(options: IndexOptions, advance: Advance | None, progress: Progress) -> IndexResult:
    """The folder clip-retrieval's `clip_back` serves: `image.index` and/or `text.index` (FAISS,
    row r = the dataset's row r) and `metadata/` (parquet, rows in that order); each index is one
    of ours behind it (`.clipexport-image/`, `.clipexport-text/`: manifest, recall, resume)."""
    import dataclasses

    from clipexport.bulk.layouts import write_clip_retrieval

    output = Path(options.output).expanduser()
    if output.exists() and not output.is_dir():
        raise InputError(f"-o {output} is a file; pass a folder for the index")
    refuse_foreign(output, lambda name: name in CLIP_BACK_NAMES, "-o", "not a clip-retrieval index this command wrote")
    dataset = read_embeddings(options.dataset)
    columns = embedding_columns(dataset.manifest["kind"])
    results = []
    for what, column in columns.items():
        inner = dataclasses.replace(
            options, layout=Layout.OURS, output=output / f".clipexport-{what}", column=column, dataset=dataset.folder
        )
        result = build_index(inner, advance, progress)
        write_bytes_atomic(output / f"{what}.index", (inner.output / INDEX_FILE).read_bytes())
        results.append((what, result))
    files = write_clip_retrieval(dataset.folder, output, embeddings=False)
    held = ", ".join(f"{what}.index ({result.plan.factory})" for what, result in results)
    first = results[0][1]
    recall = {f"{what} {name}": value for what, result in results for name, value in result.recall.items()}
    return dataclasses.replace(
        first, output=output, recall=recall, layout=f"clip-retrieval layout: {held}, metadata/ ({files} files)"
    )


def _ours(name: str) -> bool:
    return name in (MANIFEST, INDEX_FILE, IDS_FILE)


def read_index_manifest_file(path: Path, fix: str) -> dict[str, Any]:
    """The one reader of _index.json: every field `search` and a rerun use, typed (INDEX_SCHEMA)."""

    def check(data: dict[str, Any]) -> None:
        from clipexport.files import check_fields

        check_fields(data, INDEX_SCHEMA)
        if data["rows"] < 1 or data["dim"] < 1 or data["index"]["nprobe"] < 0:
            raise ValueError("rows, dim or nprobe out of range")
        for name, value in data["recall_at_10"].items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"'recall_at_10.{name}' must be a number")

    return read_format_json(path, FORMAT, check, fix)


def _existing(output: Path, identity: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The finished index of this same job (nothing to do), or None after clearing the way. The
    owned-folder rule: the folder is empty, or carries our _index.json (or our build state);
    anything else is refused naming the file, and --overwrite removes only our own files."""
    refuse_foreign(output, _ours, "-o", "not an index")
    manifest = output / MANIFEST
    building = output / BUILDING
    if not manifest.is_file():
        stray = [name for name in (INDEX_FILE, IDS_FILE) if (output / name).exists()]
        if stray and not building.is_dir():
            raise InputError(
                f"-o {output} holds {stray[0]} but no {MANIFEST}: not an index this command wrote; remove "
                "it yourself, or choose a new or empty folder"
            )
    else:
        try:
            data = read_index_manifest_file(manifest, "pass --overwrite to rebuild it, or choose another folder")
        except InputError:
            if not overwrite:
                raise
            data = {}
        same = data.get("identity") == identity
        if same and not overwrite and all((output / f).is_file() for f in (INDEX_FILE, IDS_FILE)):
            return data
        if data and not same and not overwrite:
            raise InputError(
                f"-o {output} holds an index of another dataset or plan; pass --overwrite to replace it, "
                "or choose another folder"
            )
        for name in (MANIFEST, INDEX_FILE, IDS_FILE):
            (output / name).unlink(missing_ok=True)
    if building.is_dir():
        try:
            state = json.loads((building / "identity.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
        if state != identity or overwrite:
            shutil.rmtree(building)
    return None


def _serialize(index: Any) -> bytes:
    return faiss_module().serialize_index(index).tobytes()


def _deserialize(data: bytes) -> Any:
    return faiss_module().deserialize_index(np.frombuffer(data, dtype=np.uint8))


def _build(
    dataset: EmbeddingsDataset,
    queries: EmbeddingsDataset | None,
    plan: IndexPlan,
    output: Path,
    identity: dict[str, Any],
    options: IndexOptions,
    begin: float,
    advance: Advance | None,
    progress: Progress,
) -> IndexResult:
    building = output / BUILDING
    building.mkdir(parents=True, exist_ok=True)
    write_json_atomic(building / "identity.json", identity)
    shards_done, resumed = 0, False
    if (building / "filled.json").is_file() and (building / "filled.faiss").is_file():
        state = json.loads((building / "filled.json").read_text(encoding="utf-8"))
        index = _deserialize((building / "filled.faiss").read_bytes())
        shards_done, resumed = int(state["shards"]), True
        progress(f"resuming: {shards_done} of {len(dataset.manifest['shards'])} shards already in the index")
    elif (building / "trained.faiss").is_file():
        index, resumed = _deserialize((building / "trained.faiss").read_bytes()), True
        progress("resuming: the index is already trained")
    else:
        index = new_index(plan, dataset.dim)
    # Pass 1 (approximate indexes): the training sample and the recall sample's own rows, in one read.
    # Pass 2: every shard into the index, its ids, and the recall sample's exact answers (TopK).
    samples_names = _sample_names(dataset, queries)
    training = (
        None
        if plan.exact or resumed
        else np.sort(np.random.default_rng(SEED).choice(dataset.rows, training_rows(plan, dataset.rows), replace=False))
    )
    sets, training_sample = ({}, None) if plan.exact else _recall_queries(dataset, queries, samples_names, training)
    if training_sample is not None:
        progress(f"training {plan.factory} on {len(training_sample)} of {dataset.rows} rows")
        index.train(training_sample)
        write_bytes_atomic(building / "trained.faiss", _serialize(index))
    progress(f"adding {dataset.rows} rows to {plan.factory} ({plan.reason})")
    k_own = min(RECALL_K, dataset.rows - 1)
    tops = {
        name: TopK(q, k_own if own is not None else min(RECALL_K, dataset.rows), own) for name, (q, own) in sets.items()
    }
    ids = [] if tops else dataset.ids(stop=shards_done)  # the exact answers need every shard; the index, the rest
    last_checkpoint = time.monotonic()
    total_shards = len(dataset.manifest["shards"])
    number = 0 if tops else shards_done
    for first, shard_ids, vectors in dataset.shards(start=number, unit=True):
        for top in tops.values():
            top.add(vectors, first)
        ids += shard_ids
        number += 1
        if number <= shards_done:
            continue
        index.add(vectors)
        if advance:
            advance(len(vectors), dataset.rows)
        if number < total_shards and time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS:
            write_bytes_atomic(building / "filled.faiss", _serialize(index))
            write_json_atomic(building / "filled.json", {"shards": number, "rows": int(index.ntotal)})
            last_checkpoint = time.monotonic()
    if index.ntotal != dataset.rows:
        raise InputError(f"the index holds {index.ntotal} rows, the dataset {dataset.rows}; rerun with --overwrite")
    tuned_nprobe, recall, curve = 0, {name: 1.0 for name in samples_names}, []
    if not plan.exact:
        progress(f"measuring recall@{RECALL_K} against exact search on {min(RECALL_SAMPLE, dataset.rows)} rows")
        samples = {
            name: (q, tops[name].result(), None if own is None else own.tolist()) for name, (q, own) in sets.items()
        }
        tuned = tune_nprobe(index, plan, samples, options.target_recall)
        tuned_nprobe, recall, curve = tuned.nprobe, tuned.recall, tuned.curve
    index_bytes = _serialize(index)
    write_bytes_atomic(output / INDEX_FILE, index_bytes)
    _write_ids(output / IDS_FILE, ids)
    import hashlib

    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "created": utc_timestamp(),
        "identity": identity,
        "dataset": str(dataset.folder.resolve()),
        "dataset_manifest_sha256": dataset.manifest_sha256,
        "artifact": dataset.manifest.get("artifact"),
        "artifact_manifest_sha256": dataset.manifest.get("artifact_manifest_sha256"),
        "precision": dataset.manifest.get("precision"),
        "backend": dataset.manifest.get("backend"),
        "kind": dataset.kind,
        "column": dataset.embedding_column,
        "dim": dataset.dim,
        "rows": dataset.rows,
        "metric": "inner product on L2-normalised rows (cosine)",
        "index": {
            **plan.to_dict(),
            "nprobe": tuned_nprobe,
            "target_recall": options.target_recall,
            "bytes": len(index_bytes),
        },
        "recall_at_10": recall,
        "target_met": meets_target(recall, options.target_recall),
        "recall_sample": min(RECALL_SAMPLE, dataset.rows),
        "recall_curve": curve,
        "recall_definition": f"|found@{RECALL_K} ∩ exact@{RECALL_K}| / {RECALL_K}; own row excluded for the index's rows",
        "files": {INDEX_FILE: hashlib.sha256(index_bytes).hexdigest(), IDS_FILE: sha256_file(output / IDS_FILE)},
        "build_seconds": round(time.monotonic() - begin, 3),
        "shards": shard_list(dataset.manifest),
    }
    write_json_atomic(output / MANIFEST, manifest)
    shutil.rmtree(building, ignore_errors=True)
    return IndexResult(
        output,
        dataset.rows,
        plan,
        tuned_nprobe,
        recall,
        time.monotonic() - begin,
        resumed,
        target_recall=options.target_recall,
    )


def _updatable(dataset: EmbeddingsDataset, output: Path, options: IndexOptions) -> dict[str, Any]:
    """The manifest of the index --update adds to, once it is known to be this dataset's (its
    shards the dataset's first ones, the same column and dim, its files whole); one line otherwise."""
    from clipexport.files import check_recorded_sha256

    if options.overwrite:
        raise InputError("--update adds to an index and --overwrite rebuilds it: pass one of them")
    refuse_foreign(output, _ours, "-o", "not an index")
    if not (output / MANIFEST).is_file():
        raise InputError(f"--update: {output} holds no index yet; build it without --update")
    fix = "rebuild it with --overwrite"
    data = read_index_manifest_file(output / MANIFEST, fix)
    recorded = data.get("shards")
    if not isinstance(recorded, list):
        raise InputError(f"--update: {output} was built before indexes recorded their shards; {fix}")
    if shard_list(dataset.manifest)[: len(recorded)] != recorded:
        raise InputError(
            f"--update: {output} is not an index of {dataset.folder} as it is now (its rows are not the "
            f"dataset's first {len(recorded)} shards: another dataset, or one made again); {fix}"
        )
    if data.get("column", "embedding") != dataset.embedding_column:
        raise InputError(
            f"--update: {output} indexes the dataset's {data.get('column', 'embedding')}, not "
            f"{dataset.embedding_column}; pass --column {data.get('column', 'embedding')}"
        )
    if data["dim"] != dataset.dim:
        raise InputError(f"--update: {output} holds {data['dim']}-d rows, the dataset {dataset.dim}-d; {fix}")
    for name in (INDEX_FILE, IDS_FILE):
        check_recorded_sha256(output / name, data["files"].get(name), fix, recorded_in=str(output / MANIFEST))
    return data


def _update(
    dataset: EmbeddingsDataset,
    queries: EmbeddingsDataset | None,
    output: Path,
    options: IndexOptions,
    begin: float,
    advance: Advance | None,
    progress: Progress,
) -> IndexResult:
    """--update: the rows of the dataset's shards after those the index holds (an --append) are
    added to it as it is — exact and IVF add them, IVF-PQ encodes them with its trained codebook —
    then recall@10 is measured again on the own-row sample (nprobe re-tuned); below the target, the
    summary says a rebuild is due."""
    import hashlib

    data = _updatable(dataset, output, options)
    recorded, now = data["shards"], shard_list(dataset.manifest)
    plan = IndexPlan.from_dict(data["index"])
    target = float(data["index"]["target_recall"])  # the target it was built for, not this run's default
    index = _deserialize((output / INDEX_FILE).read_bytes())
    if index.ntotal != data["rows"]:
        raise InputError(
            f"--update: {output / INDEX_FILE} holds {index.ntotal} rows, its manifest {data['rows']}; "
            "rebuild it with --overwrite"
        )
    import pyarrow.parquet as pq

    ids = pq.read_table(output / IDS_FILE).column("id").to_pylist()
    start = len(recorded)
    added = 0
    if start < len(now):
        progress(f"adding the rows of {len(now) - start} new shards to {plan.factory}")
        for _, shard_ids, vectors in dataset.shards(start=start, unit=True):
            index.add(vectors)
            ids += shard_ids
            added += len(vectors)
            if advance:
                advance(len(vectors), dataset.rows - data["rows"])
    nprobe, recall, curve = int(data["index"]["nprobe"]), data["recall_at_10"], data.get("recall_curve", [])
    if added and not plan.exact:
        progress(f"measuring recall@{RECALL_K} against exact search on {min(RECALL_SAMPLE, dataset.rows)} rows")
        tuned = _measure_recall(index, plan, dataset, queries, target)
        nprobe, recall, curve = tuned.nprobe, tuned.recall, tuned.curve
    if added:
        from clipexport.signals import deferred_interrupts

        index_bytes = _serialize(index)
        with deferred_interrupts():  # the index, its ids and the manifest naming them: all three, or none
            write_bytes_atomic(output / INDEX_FILE, index_bytes)
            _write_ids(output / IDS_FILE, ids)
            identity = {**data["identity"], "dataset_manifest_sha256": dataset.manifest_sha256}
            data.update(
                identity=identity,
                dataset_manifest_sha256=dataset.manifest_sha256,
                rows=dataset.rows,
                updated=utc_timestamp(),
                recall_at_10=recall,
                target_met=meets_target(recall, target),
                recall_curve=curve,
                shards=now,
                files={INDEX_FILE: hashlib.sha256(index_bytes).hexdigest(), IDS_FILE: sha256_file(output / IDS_FILE)},
            )
            data["index"].update(nprobe=nprobe, bytes=len(index_bytes))
            write_json_atomic(output / MANIFEST, data)
    return IndexResult(
        output,
        dataset.rows,
        plan,
        nprobe,
        recall,
        time.monotonic() - begin,
        False,
        target_recall=target,
        added=added,
    )


def _measure_recall(
    index: Any, plan: IndexPlan, dataset: EmbeddingsDataset, queries: EmbeddingsDataset | None, target: float
) -> Any:
    """recall@10 against exact search on the own-row sample (and --queries) over every row, with
    the smallest nprobe that reaches `target` (`tune_nprobe`): two passes over the dataset."""
    sets, _ = _recall_queries(dataset, queries, _sample_names(dataset, queries), None)
    tops = {n: TopK(q, min(RECALL_K, dataset.rows - (own is not None)), own) for n, (q, own) in sets.items()}
    for first, _, vectors in dataset.shards(unit=True):
        for top in tops.values():
            top.add(vectors, first)
    samples = {n: (q, tops[n].result(), None if own is None else own.tolist()) for n, (q, own) in sets.items()}
    return tune_nprobe(index, plan, samples, target)


def _sample_names(dataset: EmbeddingsDataset, queries: EmbeddingsDataset | None) -> tuple[str, ...]:
    """The recall figures' names: the index's own kind ("image" queries on an image index), then
    the --queries kind ("text"), each measured separately (clip-retrieval #76: an approximate
    index can keep image -> image recall and lose text -> image)."""
    own = dataset.kind
    if queries is None:
        return (own,)
    other = queries.kind
    return own, other if other != own else f"{other}_queries"


def _recall_queries(
    dataset: EmbeddingsDataset, queries: EmbeddingsDataset | None, names: tuple[str, ...], training: np.ndarray | None
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray | None]], np.ndarray | None]:
    """The recall sample, {name: (unit query rows, their own row numbers or None)}: a sample of the
    index's own rows (own row excluded from its answers) and of --queries; and with `training`
    (row numbers), those unit rows, read in the same pass over the dataset."""
    rng = np.random.default_rng(SEED + 1)
    own = np.sort(rng.choice(dataset.rows, min(RECALL_SAMPLE, dataset.rows), replace=False))
    wanted = [own] if training is None else [own, training]
    rows = _gather(dataset, wanted)
    sets: dict[str, tuple[np.ndarray, np.ndarray | None]] = {names[0]: (rows[0], own)}
    if queries is not None:
        picked = np.sort(rng.choice(queries.rows, min(RECALL_SAMPLE, queries.rows), replace=False))
        sets[names[1]] = (_gather(queries, [picked])[0], None)
    return sets, rows[1] if training is not None else None


def _gather(dataset: EmbeddingsDataset, wanted: list[np.ndarray]) -> list[np.ndarray]:
    """The unit rows at each sorted array of row numbers in `wanted`, in one pass over the shards."""
    out: list[list[np.ndarray]] = [[] for _ in wanted]
    for first, _, vectors in dataset.shards(unit=True):
        for rows, parts in zip(wanted, out):
            parts.append(vectors[rows[(rows >= first) & (rows < first + len(vectors))] - first])
    return [np.concatenate(parts) for parts in out]


def _write_ids(path: Path, ids: list[str]) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": pa.array(ids, type=pa.string())}), buffer, compression="zstd")
    write_bytes_atomic(path, buffer.getvalue())


__all__ = [
    "IDS_FILE",
    "INDEX_FILE",
    "IndexOptions",
    "IndexResult",
    "MANIFEST",
    "RECALL_KS",
    "build_index",
    "read_index_manifest_file",
]
