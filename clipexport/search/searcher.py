"""`Searcher`: top-k over an index folder, for vectors, texts or images (torch-free: the runtime
embeds the queries, FAISS searches). `clipexport search` is a thin shell over it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from clipexport.errors import InputError
from clipexport.files import check_recorded_sha256, sha256_file
from clipexport.vectors import l2_normalize
from clipexport.bulk.dataset import fingerprint
from clipexport.search.index import IDS_FILE, INDEX_FILE, MANIFEST, read_index_manifest_file
from clipexport.search.plan import faiss_module, search, set_nprobe

if TYPE_CHECKING:
    from clipexport.artifact.precision import Precision
    from clipexport.runtime.backends import BackendKind


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity
    row: int


def _grew(dataset: Path, recorded: Any) -> bool:
    """Whether the dataset still starts with the shards the index recorded, and has more."""
    from clipexport.bulk.dataset import read_manifest as read_dataset, shard_list

    try:
        now = shard_list(read_dataset(dataset))
    except (InputError, TypeError):
        return False
    return isinstance(recorded, list) and len(now) > len(recorded) and now[: len(recorded)] == recorded


def check_k(k: Any, rows: int) -> int:
    """-k: a positive integer no larger than the index."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"-k must be a positive integer, got {k!r}")
    if k > rows:
        raise InputError(f"-k {k} is larger than the index ({rows} rows); ask for at most {rows}")
    return int(k)


def read_index_manifest(folder: Path) -> dict[str, Any]:
    folder = Path(folder).expanduser()
    path = folder / MANIFEST
    if not path.is_file():
        hint = (
            " (it is still being built, or the build was interrupted: rerun `clipexport index`)"
            if (folder / ".building").is_dir()
            else ""
        )
        raise InputError(
            f"{folder} is not an index (no {MANIFEST}){hint}; make one with `clipexport index DATASET -o INDEX`"
        )
    return read_index_manifest_file(path, "rebuild the index with `clipexport index ... --overwrite`")


