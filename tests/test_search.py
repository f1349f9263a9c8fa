"""Search what was embedded: `index` over the bulk dataset (exact / IVF / PQ by the stated rule,
measured recall, resumable), the torch-free `Searcher` equal to brute force, `verify --retrieval`'s
drift matrix and its gate, and one line for every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import edit_shard_metadata

from clipexport.bulk.dataset import DatasetState, Identity, Skipped, job_lock, write_shard
from clipexport.bulk.job import BulkOptions, embed_dataset
from clipexport.bulk.input_list import InputSpec
from clipexport.cli import main
from clipexport.datasets import load_retrieval_set, retrieval_set_dir
from clipexport.errors import InputError
from clipexport.parity.retrieval import overlap_at_k, recall_against_exact, recall_at_k
from clipexport.vectors import TopK, exact_top_k
from clipexport.search import index as index_module
from clipexport.bulk.dataset import EmbeddingsDataset, read_embeddings
from clipexport.search.index import IndexOptions, build_index
from clipexport.search.plan import EXACT_MAX_ROWS, IndexKind, parse_memory, plan_index
from clipexport.search.searcher import Searcher

SCENES = retrieval_set_dir("demo")
# Scores FAISS and numpy compute for the same unit vectors (float32 sums in another order).
SCORE_ATOL = 1e-5


# ---- the rule and the statistics (no model) ------------------------------------------------------


def test_index_rule_exact_ivf_pq_and_the_budget() -> None:
    assert plan_index(1000, 512).factory == "Flat"
    assert plan_index(EXACT_MAX_ROWS + 1, 512).factory == "IVF1024,Flat"  # 2*sqrt(200k) = 894 -> 1024
    pq = plan_index(1_000_000, 512, max_memory=parse_memory("512M"))
    assert pq.factory.startswith("IVF2048,PQ") and pq.estimated_bytes <= 512 * 2**20
    assert plan_index(1_000_000, 512, max_memory=parse_memory("4G")).factory == "IVF2048,Flat"
    # Small sets: nlist drops until each list gets 39 training rows.
    assert plan_index(500, 128, IndexKind.APPROXIMATE).factory == "IVF8,Flat"  # 2*sqrt(500) = 45 -> 32 -> 8
    with pytest.raises(InputError, match="raise --max-memory"):
        plan_index(1_000_000, 512, max_memory=parse_memory("1M"))
    with pytest.raises(InputError, match="--kind approximate"):
        plan_index(1_000_000, 512, IndexKind.EXACT, max_memory=parse_memory("1G"))
    with pytest.raises(InputError, match="no rows"):
        plan_index(0, 512)
    assert parse_memory("2.5G") == int(2.5 * 2**30) and parse_memory("512MiB") == 512 * 2**20
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(InputError, match="--max-memory"):
            parse_memory(bad)


def test_streamed_top_k_equals_a_full_sort_and_the_metrics_count_right() -> None:
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(300, 16)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[:7]
    full = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")
    top = TopK(queries, 5, exclude=list(range(7)))
    for start in range(0, 300, 64):  # blocks of a shard's size, in order
        top.add(gallery[start : start + 64], start)
    assert (top.result() == full[:, 1:6]).all()  # own row (always the best) left out
    assert (exact_top_k(queries, gallery, 5) == full[:, :5]).all()
    assert recall_against_exact(
        np.array([[1, 2, 3], [4, 5, -1]]), np.array([[3, 2, 1], [4, 6, 7]]), 3
    ) == pytest.approx(4 / 6)
    assert overlap_at_k(full[:, :10], full[:, :10], 10) == 1.0
    assert recall_at_k(np.array([[0, 1], [2, 3]]), [{1}, {9}], ks=(1, 2)) == {"r@1": 0.0, "r@2": 0.5}


# ---- the demo CLIP end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(demo_quantized: Path) -> Path:
    return demo_quantized


@pytest.fixture(scope="module")
def scenes(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "ds"
    embed_dataset(BulkOptions(artifact=demo, output=out, inputs=InputSpec(images=(str(SCENES),)), shard_size=128))
    return out


def _rows(dataset: Path) -> tuple[list[str], np.ndarray]:
    ds = read_embeddings(dataset)
    ids, rows = [], []
    for _, shard_ids, vectors in ds.shards(unit=True):
        ids += shard_ids
        rows.append(vectors)
    return ids, np.concatenate(rows)


def test_embed_index_search_equals_brute_force(demo: Path, scenes: Path, tmp_path: Path) -> None:
    result = build_index(IndexOptions(dataset=scenes, output=tmp_path / "idx"))
    assert result.plan.factory == "Flat" and result.recall == {"image": 1.0}
    manifest = json.loads((tmp_path / "idx" / "_index.json").read_text())
    assert manifest["rows"] == 500 and manifest["precision"] == "fp32" and manifest["artifact"] == str(demo.resolve())
    ids, rows = _rows(scenes)
    captions = [line.split("\t")[1] for line in (SCENES / "captions.tsv").read_text().splitlines()[:6]]
    with Searcher(tmp_path / "idx") as searcher:
        hits = searcher.search_text(captions, k=10)
        from clipexport.runtime import ClipRuntime

        with ClipRuntime.load(demo, towers=("text",)) as runtime:
            queries = runtime.encode_text(captions)
        scores = queries @ rows.T
        for row_hits, row_scores in zip(hits, scores):
            best = np.argsort(-row_scores, kind="stable")[:10]
            assert [h.id for h in row_hits] == [ids[i] for i in best]
            np.testing.assert_allclose([h.score for h in row_hits], row_scores[best], atol=SCORE_ATOL)
        image_hits = searcher.search_images([ids[3]], k=1)
        assert image_hits[0][0].id == ids[3] and image_hits[0][0].score == pytest.approx(1.0, abs=SCORE_ATOL)
        assert not searcher.notes
    # Rerunning the same build is a no-op that says so.
    assert build_index(IndexOptions(dataset=scenes, output=tmp_path / "idx")).already


def test_approximate_index_measures_recall_for_image_and_text_queries(demo: Path, scenes: Path, tmp_path: Path) -> None:
    texts = tmp_path / "captions.txt"
    texts.write_text("\n".join(row.split("\t")[1] for row in (SCENES / "captions.tsv").read_text().splitlines()) + "\n")
    queries = tmp_path / "qs"
    embed_dataset(BulkOptions(artifact=demo, output=queries, inputs=InputSpec(texts=texts)))
    result = build_index(
        IndexOptions(dataset=scenes, output=tmp_path / "ivf", kind=IndexKind.APPROXIMATE, queries=queries)
    )
    assert result.plan.factory == "IVF8,Flat" and set(result.recall) == {"image", "text"}
    manifest = json.loads((tmp_path / "ivf" / "_index.json").read_text())
    curve = manifest["recall_curve"]
    assert [c["nprobe"] for c in curve] == [1, 2, 3, 4, 6, 8][: len(curve)] and manifest["index"]["nprobe"] == curve[
        -1
    ]["nprobe"]
    assert result.recall["image"] >= 0.95 or result.nprobe == 8
    # The measured figure is what a search at that nprobe returns against exact search.
    ids, rows = _rows(scenes)
    with Searcher(tmp_path / "ivf") as searcher:
        got = np.array([[h.row for h in hits] for hits in searcher.search(rows[:50], k=10)])
    assert recall_against_exact(got, exact_top_k(rows[:50], rows, 10)) >= 0.9


def test_interrupted_build_resumes_from_its_checkpoint(
    scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "CHECKPOINT_SECONDS", 0.0)
    calls = {"n": 0}
    real = EmbeddingsDataset.shards

    def dies_after_two(self, start=0, unit=False):
        calls["n"] += 1  # pass 1 draws the training and recall samples, pass 2 fills the index
        for n, shard in enumerate(real(self, start, unit)):
            if calls["n"] == 2 and n == 2:
                raise KeyboardInterrupt  # Ctrl-C in the third shard of the fill
            yield shard

    out = tmp_path / "idx"
    monkeypatch.setattr(EmbeddingsDataset, "shards", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_index(IndexOptions(dataset=scenes, output=out, kind=IndexKind.APPROXIMATE))
    assert not (out / "_index.json").exists() and (out / ".building" / "filled.faiss").is_file()
    with pytest.raises(InputError, match="still being built"):
        Searcher(out)
    monkeypatch.setattr(EmbeddingsDataset, "shards", real)
    messages: list[str] = []
    resumed = build_index(
        IndexOptions(dataset=scenes, output=out, kind=IndexKind.APPROXIMATE), progress=messages.append
    )
    assert resumed.resumed and any("resuming: 2 of 4 shards" in m for m in messages)
    fresh = build_index(IndexOptions(dataset=scenes, output=tmp_path / "fresh", kind=IndexKind.APPROXIMATE))
    assert not (out / ".building").exists()
    _, rows = _rows(scenes)
    with Searcher(out) as a, Searcher(tmp_path / "fresh") as b:
        assert [[h.id for h in r] for r in a.search(rows[:20], 10)] == [
            [h.id for h in r] for r in b.search(rows[:20], 10)
        ]
    assert resumed.recall == fresh.recall


def test_another_precision_is_said_with_its_measured_drift(demo: Path, scenes: Path, tmp_path: Path) -> None:
    build_index(IndexOptions(dataset=scenes, output=tmp_path / "idx"))
    # One run with the strictest gate: any cell that loses a point fails it (exit 1), the report is written.
    result = CliRunner().invoke(
        main,
        [
            "verify",
            str(demo),
            "--precision",
            "fp32",
            "--precision",
            "int8",
            "--retrieval",
            "demo",
            "--max-recall-drop",
            "0",
            "-q",
        ],
    )
    assert "t->i R@1" in result.output and "approximate" in result.output
    report = json.loads((demo / "parity.json").read_text())
    assert report["schema_version"] == 4
    cells = report["retrieval"]["cells"]
    assert len(cells) == 2 * 2 * 2  # {exact, approximate} x index {fp32, int8} x query {fp32, int8}
    worst = max(c["drop_points"] for c in cells)
    assert result.exit_code == (1 if worst > 0 else 0), result.output
    assert ("FAIL: over 0.0 pt" in result.output) == (worst > 0)
    assert [c["passed"] for c in cells] == [c["drop_points"] <= 0 for c in cells]
    reference = next(
        c for c in cells if c["index_type"] == "exact" and c["index_variant"] == c["query_variant"] == "fp32"
    )
    assert reference["drop_points"] == 0 and reference["overlap_at_10"] == {"text": 1.0, "image": 1.0}
    assert 0.3 < reference["text_to_image"]["r@1"] < 0.95  # the scenes are not trivially perfect
    mixed = next(
        c for c in cells if c["index_type"] == "exact" and c["index_variant"] == "fp32" and c["query_variant"] == "int8"
    )
    assert mixed["overlap_at_10"]["image"] < 1.0  # INT8 queries return some other neighbours
    with Searcher(tmp_path / "idx", precision="int8") as searcher:
        searcher.search_text(["a red circle"], k=3)
        assert len(searcher.notes) == 1 and "measured by verify --retrieval" in searcher.notes[0]


def test_cli_embed_index_search(demo: Path, scenes: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    built = runner.invoke(main, ["index", str(scenes), "-o", str(tmp_path / "idx"), "-q"])
    assert built.exit_code == 0 and "built" in built.output and "Flat" in built.output
    found = runner.invoke(main, ["search", str(tmp_path / "idx"), "--text", "a big blue square", "-k", "3", "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.output.splitlines()[0])["hits"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] and "retrieval" in hits[0]["id"]
    # Rerunning the finished embed is a no-op that leaves the dataset as it was: the index still opens.
    before = {path.name: path.stat().st_mtime_ns for path in scenes.iterdir()}
    rerun = embed_dataset(
        BulkOptions(artifact=demo, output=scenes, inputs=InputSpec(images=(str(SCENES),)), shard_size=128)
    )
    assert rerun.shards_written == 0 and {path.name: path.stat().st_mtime_ns for path in scenes.iterdir()} == before
    again = runner.invoke(main, ["index", str(scenes), "-o", str(tmp_path / "idx"), "-q"])
    assert again.exit_code == 0 and "already built" in again.output


# ---- bad input: one line each, nothing half-written ----------------------------------------------


def _fails(args: list[str], match: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.output.startswith("error: ") and match in result.output and "Traceback" not in result.output, (
        result.output
    )


def test_bad_input_is_one_line(demo: Path, scenes: Path, tmp_path: Path, tiny_vit: Path) -> None:
    idx = tmp_path / "idx"
    build_index(IndexOptions(dataset=scenes, output=idx))
    _fails(["index", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")], "not an embeddings dataset")
    _fails(["index", str(demo), "-o", str(tmp_path / "x")], "not an embeddings dataset")
    assert not (tmp_path / "x").exists()
    _fails(["search", str(idx), "--text", "a", "-k", "0"], "-k must be a positive integer")
    _fails(["search", str(idx), "--text", "a", "-k", "501"], "larger than the index (500 rows)")
    _fails(["search", str(idx)], "pass a query")
    _fails(["search", str(tmp_path), "--text", "a"], "is not an index")
    _fails(["search", str(idx), "--text", "a", "--artifact", str(tiny_vit)], "embeds to")
    _fails(["search", str(idx), "--image", str(tmp_path / "none.png")], "none.png")
    _fails(["index", str(scenes), "-o", str(scenes)], "separate folder")
    # A different dataset into an existing index folder, someone else's folder.
    other = tmp_path / "other"
    (other / "notes").mkdir(parents=True)
    _fails(["index", str(scenes), "-o", str(other)], "holds other files")
    _fails(["index", str(scenes), "-o", str(idx), "--kind", "approximate"], "--overwrite")
    # A corrupt index file: refused by its sha256 before FAISS reads it.
    broken = tmp_path / "broken"
    shutil.copytree(idx, broken)
    data = bytearray((broken / "index.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "index.faiss").write_bytes(bytes(data))
    _fails(["search", str(broken), "--text", "a"], "does not match")
    # The dataset changed since the index was built (a shard redone), then lost a shard.
    changed = tmp_path / "changed-ds"
    shutil.copytree(scenes, changed)
    build_index(IndexOptions(dataset=changed, output=tmp_path / "idx2"))
    edit_shard_metadata(changed / "part-00001.parquet", lambda data: data["shard"].update(sha256="0" * 64))
    _fails(["search", str(tmp_path / "idx2"), "--text", "a"], "changed since this index was built")
    (changed / "part-00001.parquet").unlink()
    _fails(["search", str(tmp_path / "idx2"), "--text", "a"], "changed since this index was built")
    _fails(["index", str(changed), "-o", str(tmp_path / "x")], "not finished")
    # A dataset whose every input was skipped.
    empty = tmp_path / "empty-ds"
    empty.mkdir()
    identity = Identity("image", "0" * 64, "fp32", "onnxruntime", True, 8, "float32", "1" * 64, 1, 1)
    write_shard(DatasetState(empty, identity, str(demo)), 0, [], np.zeros((0, 8)), [Skipped("a.jpg", "unreadable")])
    _fails(["index", str(empty), "-o", str(tmp_path / "x")], "has no rows")
    # Two builds at once into one folder.
    with job_lock(tmp_path / "locked"):
        with pytest.raises(InputError, match="another clipexport index"):
            build_index(IndexOptions(dataset=scenes, output=tmp_path / "locked"))


def test_retrieval_set_mistakes(demo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    shutil.copytree(SCENES / "red_circle", folder / "red_circle")
    (folder / "captions.tsv").write_text("red_circle/0.png\ta red circle\nred_circle/missing.png\ta red circle\n")
    _fails(
        ["verify", str(demo), "--retrieval", str(folder)], "captions.tsv:2: image red_circle/missing.png does not exist"
    )
    (folder / "captions.tsv").write_text("red_circle/0.png a red circle\n")
    _fails(["verify", str(demo), "--retrieval", str(folder)], "captions.tsv:1 has no tab")
    _fails(["verify", str(demo), "--retrieval", str(tmp_path / "none")], "does not exist")
    _fails(["verify", str(demo), "--max-recall-drop", "1"], "--max-recall-drop needs --retrieval")
    _fails(["verify", str(demo), "--retrieval", "demo", "--max-recall-drop", "-1"], "[0, 100]")
    (folder / "captions.tsv").write_text("red_circle/0.png\ta red circle\n")
    loaded = load_retrieval_set(folder)
    assert len(loaded.captions) == 1 and loaded.caption_images == (0,) and loaded.labels[0] == 0


@pytest.mark.fullsize
def test_vit_b32_random_embed_index_search(vit_b32: Path, tmp_path: Path) -> None:
    """The README's full-size path on CI: ViT-B-32 (random weights) embed -> index -> search."""
    images = sorted(SCENES.rglob("*.png"))[:12]
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(map(str, images)) + "\n")
    embed_dataset(BulkOptions(artifact=vit_b32, output=tmp_path / "ds", inputs=InputSpec(image_list=listing)))
    build_index(IndexOptions(dataset=tmp_path / "ds", output=tmp_path / "idx"))
    with Searcher(tmp_path / "idx") as searcher:
        hits = searcher.search_images([images[5]], k=12)
        assert hits[0][0].id == str(images[5]) and len(hits[0]) == 12
        assert len(searcher.search_text(["a photo of a cat"], k=4)[0]) == 4


