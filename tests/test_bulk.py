"""Bulk embedding: the pipelined local engine and Ray Data write the same sharded dataset, equal to
ClipRuntime row for row; a rerun resumes after SIGKILL without redoing finished shards; every
input kind; bad input is one line and never costs earlier shards."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import random_photo

from clipexport.bulk.dataset import read_embeddings, read_manifest
from clipexport.bulk.job import BulkOptions, Engine, RayOptions, embed_dataset
from clipexport.bulk.input_list import InputSpec
from clipexport.errors import ClipExportError, InputError
from clipexport.runtime import ClipRuntime

# The same graph and preprocessing in one process or another, at other batch compositions: a few
# float32 ulps of a unit vector (ONNX Runtime's kernels pick per batch size).
ROWS_MAX_ABS = 1e-6


_photo = random_photo


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "photos").mkdir()
    for i in range(23):
        _photo(root / "photos" / f"{i:03d}.jpg", i)
    return root


def _reference(artifact: Path, paths: list[Path]) -> np.ndarray:
    with ClipRuntime.load(artifact) as runtime:
        return runtime.encode_image([str(p) for p in paths])


def _rows(folder: Path) -> tuple[dict, list[str], np.ndarray]:
    dataset = read_embeddings(folder, finished=False)
    ids, rows = [], []
    for _, shard_ids, embeddings in dataset.shards():
        ids += shard_ids
        rows.append(embeddings)
    return dataset.manifest, ids, np.concatenate(rows)


def _options(artifact: Path, output: Path, **kwargs) -> BulkOptions:
    spec = kwargs.pop("inputs")
    return BulkOptions(
        artifact=artifact,
        output=output,
        inputs=spec,
        batch_size=kwargs.pop("batch_size", 4),
        shard_size=kwargs.pop("shard_size", 10),
        **kwargs,
    )


def test_local_dataset_equals_the_runtime_row_for_row(tiny_vit: Path, corpus: Path, tmp_path: Path) -> None:
    paths = sorted((corpus / "photos").glob("*.jpg"))
    result = embed_dataset(
        _options(tiny_vit, tmp_path / "ds", inputs=InputSpec(images=[str(corpus / "photos")]), workers=2)
    )
    assert (result.rows, result.shards_written, result.shards_resumed) == (23, 3, 0)
    manifest, ids, rows = _rows(tmp_path / "ds")
    assert ids == [str(p) for p in paths] and manifest["complete"] and manifest["dim"] == 64
    assert [s["rows"] for s in manifest["shards"]] == [10, 10, 3]
    np.testing.assert_allclose(rows, _reference(tiny_vit, paths), atol=ROWS_MAX_ABS, rtol=0)
    # readable as a plain Parquet dataset
    import pyarrow.dataset

    table = pyarrow.dataset.dataset(str(tmp_path / "ds"), format="parquet").to_table()
    assert table.num_rows == 23 and table.schema.field("embedding").type.list_size == 64


def _captioned_tar(path: Path, photos: list[Path], caption: str) -> Path:
    """A webdataset shard: sample i is `{i:04d}.jpg` with the caption `caption.format(i)`."""
    with tarfile.open(path, "w") as tar:
        for i, photo in enumerate(photos):
            tar.add(photo, arcname=f"{i:04d}.jpg")
            data = caption.format(i).encode()
            info = tarfile.TarInfo(f"{i:04d}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_every_input_kind(tiny_vit: Path, corpus: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = sorted((corpus / "photos").glob("*.jpg"))[:6]
    want = _reference(tiny_vit, paths)
    (tmp_path / "list.txt").write_text("\n".join(map(str, paths)) + "\n")
    pq.write_table(pa.table({"path": [str(p) for p in paths], "other": list(range(6))}), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("path\n" + "\n".join(map(str, paths)) + "\n")
    _captioned_tar(tmp_path / "shard.tar", paths, "caption {}")
    specs = {
        "list": InputSpec(image_list=tmp_path / "list.txt"),
        "parquet": InputSpec(image_table=tmp_path / "t.parquet"),
        "csv": InputSpec(image_table=tmp_path / "t.csv"),
        "tar": InputSpec(images=[str(tmp_path / "shard.tar")]),
    }
    for name, spec in specs.items():
        embed_dataset(_options(tiny_vit, tmp_path / name, inputs=spec))
        _, ids, rows = _rows(tmp_path / name)
        assert len(ids) == 6, name
        np.testing.assert_allclose(rows, want, atol=ROWS_MAX_ABS, rtol=0, err_msg=name)
    # What the inputs carry is kept beside the embeddings: a table's other columns, a tar sample's
    # caption and shard (its id is its webdataset key), the texts themselves.
    assert pq.read_table(tmp_path / "parquet").select(["id", "other"]).to_pylist() == [
        {"id": str(p), "other": i} for i, p in enumerate(paths)
    ]
    csv = pq.read_table(tmp_path / "csv")  # nothing but the paths; each image's decoded size
    assert csv.column_names == ["id", "embedding", "width", "height", "input_bytes", "input_mtime_ns", "input_sha256"]
    assert csv.column("input_bytes").to_pylist() == [p.stat().st_size for p in paths]
    from PIL import Image

    assert set(csv.column("width").to_pylist()) == {Image.open(p).size[0] for p in paths}
    tar_rows = pq.read_table(tmp_path / "tar").select(["id", "source", "caption"]).to_pylist()
    assert tar_rows == [
        {"id": f"{i:04d}", "source": str(tmp_path / "shard.tar"), "caption": f"caption {i}"} for i in range(6)
    ]
    texts = ["a photo of a cat", "", "a dog", "   "]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    pq.write_table(pa.table({"caption": texts}), tmp_path / "texts.parquet")
    with ClipRuntime.load(tiny_vit) as runtime:
        want_text = runtime.encode_text(texts)
    for name, spec in (
        ("tfile", InputSpec(texts=tmp_path / "texts.txt")),
        ("ttable", InputSpec(text_table=tmp_path / "texts.parquet", text_column="caption")),
    ):
        embed_dataset(_options(tiny_vit, tmp_path / name, inputs=spec))
        _, ids, rows = _rows(tmp_path / name)
        np.testing.assert_allclose(rows, want_text, atol=ROWS_MAX_ABS, rtol=0)
    assert _rows(tmp_path / "tfile")[1][1] == f"{tmp_path / 'texts.txt'}:2"
    assert pq.read_table(tmp_path / "tfile").column("text").to_pylist() == texts
    assert pq.read_table(tmp_path / "ttable").column("caption").to_pylist() == texts


def test_float16_halves_the_dataset(tiny_vit: Path, corpus: Path, tmp_path: Path) -> None:
    spec = InputSpec(images=[str(corpus / "photos")])
    embed_dataset(_options(tiny_vit, tmp_path / "f16", inputs=spec, dtype="float16"))
    _, _, rows = _rows(tmp_path / "f16")
    assert rows.dtype == np.float16
    np.testing.assert_allclose(
        rows.astype(np.float32), _reference(tiny_vit, sorted((corpus / "photos").glob("*.jpg"))), atol=1e-3
    )


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clipexport", "embed", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _shards_done(folder: Path) -> int:
    try:
        return len((read_manifest(folder) or {"shards": []})["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def _running_job(
    tiny_vit: Path, tmp_path: Path, count: int, seed: int, shards: int
) -> tuple[Path, Path, list[str], subprocess.Popen]:
    """`embed -o DIR` on `count` 640x480 photos in a subprocess, once `shards` shards are done."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(count):
        _photo(photos / f"{i:03d}.jpg", seed + i, size=(640, 480))
    out = tmp_path / "ds"
    args = [str(tiny_vit), "--images", str(photos), "-o", str(out), "--shard-size", "10", "--batch-size", "5", "-q"]
    run = _cli(*args)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and _shards_done(out) < shards:
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.05)
    return photos, out, args, run