class Searcher:
    """An opened index: `search(vectors, k)`, `search_text(texts, k)`, `search_images(paths, k)`.

    The queries are embedded with `artifact` (default: the one the dataset was embedded with) at
    `precision` (default: the index's). Another precision is allowed; `notes` says so, with the
    drift `verify --retrieval` measured for that pair when the artifact's parity.json has it."""

    def __init__(
        self,
        folder: str | Path,
        artifact: str | Path | None = None,
        precision: Precision | str | None = None,
        backend: BackendKind | str | None = None,
        nprobe: int | None = None,
        check_dataset: bool = True,
    ):
        self.folder = Path(folder).expanduser()
        self.manifest = read_index_manifest(self.folder)
        self.rows, self.dim = int(self.manifest["rows"]), int(self.manifest["dim"])
        self.notes: list[str] = []
        if check_dataset:
            self._check_dataset()
        index_path = self.folder / INDEX_FILE
        fix = "rebuild it with `clipexport index ... --overwrite`"
        for name in (INDEX_FILE, IDS_FILE):
            if not (self.folder / name).is_file():
                raise InputError(f"{self.folder / name} is missing; {fix}")
            check_recorded_sha256(
                self.folder / name,
                self.manifest["files"].get(name),
                fix,
                recorded_in=str(self.folder / MANIFEST),
                error=InputError,
            )
        faiss = faiss_module()
        try:
            self.index = faiss.read_index(str(index_path))
        except RuntimeError as exc:  # sha256 matched, yet FAISS cannot read it: another FAISS build
            raise InputError(f"FAISS cannot read {index_path} ({str(exc).splitlines()[-1][:120]}); {fix}") from None
        if self.index.ntotal != self.rows or self.index.d != self.dim:
            raise InputError(
                f"{index_path} holds {self.index.ntotal} x {self.index.d}, its manifest says "
                f"{self.rows} x {self.dim}; {fix}"
            )
        import pyarrow.parquet as pq

        self.ids: list[str] = pq.read_table(self.folder / IDS_FILE).column("id").to_pylist()
        if len(self.ids) != self.rows:
            raise InputError(f"{self.folder / IDS_FILE} names {len(self.ids)} rows, the index holds {self.rows}; {fix}")
        chosen = self.manifest["index"].get("nprobe") or 0
        if nprobe is not None:
            if self.manifest["index"].get("exact"):
                raise InputError("--nprobe applies to approximate (IVF) indexes; this one is exact")
            if not 1 <= nprobe <= int(self.manifest["index"]["nlist"]):
                raise InputError(
                    f"--nprobe must be in 1..{self.manifest['index']['nlist']} (the index's lists), got {nprobe}"
                )
            chosen = nprobe
        set_nprobe(self.index, chosen)
        if self.manifest.get("target_met") is False:
            self.notes.append(
                f"this index's measured recall@10 ({self.manifest['recall_at_10']}) is below the target it "
                f"was built for ({self.manifest['index']['target_recall']}); it was kept with "
                "--accept-low-recall"
            )
        self.artifact = (
            Path(artifact).expanduser()
            if artifact is not None
            else (Path(self.manifest["artifact"]) if self.manifest.get("artifact") else None)
        )
        from clipexport.artifact.precision import Precision
        from clipexport.runtime.backends import BackendKind

        # A public entry: names are parsed here, once (members compare equal to the manifest's strings).
        self.precision = Precision.parse(precision or self.manifest.get("precision") or "fp32")
        self.backend = BackendKind.parse(backend or self.manifest.get("backend") or "onnxruntime")
        self._runtime: Any = None
        self._towers: set[str] = set()

    def _check_dataset(self) -> None:
        if not self.manifest.get("dataset"):
            return
        dataset = Path(self.manifest["dataset"])
        now = fingerprint(dataset)  # None: the dataset is gone (the index stands alone)
        if now is not None and now != self.manifest.get("dataset_manifest_sha256"):
            if _grew(dataset, self.manifest.get("shards")):
                raise InputError(
                    f"the dataset {dataset} grew since this index was built (embed --append); add its new "
                    f"rows with `clipexport index {dataset} -o {self.folder} --update`"
                )
            raise InputError(
                f"the dataset {dataset} changed since this index was built; rebuild it with "
                f"`clipexport index {dataset} -o {self.folder} --overwrite`"
            )

    # -- vectors -----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        k = check_k(k, self.rows)
        queries = np.asarray(queries)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InputError(f"query vectors must be [N, {self.dim}], got {list(queries.shape)}")
        if not np.isfinite(queries).all():
            raise InputError("query vectors hold NaN or infinity")
        scores, rows = search(self.index, l2_normalize(queries.astype(np.float32), np.float32), k)
        return [
            [Hit(self.ids[r], float(s), int(r)) for s, r in zip(srow, rrow) if r >= 0]
            for srow, rrow in zip(scores, rows)
        ]

    # -- texts and images ---------------------------------------------------------------------
    def search_queries(
        self, texts: Sequence[str] = (), images: Sequence[Any] = (), k: int = 10
    ) -> list[tuple[str, Any, list[Hit]]]:
        """(kind, query, hits) for every text, then every image, in the order given."""
        if not texts and not images:
            raise InputError('pass a query: --text "..." or --image PATH (repeatable)')
        hits = (self.search_text(texts, k) if texts else []) + (self.search_images(images, k) if images else [])
        queries = [("text", t) for t in texts] + [("image", i) for i in images]
        return [(kind, query, found) for (kind, query), found in zip(queries, hits)]

    def search_text(self, texts: Sequence[str], k: int = 10) -> list[list[Hit]]:
        check_k(k, self.rows)
        return self.search(self._open_runtime("text").encode_text(list(texts)), k)

    def search_images(self, images: Sequence[Any], k: int = 10) -> list[list[Hit]]:
        check_k(k, self.rows)
        return self.search(self._open_runtime("vision").encode_image(list(images)), k)

    def _open_runtime(self, tower: str) -> Any:
        from clipexport.artifact.manifest import Tower
        from clipexport.runtime import ClipRuntime

        if tower in self._towers:
            return self._runtime
        if not self._towers:  # the first query: check the model against the index once
            self.check_artifact()
        towers = self._towers | {tower}
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None
        self._runtime = ClipRuntime.load(
            self.artifact,
            backend=self.backend,
            precision=self.precision,
            towers=tuple(Tower(t) for t in sorted(towers)),
        )
        self._towers = towers
        return self._runtime

    def check_artifact(self) -> None:
        """The query model against the index: there, the same dim; `notes` says what differs (a
        changed manifest, another precision). The first text or image query runs it; a caller that
        embeds queries elsewhere (serve) runs it itself."""
        from clipexport.artifact.manifest import read_manifest

        if self.artifact is None:
            raise InputError("this index records no artifact; pass --artifact (the model that embedded the dataset)")
        if not (self.artifact / "manifest.json").is_file():
            raise InputError(f"the artifact {self.artifact} is not there (no manifest.json); pass --artifact")
        manifest = read_manifest(self.artifact)
        if manifest.embed_dim != self.dim:
            raise InputError(
                f"the artifact {self.artifact} embeds to {manifest.embed_dim} dimensions, the index holds "
                f"{self.dim}; pass the --artifact the dataset was embedded with"
            )
        recorded = self.manifest.get("artifact_manifest_sha256")
        if recorded and sha256_file(self.artifact / "manifest.json") != recorded:
            self.notes.append(
                f"the manifest of {self.artifact} changed since the dataset was embedded (a quantize "
                "adds to it; a different model would make the scores meaningless)"
            )
        if self.precision != self.manifest.get("precision"):
            self.notes.append(self._drift_note())

    def _drift_note(self) -> str:
        built = self.manifest.get("precision")
        said = f"queries are embedded at {self.precision}, the index at {built}"
        try:
            report = json.loads((self.artifact / "parity.json").read_text(encoding="utf-8"))
            cells = report["retrieval"]["cells"]
        except (OSError, ValueError, KeyError, TypeError):
            return said + " (the drift of this pair is not measured: run `clipexport verify ARTIFACT --retrieval DIR`)"
        for cell in cells:
            if (
                cell.get("index_type") == "exact"
                and cell.get("index_precision") == built
                and cell.get("query_precision") == self.precision
            ):
                overlap = cell.get("overlap_at_10", {})
                drop = cell.get("drop_points")
                parts = [f"{kind} top-10 overlap with fp32/fp32 {100 * v:.1f}%" for kind, v in overlap.items()]
                return f"{said}: measured by verify --retrieval, {', '.join(parts)}; largest recall drop {drop:+.2f} pt"
        return said + " (verify --retrieval did not measure this pair)"

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Hit", "Searcher", "check_k", "read_index_manifest"]