def test_index_reads_the_dataset_in_two_passes_at_most(
    scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clipexport.bulk import dataset as dataset_module

    passes, hashed = [], []
    real_shards, real_hash = EmbeddingsDataset.shards, dataset_module.sha256_file

    def counted(self, start=0, unit=False):
        if self.folder == scenes:
            passes.append(start)
        return real_shards(self, start, unit)

    monkeypatch.setattr(EmbeddingsDataset, "shards", counted)
    monkeypatch.setattr(
        dataset_module, "sha256_file", lambda path: (hashed.append(Path(path).name), real_hash(path))[1]
    )
    build_index(IndexOptions(dataset=scenes, output=tmp_path / "approx", kind=IndexKind.APPROXIMATE))
    assert len(passes) == 2, passes  # the training + recall samples, then the fill with the exact answers
    shards = [name for name in hashed if name.startswith("part-")]
    assert len(shards) == len(set(shards)), shards  # each shard file hashed once per run
    passes.clear()
    build_index(IndexOptions(dataset=scenes, output=tmp_path / "exact", kind=IndexKind.EXACT))
    assert len(passes) == 1, passes


# ---- a growing corpus: index --update ------------------------------------------------------------


def _segmented_dataset(folder: Path, parts: list[np.ndarray], shard_size: int) -> Path:
    """A dataset grown by --append, from given vectors: one segment per array, ids row-N."""
    import dataclasses

    dim = parts[0].shape[1]
    segments: list[Identity] = []
    first_input = 0
    folder.mkdir(parents=True, exist_ok=True)
    for number, vectors in enumerate(parts):
        identity = Identity(
            "image", "0" * 64, "fp32", "onnxruntime", True, dim, "float32", f"{number:064d}", len(vectors), shard_size
        )
        first_shard = segments[-1].shard_end if segments else 0
        identity = dataclasses.replace(identity, first_input=first_input, first_shard=first_shard)
        state = DatasetState(folder, identity, str(folder), earlier=tuple(segments))
        for index in range(identity.first_shard, identity.shard_end):
            first, end = state.local_range(index)
            ids = [f"row-{first_input + i}" for i in range(first, end)]
            write_shard(state, index, ids, vectors[first:end], [])
        segments.append(identity)
        first_input += len(vectors)
    return folder


def test_update_adds_appended_rows_and_says_when_a_rebuild_is_due(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((2000, 32)).astype(np.float32)
    more = rng.standard_normal((300, 32)).astype(np.float32)
    ds = _segmented_dataset(tmp_path / "ds", [base], 500)
    options = IndexOptions(dataset=ds, output=tmp_path / "ivf", kind=IndexKind.APPROXIMATE, target_recall=0.9)
    built = build_index(options)
    assert built.plan.factory.startswith("IVF") and built.rows == 2000
    trained = faiss_centroids(tmp_path / "ivf")
    shutil.rmtree(ds)
    _segmented_dataset(tmp_path / "ds2", [base, more], 500)  # the same rows, then 300 appended
    shutil.move(tmp_path / "ds2", ds)
    with pytest.raises(InputError, match="grew since this index was built .* --update"):
        Searcher(tmp_path / "ivf")
    result = CliRunner().invoke(main, ["index", str(ds), "-o", str(tmp_path / "ivf"), "--update", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    assert (summary["added"], summary["rows"]) == (300, 2300) and summary["target_met"], summary
    np.testing.assert_array_equal(faiss_centroids(tmp_path / "ivf"), trained)  # added, not retrained
    with Searcher(tmp_path / "ivf") as searcher:
        hits = searcher.search(more[:5] / np.linalg.norm(more[:5], axis=1, keepdims=True), k=1)
    assert [h[0].id for h in hits] == [f"row-{2000 + i}" for i in range(5)]
    again = CliRunner().invoke(main, ["index", str(ds), "-o", str(tmp_path / "ivf"), "--update"])
    assert again.exit_code == 0 and "up to date" in again.output, again.output
    # Rows unlike those the lists were trained on: recall drifts, and the summary says a rebuild is due.
    tight = np.tile(rng.standard_normal((1, 32)), (3000, 1)) + 0.01 * rng.standard_normal((3000, 32))
    drifted = _segmented_dataset(tmp_path / "drift", [base, tight.astype(np.float32)], 500)
    build_index(
        IndexOptions(
            dataset=_segmented_dataset(tmp_path / "d0", [base], 500),
            output=tmp_path / "d-idx",
            kind=IndexKind.APPROXIMATE,
            max_memory=parse_memory("60K"),
            target_recall=0.2,
            accept_low_recall=True,
        )
    )
    shutil.rmtree(tmp_path / "d0")
    shutil.move(drifted, tmp_path / "d0")
    result = CliRunner().invoke(main, ["index", str(tmp_path / "d0"), "-o", str(tmp_path / "d-idx"), "--update"])
    assert result.exit_code == 0 and "a rebuild is due" in result.output, result.output


def faiss_centroids(index_folder: Path) -> np.ndarray:
    import faiss

    index = faiss.read_index(str(index_folder / "index.faiss"))
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    return faiss.vector_to_array(quantizer.codes if hasattr(quantizer, "codes") else quantizer.xb).copy()


def test_update_refusals_are_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ds = _segmented_dataset(tmp_path / "ds", [rng.standard_normal((300, 16)).astype(np.float32)], 100)
    other = _segmented_dataset(tmp_path / "other", [rng.standard_normal((300, 16)).astype(np.float32)], 100)
    _fails(["index", str(ds), "-o", str(tmp_path / "none"), "--update"], "holds no index yet")
    assert not (tmp_path / "none").exists()
    build_index(IndexOptions(dataset=ds, output=tmp_path / "idx"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}
    _fails(["index", str(other), "-o", str(tmp_path / "idx"), "--update"], "is not an index of")
    _fails(["index", str(ds), "-o", str(tmp_path / "idx"), "--update", "--overwrite"], "pass one of them")
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()} == before