def test_sigkill_loses_at_most_the_shards_in_flight_and_a_rerun_resumes(tiny_vit: Path, tmp_path: Path) -> None:
    photos, out, args, run = _running_job(tiny_vit, tmp_path, 120, 1000, 2)
    run.kill()  # SIGKILL, mid-run
    run.wait(30)
    done = read_manifest(out)["shards"]
    assert 2 <= len(done) < 12
    kept = {entry["file"]: (out / entry["file"]).stat().st_ino for entry in done}
    rerun = _cli(*args)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert f"{len(done)} resumed" in stdout and "120 rows of 120 inputs" in stdout, stdout
    for name, inode in kept.items():
        assert (out / name).stat().st_ino == inode  # a finished shard is kept, not rewritten
    _, ids, rows = _rows(out)
    assert ids == [str(p) for p in sorted(photos.glob("*.jpg"))] and len(set(ids)) == 120
    np.testing.assert_allclose(rows, _reference(tiny_vit, sorted(photos.glob("*.jpg"))), atol=ROWS_MAX_ABS, rtol=0)
    assert not list(out.glob(".*.tmp"))


def test_sigterm_leaves_nothing_half_written_and_two_runs_at_once_are_refused(tiny_vit: Path, tmp_path: Path) -> None:
    _, out, args, run = _running_job(tiny_vit, tmp_path, 80, 2000, 1)
    run.send_signal(signal.SIGSTOP)  # paused mid-run, holding the folder
    try:
        assert run.poll() is None and _shards_done(out) < 8, "the first run finished too early to test"
        second = _cli(*args)
        _, stderr = second.communicate(timeout=120)
        assert second.returncode == 2 and "another clipexport embed is writing to" in stderr, stderr
    finally:
        run.send_signal(signal.SIGCONT)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    manifest = read_manifest(out)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == sorted(s["file"] for s in manifest["shards"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_different_job_is_refused_and_overwrite_starts_over(tiny_vit: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    embed_dataset(_options(tiny_vit, out, inputs=InputSpec(images=[str(corpus / "photos")])))
    fewer = InputSpec(images=[str(p) for p in sorted((corpus / "photos").glob("*.jpg"))[:5]])
    for change, differ in (
        (dict(inputs=fewer), "inputs_sha256"),
        (dict(inputs=InputSpec(images=[str(corpus / "photos")]), dtype="float16"), "dtype"),
        (dict(inputs=InputSpec(images=[str(corpus / "photos")]), shard_size=7), "shard_size"),
    ):
        with pytest.raises(InputError, match=f"holds embeddings of another job \\(.*{differ}"):
            embed_dataset(_options(tiny_vit, out, **{"shard_size": 10, **change}))
    result = embed_dataset(_options(tiny_vit, out, inputs=fewer, overwrite=True))
    assert result.rows == 5 and _rows(out)[0]["inputs"] == 5
    again = embed_dataset(_options(tiny_vit, out, inputs=fewer))
    assert (again.shards_written, again.shards_resumed, again.computed) == (0, 1, 0)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="holds other files"):
        embed_dataset(_options(tiny_vit, mine, inputs=fewer, overwrite=True))
    assert (mine / "notes.txt").read_text() == "keep me"


def test_bad_inputs_are_one_line_and_skip_bad_lists_them(tiny_vit: Path, corpus: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(4):
        _photo(bad / f"{i}.jpg", 50 + i)
    (bad / "4-empty.jpg").write_bytes(b"")
    (bad / "5-corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    data = (bad / "0.jpg").read_bytes()
    (bad / "6-truncated.jpg").write_bytes(data[: len(data) // 3])
    spec = InputSpec(images=[str(bad)])
    with pytest.raises(InputError, match="4-empty.jpg is empty .*--skip-bad"):
        embed_dataset(_options(tiny_vit, tmp_path / "a", inputs=spec))
    result = embed_dataset(_options(tiny_vit, tmp_path / "b", inputs=spec, skip_bad=True))
    assert result.rows == 4 and sorted(Path(s.id).name for s in result.skipped) == [
        "4-empty.jpg",
        "5-corrupt.jpg",
        "6-truncated.jpg",
    ]
    (tmp_path / "list.txt").write_text(f"{corpus / 'photos' / '000.jpg'}\n{tmp_path / 'missing.jpg'}\n")
    with pytest.raises(InputError, match="missing.jpg does not exist"):
        embed_dataset(_options(tiny_vit, tmp_path / "c", inputs=InputSpec(image_list=tmp_path / "list.txt")))
    twice = InputSpec(images=[str(corpus / "photos"), str(corpus / "photos" / "003.jpg")])
    with pytest.raises(InputError, match="003.jpg is listed twice"):
        embed_dataset(_options(tiny_vit, tmp_path / "d", inputs=twice))
    with pytest.raises(InputError, match="has no column 'url'"):
        (tmp_path / "t.csv").write_text("path\nx.jpg\n")
        embed_dataset(
            _options(tiny_vit, tmp_path / "e", inputs=InputSpec(image_table=tmp_path / "t.csv", path_column="url"))
        )
    with tarfile.open(tmp_path / "odd.tar", "w") as tar:
        info = tarfile.TarInfo("0000.jpg")
        info.size = 9
        tar.addfile(info, io.BytesIO(b"not a jpg"))
    with pytest.raises(InputError, match="odd.tar:0000.jpg: not a valid or complete image"):
        embed_dataset(_options(tiny_vit, tmp_path / "f", inputs=InputSpec(images=[str(tmp_path / "odd.tar")])))
    for name in "acdef":  # a run that made its folder and finished no shard leaves nothing behind
        assert not (tmp_path / name).exists(), name


def test_a_full_disk_is_one_line_and_keeps_earlier_shards(
    tiny_vit: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import clipexport.bulk.dataset as dataset

    real = dataset.write_bytes_atomic
    calls = []

    def fill_up(path, data):
        calls.append(path)
        if len(calls) == 2:  # shard 0 lands, then the disk is full while shard 1 is written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(dataset, "write_bytes_atomic", fill_up)
    out = tmp_path / "ds"
    with pytest.raises(ClipExportError, match="no space left .* run the same command again") as caught:
        embed_dataset(_options(tiny_vit, out, inputs=InputSpec(images=[str(corpus / "photos")])))
    assert caught.value.exit_code == 3
    assert [s["file"] for s in read_manifest(out)["shards"]] == ["part-00000.parquet"]
    monkeypatch.setattr(dataset, "write_bytes_atomic", real)
    result = embed_dataset(_options(tiny_vit, out, inputs=InputSpec(images=[str(corpus / "photos")])))
    assert (result.shards_resumed, result.shards_written, result.rows) == (1, 2, 23)


def test_npy_output_goes_through_the_same_pipeline(tiny_vit: Path, corpus: Path, tmp_path: Path) -> None:
    from clipexport.bulk.npy import EmbedRequest, embed_to_file

    paths = sorted((corpus / "photos").glob("*.jpg"))
    result = embed_to_file(
        EmbedRequest(
            artifact=tiny_vit, output=tmp_path / "e.npy", images=[str(corpus / "photos")], batch_size=4, workers=2
        )
    )
    assert result.rows == 23
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), _reference(tiny_vit, paths), atol=ROWS_MAX_ABS, rtol=0)
    assert (tmp_path / "e.index.txt").read_text().splitlines() == [str(p) for p in paths]


# ---- Ray Data on a real local cluster ------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'clipexport[ray]')")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def test_ray_dataset_equals_the_local_one(ray_cluster, tiny_vit: Path, corpus: Path, tmp_path: Path) -> None:
    spec = InputSpec(images=[str(corpus / "photos")])
    embed_dataset(_options(tiny_vit, tmp_path / "local", inputs=spec))
    result = embed_dataset(
        _options(tiny_vit, tmp_path / "ray", inputs=spec, engine=Engine.RAY, ray=RayOptions(actors=1))
    )
    assert result.rows == 23
    local, ray_rows = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert local[1] == ray_rows[1]
    np.testing.assert_allclose(ray_rows[2], local[2], atol=ROWS_MAX_ABS, rtol=0)
    import pyarrow.parquet as pq

    from clipexport.bulk.input_list import DECODED_COLUMNS

    facts = [pq.read_table(tmp_path / run, columns=list(DECODED_COLUMNS)).to_pylist() for run in ("local", "ray")]
    assert facts[0] == facts[1] and len(facts[0]) == 23 and all(f["input_sha256"] for f in facts[0])
    strip = lambda m: {k: v for k, v in m.items() if k not in ("created", "updated")}  # noqa: E731
    assert strip(local[0])["inputs_sha256"] == strip(ray_rows[0])["inputs_sha256"]
    assert [s["sha256"] for s in local[0]["shards"]] != [] and [s["rows"] for s in local[0]["shards"]] == [
        s["rows"] for s in ray_rows[0]["shards"]
    ]
    # the same resume rule: the Ray run's finished dataset is kept by a local rerun
    again = embed_dataset(_options(tiny_vit, tmp_path / "ray", inputs=spec))
    assert (again.shards_resumed, again.computed) == (3, 0)


def _embedding_actor_pids() -> list[int]:
    """Processes of Ray Data's map actors (their process title names the actor), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if title.startswith(b"ray::") and (b"MapWorker" in title or b"_Embedder" in title):
                pids.append(int(entry.name))
    return pids


def test_ray_job_survives_a_killed_embedding_actor(ray_cluster, tiny_vit: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(200):
        _photo(photos / f"{i:03d}.jpg", 3000 + i, size=(320, 240))
    out = tmp_path / "ds"
    outcome: dict = {}

    def job() -> None:
        try:
            outcome["result"] = embed_dataset(
                _options(
                    tiny_vit, out, inputs=InputSpec(images=[str(photos)]), engine=Engine.RAY, ray=RayOptions(actors=1)
                )
            )
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    killed = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and killed is None and thread.is_alive():
        alive = _embedding_actor_pids()
        if alive and _shards_done(out) >= 1:
            killed = alive[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.1)
    thread.join(300)
    assert killed is not None, "the job finished before an actor could be killed"
    assert "error" not in outcome, outcome.get("error")
    _, ids, rows = _rows(out)
    assert ids == [str(p) for p in sorted(photos.glob("*.jpg"))]  # every row exactly once, in order
    np.testing.assert_allclose(rows, _reference(tiny_vit, sorted(photos.glob("*.jpg"))), atol=ROWS_MAX_ABS, rtol=0)


def test_ray_pairs_equal_the_local_ones(ray_cluster, tiny_vit: Path, corpus: Path, tmp_path: Path) -> None:
    paths = sorted((corpus / "photos").glob("*.jpg"))[:5]
    _captioned_tar(tmp_path / "pairs.tar", paths, "caption number {}")
    spec = InputSpec(images=[str(tmp_path / "pairs.tar")], pairs=True)
    embed_dataset(_options(tiny_vit, tmp_path / "local", inputs=spec))
    embed_dataset(_options(tiny_vit, tmp_path / "ray", inputs=spec, engine=Engine.RAY, ray=RayOptions(actors=1)))
    import pyarrow.parquet as pq

    local, ray_table = pq.read_table(tmp_path / "local"), pq.read_table(tmp_path / "ray")
    assert local.column("id").to_pylist() == ray_table.column("id").to_pylist() == [f"{i:04d}" for i in range(5)]
    for column in ("image_embedding", "text_embedding"):
        np.testing.assert_allclose(
            np.stack(ray_table.column(column).to_pylist()),
            np.stack(local.column(column).to_pylist()),
            atol=ROWS_MAX_ABS,
            rtol=0,
        )
