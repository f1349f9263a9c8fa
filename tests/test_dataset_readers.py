"""The dataset `embed -o DS` writes opens as it is in every reader users have (issue 28): the
folder holds only the shards, each shard says what made it, and datasets of the first layout are
still read and moved on by a resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from clipexport.bulk.dataset import METADATA_KEY, read_embeddings, read_manifest
from clipexport.cli import main
from clip_back_env import clip_back_load
from helpers import random_photo, to_first_layout

PHOTOS = 7
SHARD_SIZE = 3  # three shards, the last one short


@pytest.fixture(scope="module")
def dataset(tiny_vit: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], np.ndarray]:
    root = tmp_path_factory.mktemp("readers")
    photos = root / "photos"
    photos.mkdir()
    for i in range(PHOTOS):
        random_photo(photos / f"{i:02d}.jpg", i)
    out = root / "ds"
    result = CliRunner().invoke(
        main, ["embed", str(tiny_vit), "--images", str(photos), "-o", str(out), "--shard-size", str(SHARD_SIZE), "-q"]
    )
    assert result.exit_code == 0, result.output
    ids, rows = [], []
    for _, shard_ids, shard_rows in read_embeddings(out).shards():
        ids += shard_ids
        rows.append(shard_rows)
    return out, ids, np.concatenate(rows)


def _same(ids: list[str], rows, expected: tuple[Path, list[str], np.ndarray], what: str) -> None:
    _, want_ids, want_rows = expected
    order = np.argsort(ids)  # readers that parallelise may not keep the shards' order
    got = np.asarray([np.asarray(r, np.float32) for r in rows])[order]
    assert sorted(ids) == sorted(want_ids), what
    np.testing.assert_array_equal(got, want_rows[np.argsort(want_ids)], err_msg=what)


def test_the_folder_holds_only_shards(dataset) -> None:
    out, ids, _ = dataset
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i:05d}.parquet" for i in range(3)]
    sizes = pq.read_table(out, columns=["width", "height"]).to_pylist()  # each image's size, as decoded
    assert sizes == [dict(zip(("width", "height"), Image.open(i).size)) for i in ids]


def test_polars_reads_the_folder_as_it_is(dataset) -> None:
    import polars as pl

    out = dataset[0]
    for frame in (pl.read_parquet(f"{out}/"), pl.scan_parquet(out).collect()):
        _same(frame["id"].to_list(), frame["embedding"].to_list(), dataset, "polars")


def test_duckdb_reads_both_globs_and_ranks_by_cosine(dataset) -> None:
    import duckdb

    out, _, rows = dataset
    connection = duckdb.connect()
    for glob in ("*", "*.parquet"):
        found = connection.execute(f"SELECT id, embedding FROM read_parquet('{out}/{glob}')").fetchall()
        _same([r[0] for r in found], [r[1] for r in found], dataset, f"duckdb {glob}")
    # DuckDB reads a Parquet list as FLOAT[]: its array functions take FLOAT[D] (the README says so).
    dim = rows.shape[1]
    query = ", ".join(f"{v:.8f}" for v in rows[0])
    best = connection.execute(
        f"SELECT id FROM read_parquet('{out}/*') ORDER BY "
        f"array_cosine_similarity(embedding::FLOAT[{dim}], [{query}]::FLOAT[{dim}]) DESC LIMIT 1"
    ).fetchone()
    assert best[0] == dataset[1][0]


def test_pandas_pyarrow_and_embedding_reader(dataset) -> None:
    import pandas as pd
    from embedding_reader import EmbeddingReader

    out = dataset[0]
    frame = pd.read_parquet(out)
    _same(list(frame["id"]), list(frame["embedding"]), dataset, "pandas")
    table = pq.read_table(out)
    _same(table.column("id").to_pylist(), table.column("embedding").to_pylist(), dataset, "pyarrow")
    reader = EmbeddingReader(str(out), file_format="parquet", embedding_column="embedding", meta_columns=["id"])
    assert reader.count == PHOTOS and reader.dimension == dataset[2].shape[1]
    ids, rows = [], []
    for embeddings, meta in reader(batch_size=PHOTOS, start=0, end=reader.count, show_progress=False):
        ids += list(meta["id"])
        rows += list(embeddings)
    _same(ids, rows, dataset, "embedding-reader")


def test_hugging_face_datasets_reads_the_folder(dataset, tmp_path: Path) -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    loaded = load_dataset("parquet", data_dir=str(dataset[0]), split="train", cache_dir=str(tmp_path / "cache"))
    _same(loaded["id"], loaded["embedding"], dataset, "datasets")


def test_lancedb_takes_the_folder(dataset, tmp_path: Path) -> None:
    import lancedb
    import pyarrow.dataset as ds

    table = lancedb.connect(str(tmp_path / "lance")).create_table("photos", data=ds.dataset(dataset[0]).to_table())
    frame = table.to_arrow()
    _same(frame.column("id").to_pylist(), frame.column("embedding").to_pylist(), dataset, "lancedb")
    hit = table.search(dataset[2][0]).metric("cosine").limit(1).to_list()[0]
    assert hit["id"] == dataset[1][0]


def test_ray_data_reads_the_folder(dataset) -> None:
    # A child process: a local Ray cluster started and stopped for this read alone.
    code = (
        "import ray, sys; ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False); "
        f"rows = ray.data.read_parquet({str(dataset[0])!r}).take_all(); "
        "print(sorted(r['id'] for r in rows)); ray.shutdown()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(sorted(dataset[1]))


def test_each_shard_says_what_made_it(dataset, tiny_vit: Path) -> None:
    out, ids, _ = dataset
    first = pq.read_schema(out / "part-00002.parquet").metadata[METADATA_KEY]
    made = json.loads(first)
    assert made["artifact"] == str(tiny_vit.resolve()) and made["identity"]["precision"] == "fp32"
    assert made["shard"] == {**made["shard"], "index": 2, "first": 6, "count": 1, "rows": 1, "skipped": []}
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["rows"] == PHOTOS and len(manifest["shards"]) == 3


def test_the_first_layout_is_read_and_a_resume_moves_it_on(dataset, tiny_vit: Path, tmp_path: Path) -> None:
    import polars as pl
    import shutil

    old = tmp_path / "old"
    shutil.copytree(dataset[0], old)
    to_first_layout(old)
    with pytest.raises(Exception, match="different file extensions"):  # what users met before
        pl.read_parquet(f"{old}/")
    ids = [i for _, shard_ids, _ in read_embeddings(old).shards() for i in shard_ids]
    assert ids == dataset[1]
    indexed = CliRunner().invoke(main, ["index", str(old), "-o", str(tmp_path / "idx"), "-q"])
    assert indexed.exit_code == 0, indexed.output
    photos = Path(dataset[1][0]).parent
    rerun = CliRunner().invoke(
        main, ["embed", str(tiny_vit), "--images", str(photos), "-o", str(old), "--shard-size", str(SHARD_SIZE)]
    )
    assert rerun.exit_code == 0 and "moved 3 shards" in rerun.output and "0 shards computed" in rerun.output, (
        rerun.output
    )
    assert not (old / "_embeddings.json").exists()
    frame = pl.read_parquet(f"{old}/")
    _same(frame["id"].to_list(), frame["embedding"].to_list(), dataset, "polars after the move")


# -- metadata kept beside the embeddings ---------------------------------------------------------
def _sample_tar(path: Path, photos: list[Path], members: dict[str, bytes] | None = None) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for i, photo in enumerate(photos):
            tar.add(photo, arcname=f"s/{i:04d}.jpg")
        for name, data in (members or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _embed(tiny_vit: Path, *args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["embed", str(tiny_vit), *map(str, args), "-q"])
    return result.exit_code, result.output


def test_webdataset_captions_and_json_fields_become_columns(dataset, tiny_vit: Path, tmp_path: Path) -> None:
    photos = sorted(Path(dataset[1][0]).parent.glob("*.jpg"))[:3]
    members = {
        "s/0000.txt": "a red kite".encode(),
        "s/0000.json": json.dumps({"url": "http://x/0", "width": 640, "tags": ["a", "b"]}).encode(),
        "s/0001.json": json.dumps({"url": "http://x/1", "width": "unknown"}).encode(),
    }
    shard = _sample_tar(tmp_path / "00000.tar", photos, members)
    code, output = _embed(tiny_vit, "--images", shard, "-o", tmp_path / "ds")
    assert code == 0, output
    rows = pq.read_table(tmp_path / "ds").drop_columns(["embedding"]).to_pylist()
    assert [r["id"] for r in rows] == ["s/0000", "s/0001", "s/0002"]  # webdataset's __key__
    assert [r["caption"] for r in rows] == ["a red kite", None, None]
    assert [r["url"] for r in rows] == ["http://x/0", "http://x/1", None]
    assert [r["width"] for r in rows] == ["640", "unknown", None]  # a number here, text there: text
    assert rows[0]["tags"] == '["a", "b"]' and rows[0]["source"] == str(shard)
    # The same samples with fewer columns kept; a name that is not there is one line.
    code, output = _embed(tiny_vit, "--images", shard, "-o", tmp_path / "few", "--keep-columns", "caption")
    assert code == 0 and pq.read_table(tmp_path / "few").column_names == ["id", "embedding", "caption"], output
    code, output = _embed(tiny_vit, "--images", shard, "-o", tmp_path / "sized", "--keep-columns", "height,url")
    assert pq.read_table(tmp_path / "sized").column_names == ["id", "embedding", "url", "height"], output
    code, output = _embed(tiny_vit, "--images", shard, "-o", tmp_path / "x", "--keep-columns", "captoin")
    assert code == 2 and "names 'captoin'" in output and "caption" in output and not (tmp_path / "x").exists()
    # Resuming with other columns kept is another job: refused, nothing lost.
    code, output = _embed(tiny_vit, "--images", shard, "-o", tmp_path / "few", "--keep-columns", "url")
    assert code == 2 and "another job" in output and "inputs_sha256" in output, output
    assert pq.read_table(tmp_path / "few").column_names == ["id", "embedding", "caption"]


def test_a_tar_with_a_caption_but_no_image_and_bad_json(dataset, tiny_vit: Path, tmp_path: Path) -> None:
    photos = sorted(Path(dataset[1][0]).parent.glob("*.jpg"))[:2]
    orphan = _sample_tar(tmp_path / "orphan.tar", photos, {"s/0009.txt": b"a caption without its image"})
    code, output = _embed(tiny_vit, "--images", orphan, "-o", tmp_path / "a")
    assert code == 2 and "s/0009.txt but no image of sample 's/0009'" in output and "--skip-bad" in output
    code, output = _embed(tiny_vit, "--images", orphan, "-o", tmp_path / "a", "--skip-bad")
    assert code == 0 and "warning:" in output and "left out" in output, output
    broken = _sample_tar(tmp_path / "broken.tar", photos, {"s/0000.json": b"{not json"})
    code, output = _embed(tiny_vit, "--images", broken, "-o", tmp_path / "b")
    assert code == 2 and "s/0000.json is not a JSON object" in output and "Traceback" not in output
    code, output = _embed(tiny_vit, "--images", broken, "-o", tmp_path / "b", "--skip-bad")
    assert code == 0 and pq.read_table(tmp_path / "b").num_rows == 2, output


def test_table_columns_are_kept_with_their_types_and_ours_stay_ours(dataset, tiny_vit: Path, tmp_path: Path) -> None:
    import pyarrow as pa

    photos = sorted(Path(dataset[1][0]).parent.glob("*.jpg"))[:3]
    table = pa.table(
        {
            "id": [101, 102, 103],  # the catalogue's own id: kept as input_id
            "url": [str(p) for p in photos],
            "price": pa.array([1.5, None, 3.25], pa.float64()),
            "seen": pa.array([1, 2, 3], pa.int16()),
        }
    )
    pq.write_table(table, tmp_path / "catalogue.parquet")
    code, output = _embed(
        tiny_vit, "--image-table", tmp_path / "catalogue.parquet", "--path-column", "url", "-o", tmp_path / "ds"
    )
    assert code == 0 and "kept as 'input_id'" in output, output
    kept = pq.read_table(tmp_path / "ds")
    assert kept.column_names[:7] == ["id", "embedding", "input_id", "price", "seen", "width", "height"]
    assert kept.schema.field("seen").type == pa.int16() and kept.column("price").to_pylist() == [1.5, None, 3.25]
    assert kept.column("id").to_pylist() == [str(p) for p in photos]
    import polars as pl

    frame = pl.read_parquet(f"{tmp_path / 'ds'}/")
    assert frame["input_id"].to_list() == [101, 102, 103]


# -- a growing corpus: --append -------------------------------------------------------------------
def test_append_embeds_only_the_new_inputs_and_readers_see_the_union(dataset, tiny_vit: Path, tmp_path: Path) -> None:
    import shutil

    import polars as pl

    photos = tmp_path / "photos"
    shutil.copytree(Path(dataset[1][0]).parent, photos)
    out = tmp_path / "ds"
    base = ["--images", photos, "-o", out, "--shard-size", "2"]
    code, output = _embed(tiny_vit, *base)
    assert code == 0 and len(list(out.glob("part-*"))) == 4, output  # 7 photos
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for i in range(3):
        random_photo(photos / f"new-{i}.jpg", 100 + i)
    code, output = _embed(tiny_vit, *base)  # the longer list without --append: refused, with the fix
    assert code == 2 and "pass --append" in output, output
    result = CliRunner().invoke(main, ["embed", str(tiny_vit), *map(str, base), "--append", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    assert (summary["computed"], summary["rows"], summary["inputs"]) == (3, 10, 10), summary
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before  # untouched
    manifest = read_manifest(out)
    assert manifest["complete"] and [s["inputs"] for s in manifest["segments"]] == [7, 3]
    frame = pl.read_parquet(f"{out}/")
    want = sorted(str(p) for p in photos.glob("*.jpg"))
    assert sorted(frame["id"].to_list()) == want
    assert frame["id"].to_list()[:7] == [str(photos / f"{i:02d}.jpg") for i in range(7)]
    with_new = [r for r in read_embeddings(out).shards()]
    assert sum(len(ids) for _, ids, _ in with_new) == 10
    # Again: nothing new. The same photos under another spelling of their path: refused, not doubled.
    code, output = _embed(tiny_vit, *base, "--append")
    assert code == 0 and "nothing new" in output, output
    (tmp_path / "link").symlink_to(photos)
    code, output = _embed(tiny_vit, "--images", tmp_path / "link", "-o", out, "--shard-size", "2", "--append")
    assert code == 2 and "under another spelling of its path" in output, output
    indexed = CliRunner().invoke(main, ["index", str(out), "-o", str(tmp_path / "idx"), "-q"])
    assert indexed.exit_code == 0 and "10 rows" in indexed.output, indexed.output
    # An append cut short (its last shard lost) is finished by the same command.
    (out / "part-00005.parquet").unlink()
    code, output = _embed(tiny_vit, *base, "--append")
    assert code == 0 and "1 shards computed" in output, output
    assert len(pl.read_parquet(f"{out}/")) == 10
    # An input whose content changed under the same path: refused, naming it; a copy or a touch
    # (the same bytes, a new modification time) is not a change.
    import hashlib
    import os

    os.utime(photos / "03.jpg")
    code, output = _embed(tiny_vit, *base, "--append")
    assert code == 0 and "nothing new" in output, output
    recorded = pq.read_table(out, columns=["id", "input_sha256"]).to_pylist()
    assert {r["id"]: r["input_sha256"] for r in recorded}[str(photos / "03.jpg")] == hashlib.sha256(
        (photos / "03.jpg").read_bytes()
    ).hexdigest()
    random_photo(photos / "03.jpg", 300)
    code, output = _embed(tiny_vit, *base, "--append")
    assert code == 2 and "03.jpg changed since it was embedded" in output and "sha256 differs" in output, output
    random_photo(photos / "03.jpg", 3)  # back as it was: nothing to say
    # A list without some of the dataset's inputs: they stay, and that is said.
    (photos / "new-0.jpg").unlink()
    random_photo(photos / "new-9.jpg", 109)
    code, output = _embed(tiny_vit, *base, "--append")
    assert code == 0 and "1 inputs of" in output and "never removes rows" in output, output
    assert len(pl.read_parquet(f"{out}/")) == 11


def test_append_refusals_are_one_line_and_change_nothing(dataset, tiny_vit: Path, tmp_path: Path) -> None:
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(Path(dataset[1][0]).parent, photos)
    out = tmp_path / "ds"
    code, output = _embed(tiny_vit, "--images", photos, "-o", out, "--append")
    assert code == 2 and "holds no dataset yet" in output and not out.exists(), output
    code, output = _embed(tiny_vit, "--images", photos, "-o", out)
    assert code == 0, output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    random_photo(photos / "new.jpg", 200)
    for args, needle in (
        (["--dtype", "float16"], "dtype"),  # another job
        (["--keep-columns", ""], "columns"),  # other metadata columns
        (["--overwrite"], "pass one of them"),
    ):
        code, output = _embed(tiny_vit, "--images", photos, "-o", out, "--append", *args)
        assert code == 2 and needle in output and "Traceback" not in output, (args, output)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    for option in (["--append"], ["--keep-columns", "width"]):
        code, output = _embed(tiny_vit, "--images", photos, "-o", tmp_path / "x.npy", *option)
        assert code == 2 and "dataset folder" in output and not (tmp_path / "x.npy").exists(), output


# -- image-caption pairs in one pass ---------------------------------------------------------------
PAIR_MAX_ABS = 1e-6  # the bulk job against ClipRuntime on the same artifact: as ROWS_MAX_ABS in test_bulk.py


def test_pairs_embed_both_towers_in_one_pass(dataset, tiny_vit: Path, tmp_path: Path) -> None:
    from clipexport.runtime import ClipRuntime
    from clipexport.search.searcher import Searcher

    photos = sorted(Path(dataset[1][0]).parent.glob("*.jpg"))[:4]
    captions = ["a red kite", "two dogs", "", "a boat at dusk"]  # the empty caption is a caption
    members = {f"s/{i:04d}.txt": c.encode() for i, c in enumerate(captions)}
    shard = _sample_tar(tmp_path / "pairs.tar", photos, members)
    code, output = _embed(tiny_vit, "--images", shard, "-o", tmp_path / "ds", "--pairs", "--shard-size", "3")
    assert code == 0, output
    table = pq.read_table(tmp_path / "ds")
    assert table.column_names[:3] == ["id", "image_embedding", "text_embedding"]
    with ClipRuntime.load(tiny_vit) as runtime:
        images, texts = runtime.encode_image([str(p) for p in photos]), runtime.encode_text(captions)
    np.testing.assert_allclose(np.stack(table.column("image_embedding").to_pylist()), images, atol=PAIR_MAX_ABS, rtol=0)
    np.testing.assert_allclose(np.stack(table.column("text_embedding").to_pylist()), texts, atol=PAIR_MAX_ABS, rtol=0)
    assert read_manifest(tmp_path / "ds")["kind"] == "pair"
    # Either column indexes; a caption finds its own image's row through the text column.
    for column, queries in (("image_embedding", images), ("text_embedding", texts)):
        built = CliRunner().invoke(
            main, ["index", str(tmp_path / "ds"), "-o", str(tmp_path / column), "--column", column, "-q"]
        )
        assert built.exit_code == 0, built.output
        with Searcher(tmp_path / column) as searcher:
            assert [hits[0].id for hits in searcher.search(queries, k=1)] == [f"s/{i:04d}" for i in range(4)]
    bad = CliRunner().invoke(main, ["index", str(tmp_path / "ds"), "-o", str(tmp_path / "x"), "--column", "embedding"])
    assert bad.exit_code == 2 and "image_embedding, text_embedding" in bad.output


def test_pairs_without_captions(dataset, tiny_vit: Path, tmp_path: Path) -> None:
    photos = sorted(Path(dataset[1][0]).parent.glob("*.jpg"))[:3]
    shard = _sample_tar(tmp_path / "half.tar", photos, {"s/0001.txt": b"only this one"})
    code, output = _embed(tiny_vit, "--images", shard, "-o", tmp_path / "a", "--pairs")
    assert code == 2 and "has no caption" in output and "(and 1 more)" in output and not (tmp_path / "a").exists()
    code, output = _embed(tiny_vit, "--images", shard, "-o", tmp_path / "a", "--pairs", "--skip-bad")
    assert code == 0 and "2 images without a caption are left out" in output, output
    assert pq.read_table(tmp_path / "a").column("id").to_pylist() == ["s/0001"]
    code, output = _embed(tiny_vit, "--images", shard, "-o", tmp_path / "b.npy", "--pairs")
    assert code == 2 and "dataset folder" in output
    import pyarrow as pa

    pq.write_table(pa.table({"path": [str(p) for p in photos], "text": ["x", "y", "z"]}), tmp_path / "t.parquet")
    code, output = _embed(
        tiny_vit, "--image-table", tmp_path / "t.parquet", "-o", tmp_path / "c", "--pairs", "--caption-column", "text"
    )
    assert code == 0 and pq.read_table(tmp_path / "c").num_rows == 3, output


# -- clip-retrieval's layout ----------------------------------------------------------------------
def test_clip_retrieval_layout_loads_in_its_readers(dataset, tiny_vit: Path, tmp_path: Path) -> None:
    """embed --layout clip-retrieval writes what `clip-retrieval inference` writes, read here by
    embedding-reader (parquet_npy, what clip-retrieval's index and autofaiss use); index --layout
    clip-retrieval the folder clip_back serves, loaded as clip_back loads it (faiss.read_index of
    image.index / text.index, the metadata parquet files concatenated in sorted order:
    ParquetMetadataProvider), then by clip_back's own loaders (tests/clip_back_env.py)."""
    import faiss
    import pandas as pd
    from embedding_reader import EmbeddingReader

    photos = sorted(Path(dataset[1][0]).parent.glob("*.jpg"))[:5]
    captions = [f"caption {i}" for i in range(5)]
    shard = _sample_tar(tmp_path / "00000.tar", photos, {f"s/{i:04d}.txt": c.encode() for i, c in enumerate(captions)})
    out = tmp_path / "cr"
    args = ["--images", shard, "-o", out, "--pairs", "--layout", "clip-retrieval", "--shard-size", "2"]
    code, output = _embed(tiny_vit, *args)
    assert code == 0 and "clip-retrieval layout: 9 files" in output, output
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == [f"img_emb_{i:05d}.npy" for i in range(3)]
    ours = pq.read_table(out / ".clipexport-dataset")
    for folder, column in (("img_emb", "image_embedding"), ("text_emb", "text_embedding")):
        reader = EmbeddingReader(
            str(out / folder),
            file_format="parquet_npy",
            metadata_folder=str(out / "metadata"),
            meta_columns=["image_path", "caption"],
        )
        assert reader.count == 5
        embeddings, meta = next(reader(batch_size=5, start=0, end=5, show_progress=False))
        assert list(meta["image_path"]) == [f"s/{i:04d}" for i in range(5)] and list(meta["caption"]) == captions
        np.testing.assert_array_equal(embeddings, np.stack(ours.column(column).to_pylist()))
    # The folder is a dataset to our own commands too, and a rerun or an --append keeps it whole.
    code, output = _embed(tiny_vit, *args)
    assert code == 0 and "0 shards computed" in output, output
    indexed = CliRunner().invoke(
        main, ["index", str(out), "-o", str(tmp_path / "back"), "--layout", "clip-retrieval", "-q"]
    )
    assert indexed.exit_code == 0 and "image.index" in indexed.output and "text.index" in indexed.output, indexed.output
    inside = CliRunner().invoke(main, ["index", str(out), "-o", str(out / "idx")])
    assert inside.exit_code == 2 and "inside the dataset" in inside.output and not (out / "idx").exists()
    back = tmp_path / "back"
    metadata = pd.concat(pd.read_parquet(p) for p in sorted((back / "metadata").glob("*.parquet")))
    for name, queries in (("image", ours.column("image_embedding")), ("text", ours.column("text_embedding"))):
        index = faiss.read_index(str(back / f"{name}.index"))
        vectors = np.stack(queries.to_pylist()).astype(np.float32)
        _, found = index.search(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), 1)
        assert list(metadata.iloc[found[:, 0]]["image_path"]) == [f"s/{i:04d}" for i in range(5)]
    # clip_back's own loaders (load_index, load_metadata_provider) serve that folder.
    loaded = clip_back_load(back, ["image_path", "caption"])
    assert loaded["rows"] == {"image": 5, "text": 5}
    assert loaded["metadata"] == [{"image_path": f"s/{i:04d}", "caption": c} for i, c in enumerate(captions)]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, output = _embed(tiny_vit, "--images", shard, "-o", other, "--pairs", "--layout", "clip-retrieval")
    assert code == 2 and "notes.txt" in output and sorted(p.name for p in other.iterdir()) == ["notes.txt"]
