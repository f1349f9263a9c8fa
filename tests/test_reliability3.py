"""Reliability round 3 (issue 26): the bulk, index, search and verify surfaces attacked as a hostile
or careless user would — someone else's files, stale shards, names that split rows, FIFOs, signals
to the whole process group, gates over nothing, damaged manifests, full disks — each one line with
the README's exit code, and nothing lost or mixed."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers import edit_shard_metadata, random_photo, to_first_layout

from clipexport.bulk.dataset import read_manifest
from clipexport.cli import main

CLI = [sys.executable, "-m", "clipexport"]


def _photo(path: Path, seed: int, size=(64, 48)) -> Path:
    return random_photo(path, seed, size, quality=90)


def _photos(folder: Path, count: int, seed: int = 0, size=(64, 48)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _photo(folder / f"{i:03d}.jpg", seed + i, size)
    return folder


def _cli(args: list[str], code: int, *needles: str) -> str:
    """Run the CLI in-process; assert the exit code, one `error:` line at most and no traceback."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    out = result.output
    assert result.exit_code == code, (result.exit_code, out, result.exception)
    assert "Traceback" not in out and out.count("error:") <= 1, out
    for needle in needles:
        assert needle in out, out
    return out


def _run(args: list[str], timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, timeout=timeout, **kwargs)


def _one_line(run: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    err = run.stderr.decode("utf-8", "replace")
    assert run.returncode == code, (run.returncode, err, run.stdout)
    assert "Traceback" not in err and err.count("error:") <= 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _read_ids(folder: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(folder).column("id").to_pylist()


# -- 1, 2: someone else's files, stale shards -------------------------------------------------
def test_someone_elses_parquet_is_never_replaced(tiny_vit: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", 3)
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "part-00000.parquet").write_bytes(b"their data")
    for extra in ([], ["--overwrite"]):
        _cli(["embed", tiny_vit, "--images", photos, "-o", out, *extra], 2, "part-00000.parquet", "not ours")
        assert (out / "part-00000.parquet").read_bytes() == b"their data"
    (out / "part-00000.parquet").unlink()
    (out / "notes.txt").write_text("mine")
    _cli(["embed", tiny_vit, "--images", photos, "-o", out], 2, "notes.txt")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_stale_shards_of_another_job_are_never_mixed_in(tiny_vit: Path, tmp_path: Path) -> None:
    import pandas as pd

    many, few = _photos(tmp_path / "many", 12), _photos(tmp_path / "few", 3, seed=50)
    out = tmp_path / "ds"
    _cli(["embed", tiny_vit, "--images", many, "-o", out, "--shard-size", "4", "-q"], 0)
    # A Parquet file without our metadata (someone's pandas output, named like a shard) beside them.
    pd.DataFrame({"id": ["theirs"], "embedding": [[0.0] * 8]}).to_parquet(out / "part-00009.parquet")
    _cli(["embed", tiny_vit, "--images", few, "-o", out, "-q"], 2, "part-00009.parquet", "no clipexport metadata")
    _cli(["embed", tiny_vit, "--images", few, "-o", out, "-q", "--overwrite"], 2, "never replaced")
    assert sum(len(pd.read_parquet(p)) for p in out.glob("part-*.parquet")) == 13  # untouched
    # Shards of ours only: --overwrite for another job removes every shard of the old one.
    fresh = tmp_path / "ds2"
    _cli(["embed", tiny_vit, "--images", many, "-o", fresh, "--shard-size", "4", "-q"], 0)
    _cli(["embed", tiny_vit, "--images", few, "-o", fresh, "--shard-size", "4", "-q", "--overwrite"], 0)
    manifest = read_manifest(fresh)
    assert manifest["rows"] == 3 == len(pd.read_parquet(fresh))
    # A shard file the manifest does not list (copied in, or a run killed between the two writes)
    # never survives a resume.
    (fresh / "part-00007.parquet").write_bytes((fresh / "part-00000.parquet").read_bytes())
    _cli(["embed", tiny_vit, "--images", few, "-o", fresh, "--shard-size", "4", "-q"], 0)
    assert len(pd.read_parquet(fresh)) == 3 and not (fresh / "part-00007.parquet").exists()


# -- 3, 8, 9: names that split rows, are not UTF-8, or are too long -----------------------------
def test_a_newline_in_a_file_name_never_shifts_npy_rows(tiny_vit: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "a\nb.jpg", 1)
    _photo(photos / "c.jpg", 2)
    out = tmp_path / "out.npy"
    _cli(["embed", tiny_vit, "--images", photos, "-o", out, "-q"], 0)
    rows = np.load(out)
    lines = (tmp_path / "out.index.txt").read_text().splitlines()
    assert len(rows) == len(lines) == 2
    assert lines == [f"{photos}/a\\nb.jpg", f"{photos}/c.jpg"]


def test_non_utf8_and_overlong_names_are_rows_or_one_line(tiny_vit: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(Path(os.fsdecode(bytes(photos) + b"/\x80\xffbad.jpg")), 3)
    (photos / os.fsdecode(b"\x80broken.jpg")).write_bytes(b"not an image")
    _photo(photos / "ok.jpg", 4)
    long_name = str(tmp_path / ("x" * 300 + ".jpg"))
    out = tmp_path / "ds"
    run = _run(["embed", tiny_vit, "--images", photos, "--images", long_name, "-o", out, "--skip-bad", "-q"])
    err = _one_line(run, 0, "file name too long", "\\x80broken.jpg")
    ids = _read_ids(out)
    assert sorted(ids) == [f"{photos}/\\x80\\xffbad.jpg", f"{photos}/ok.jpg"], ids
    assert "0x" not in err
    # Without --skip-bad, and in classify: one line, exit 2.
    _one_line(_run(["embed", tiny_vit, "--images", long_name, "-o", tmp_path / "x.npy"]), 2, "file name too long")
    _one_line(_run(["classify", tiny_vit, long_name, "--labels", "a,b"]), 2, "file name too long")
    classified = _run(["classify", tiny_vit, photos / os.fsdecode(b"\x80\xffbad.jpg"), "--labels", "a,b"])
    _one_line(classified, 0)
    assert b"\\x80\\xffbad.jpg" in classified.stdout


# -- 4: an output inside its input -------------------------------------------------------------
def test_outputs_inside_their_inputs_are_refused(tiny_vit: Path, tmp_path: Path) -> None:
    import pandas as pd

    photos = _photos(tmp_path / "photos", 3)
    ds = tmp_path / "ds"
    _cli(["embed", tiny_vit, "--images", photos, "-o", ds, "-q"], 0)
    _cli(["index", ds, "-o", ds / "idx"], 2, "inside the dataset")
    _cli(["index", ds, "-o", tmp_path], 2, "holds the dataset")
    assert not (ds / "idx").exists() and len(pd.read_parquet(ds)) == 3
    _cli(["embed", tiny_vit, "--images", photos, "-o", photos / "ds"], 2, "inside the input folder")
    assert not (photos / "ds").exists()
    # index -o: someone else's folder, or a lone index.faiss, is refused and left alone.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "index.faiss").write_bytes(b"theirs")
    for extra in ([], ["--overwrite"]):
        _cli(["index", ds, "-o", theirs, *extra], 2, "index.faiss but no _index.json")
    assert (theirs / "index.faiss").read_bytes() == b"theirs"


# -- 5, 6, 16: signals to the group, FIFOs -----------------------------------------------------
def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_sigterm_to_the_process_group_stops_embed_with_130(tiny_vit: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", 60, size=(640, 480))
    out = tmp_path / "ds"
    run = subprocess.Popen(
        [
            *CLI,
            "embed",
            str(tiny_vit),
            "--images",
            str(photos),
            "-o",
            str(out),
            "--shard-size",
            "5",
            "--batch-size",
            "5",
            "--workers",
            "2",
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob("part-*.parquet")):
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGTERM)  # what timeout, systemd and Kubernetes send: every process of the group
    try:
        _, stderr = run.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        raise AssertionError("embed still running 30 s after SIGTERM to its process group")
    assert run.returncode == 130 and "interrupted" in stderr.decode(), stderr
    deadline = time.monotonic() + 10
    while _group_alive(run.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(run.pid), "decode workers outlived the run"
    manifest = read_manifest(out)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == sorted(s["file"] for s in manifest["shards"])


def test_a_fifo_is_never_read(tiny_vit: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", 2)
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{photos / '000.jpg'}\n{fifo}\n{photos / '001.jpg'}\n")
    run = _run(["embed", tiny_vit, "--image-list", listing, "-o", tmp_path / "ds", "--skip-bad", "-q"], timeout=120)
    _one_line(run, 0, "is a FIFO, not a regular file")
    assert len(_read_ids(tmp_path / "ds")) == 2
    _one_line(_run(["embed", tiny_vit, "--image-list", listing, "-o", tmp_path / "x.npy"], timeout=120), 2, "FIFO")
    _one_line(_run(["classify", tiny_vit, fifo, "--labels", "a,b"], timeout=120), 2, "FIFO")


def test_sigterm_to_a_ray_driver_exits_130_saying_so(tiny_vit: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the ray extra (pip install 'clipexport[ray]') is not installed")
    photos = _photos(tmp_path / "photos", 400, size=(320, 240))
    out = tmp_path / "ds"
    env = {**os.environ, "RAY_ADDRESS": ""}
    run = subprocess.Popen(
        [
            *CLI,
            "embed",
            str(tiny_vit),
            "--images",
            str(photos),
            "-o",
            str(out),
            "--engine",
            "ray",
            "--shard-size",
            "20",
            "--batch-size",
            "10",
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list(out.glob("part-*.parquet")):
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.1)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130 and "interrupted" in stderr.decode(), (run.returncode, stderr[-2000:])


# -- 7: gates over nothing ---------------------------------------------------------------------
def test_a_gate_with_nothing_measured_fails(tiny_vit: Path, tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="the search extra (pip install 'clipexport[search]') is not installed")
    folder = tmp_path / "retrieval"
    for name, seed in (("red", 1), ("blue", 2)):
        (folder / name).mkdir(parents=True)
        _photo(folder / name / "only.jpg", seed)
    out = _cli(["verify", tiny_vit, "--retrieval", folder, "--max-recall-drop", "0", "-q"], 1, "nothing measured")
    assert "nothing to measure" in out
    # Without a gate the same report is printed and passes (nothing was promised).
    _cli(["verify", tiny_vit, "--retrieval", folder, "-q"], 0, "nothing to measure")

    from clipexport.parity.gates import FP32
    from clipexport.parity.report import AccuracyResult, TowerResult
    from clipexport.parity.stats import EmbeddingParity

    empty = EmbeddingParity(count=0, min_cosine=1.0, mean_cosine=1.0, max_abs_diff=0.0)
    assert not TowerResult("vision", "fp32", "onnxruntime", empty, FP32).passed
    assert not AccuracyResult("fp32", "onnxruntime", 1.0, 1.0, 0.0, 1.0, {}, 1.0, measured=0).passed
    assert AccuracyResult("fp32", "onnxruntime", 1.0, 1.0, 0.0, 1.0, {}, 1.0, measured=3).passed


# -- 10, 11, 15: damaged manifests ----------------------------------------------------------------
def test_damaged_manifests_are_one_line_with_advice_that_works(tiny_vit: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", 3)
    out = tmp_path / "ds"
    args = ["embed", tiny_vit, "--images", photos, "-o", out, "-q", "--shard-size", "2"]
    _cli(args, 0)
    shard = out / "part-00001.parquet"
    for damage in (
        lambda data: "{not json",
        lambda data: "[]",
        lambda data: data["identity"].update(dim="abc"),
        lambda data: data.update(shard={"index": 1}),
        lambda data: data["shard"].update(file="part-00000.parquet"),  # a shard copied over another
        lambda data: data["shard"].update(sha256="0" * 64),  # contents that are not what it says
    ):
        edit_shard_metadata(shard, damage)
        _cli(["index", out, "-o", tmp_path / "idx"], 2, "part-00001.parquet", "rerun the embed command")
        assert "1 resumed" in _cli(args, 0)  # the advice works: the damaged shard alone is redone
        assert read_manifest(out)["rows"] == 3
    # The first layout (an _embeddings.json beside the shards) is read; its damage is still one line.
    to_first_layout(out)
    _cli(["index", out, "-o", tmp_path / "idx0", "-q"], 0)
    manifest = out / "_embeddings.json"
    good = manifest.read_text()
    for damage in ("{not json", json.dumps({**json.loads(good), "dim": "abc"})):
        manifest.write_text(damage)
        _cli(args, 2, "_embeddings.json is damaged", "pass --overwrite")
        _cli(["index", out, "-o", tmp_path / "idx"], 2, "_embeddings.json is damaged")
        manifest.write_text(good)
    _cli(["index", out, "-o", tmp_path / "idx", "-q"], 0)
    index_manifest = tmp_path / "idx" / "_index.json"
    data = json.loads(index_manifest.read_text())
    for damage in ({**data, "index": {**data["index"], "nprobe": "abc"}}, {**data, "rows": None}, []):
        index_manifest.write_text(json.dumps(damage))
        _cli(["search", tmp_path / "idx", "--text", "a red circle"], 2, "_index.json is damaged")
        _cli(["index", out, "-o", tmp_path / "idx", "-q"], 2, "_index.json is damaged", "--overwrite")
    _cli(["index", out, "-o", tmp_path / "idx", "-q", "--overwrite"], 0)


# -- 12, 13, 14, 18: index over bad rows, a full disk, absurd budgets, missed recall --------------
def _synthetic_dataset(
    folder: Path, rows: int, dim: int, seed: int = 0, poison: dict[int, float] | None = None
) -> Path:
    """A dataset as `embed -o` writes it, from given vectors (rows `poison` get that value)."""
    from clipexport.bulk.dataset import DatasetState, Identity, write_shard

    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    for row, value in (poison or {}).items():
        vectors[row] = value
    identity = Identity("image", "0" * 64, "fp32", "onnxruntime", True, dim, "float32", "1" * 64, rows, rows)
    folder.mkdir(parents=True)
    state = DatasetState(folder, identity, str(folder))
    write_shard(state, 0, [f"row-{i}" for i in range(rows)], vectors, [])
    return folder


def test_index_refuses_nan_and_zero_rows_naming_them(tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="the search extra (pip install 'clipexport[search]') is not installed")
    nan = _synthetic_dataset(tmp_path / "nan", 300, 16, poison={7: np.nan})
    _cli(["index", nan, "-o", tmp_path / "i1", "--kind", "approximate"], 2, "row 7", "row-7", "NaN")
    zero = _synthetic_dataset(tmp_path / "zero", 300, 16, poison={3: 0.0, 9: 0.0})
    _cli(["index", zero, "-o", tmp_path / "i2"], 2, "row-3", "zero vector", "1 more")
    assert not (tmp_path / "i1").exists() and not (tmp_path / "i2").exists()


def test_index_budget_and_recall_mistakes(tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="the search extra (pip install 'clipexport[search]') is not installed")
    ds = _synthetic_dataset(tmp_path / "ds", 2000, 64)
    for budget in ("1e999", "1e30G"):
        _cli(["index", ds, "-o", tmp_path / "idx", "--max-memory", budget], 2, "--max-memory")
    # PQ codes squeezed into 100 KB: recall far below the target even scanning every list.
    args = ["index", ds, "-o", tmp_path / "idx", "--kind", "approximate", "--max-memory", "100K", "-q"]
    _cli(args, 1, "below --target-recall 0.95", "--accept-low-recall")
    data = json.loads((tmp_path / "idx" / "_index.json").read_text())
    assert data["target_met"] is False and "PQ" in data["index"]["factory"]
    _cli(args, 1, "below --target-recall")  # a rerun ("already built") says the same
    _cli([*args, "--accept-low-recall"], 0)


def test_index_onto_a_full_disk_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="the search extra (pip install 'clipexport[search]') is not installed")
    ds = _synthetic_dataset(tmp_path / "ds", 3000, 64)  # 768 KB of vectors: more than the disk holds
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        out = _cli(["index", ds, "-o", disk / "idx", "-q"], 3, "no space left on the device")
        assert "index" in out
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# -- 17, 19, 20: truncated tars, byte-order marks, reproducible skip reasons ----------------------
def _tar(path: Path, count: int) -> Path:
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(buffer, format="PNG")
            info = tarfile.TarInfo(f"{i:05d}.png")
            info.size = len(buffer.getvalue())
            tar.addfile(info, io.BytesIO(buffer.getvalue()))
    return path


def test_a_truncated_tar_is_said(tiny_vit: Path, tmp_path: Path) -> None:
    whole = _tar(tmp_path / "whole.tar", 5)
    with tarfile.open(whole) as tar:
        members = tar.getmembers()
    data = whole.read_bytes()
    for name, cut in (
        ("at-header.tar", members[3].offset),
        ("in-header.tar", members[3].offset + 100),
        ("no-end.tar", members[4].offset_data + 512 * ((members[4].size + 511) // 512)),
    ):
        shard = tmp_path / name
        shard.write_bytes(data[:cut])
        _cli(["embed", tiny_vit, "--images", shard, "-o", tmp_path / f"{name}.npy"], 2, "is truncated", "--skip-bad")
        run = _run(["embed", tiny_vit, "--images", shard, "-o", tmp_path / f"{name}-ds", "--skip-bad", "-q"])
        _one_line(run, 0, "warning:", "is truncated")
        assert len(_read_ids(tmp_path / f"{name}-ds")) == (3 if cut <= members[3].offset + 100 else 5)
    _cli(["embed", tiny_vit, "--images", whole, "-o", tmp_path / "whole.npy", "-q"], 0)


def test_a_byte_order_mark_is_not_part_of_the_first_path(tiny_vit: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", 2)
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + f"{photos / '000.jpg'}\n{photos / '001.jpg'}\n".encode())
    _cli(["embed", tiny_vit, "--image-list", listing, "-o", tmp_path / "x.npy", "-q"], 0)
    assert (tmp_path / "x.index.txt").read_text().splitlines()[0] == str(photos / "000.jpg")

    from clipexport.datasets import load_retrieval_set

    (tmp_path / "set").mkdir()
    _photo(tmp_path / "set" / "a.jpg", 1)
    _photo(tmp_path / "set" / "b.jpg", 2)
    (tmp_path / "set" / "captions.tsv").write_bytes(b"\xef\xbb\xbfa.jpg\tfirst\nb.jpg\tsecond\n")
    assert load_retrieval_set(tmp_path / "set").captions == ("first", "second")


def test_skip_reasons_are_the_same_in_two_identical_runs(tiny_vit: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", 2)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    reasons = []
    for run in ("a", "b"):
        _cli(["embed", tiny_vit, "--images", photos, "-o", tmp_path / run, "--skip-bad", "-q"], 0)
        manifest = read_manifest(tmp_path / run)
        reasons.append([s["reason"] for shard in manifest["shards"] for s in shard["skipped"]])
    assert reasons[0] == reasons[1] and len(reasons[0]) == 1 and "0x" not in reasons[0][0], reasons


# -- 21, 22: exit codes and messages ----------------------------------------------------------
def test_devices_tables_and_the_demo_name(tiny_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    photos = _photos(tmp_path / "photos", 1)
    tiny_vit = Path(shutil.copytree(tiny_vit, tmp_path / "artifact"))  # OpenVINO may add its cache folder
    import importlib.util

    if importlib.util.find_spec("openvino") is not None:  # the openvino extra
        _cli(
            ["classify", tiny_vit, photos, "--labels", "a,b", "--backend", "openvino", "--device", "garbage"],
            2,
            "GARBAGE is not an OpenVINO device",
        )
        out = _cli(
            ["classify", tiny_vit, photos, "--labels", "a,b", "--backend", "openvino", "--device", "AUTO:GPU"],
            3,
            "OpenVINO sees no GPU device here",
        )
        assert out.strip().endswith("CLIPEXPORT_OPENVINO_DEVICE)"), out
    table = tmp_path / "texts.csv"
    table.write_text('text\nshort\n"' + "word " * 2_200_000 + '"\n')  # an 11 MB cell
    _cli(["embed", tiny_vit, "--text-table", table, "-o", tmp_path / "t.npy", "-q"], 0)
    # `demo` is the shipped demo CLIP even where the working directory holds a folder named demo.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.txt").write_text("mine")
    _cli(["export", "demo", "-o", tmp_path / "demo-artifact", "-q"], 0)
    assert (tmp_path / "demo" / "mine.txt").read_text() == "mine"


def test_the_last_error_line_of_a_dead_tritonserver() -> None:
    from clipexport.serving.server import _last_error

    log = "\n".join(
        [
            'I1204 10:00:00.000000 1 server.cc:100] error_code table: {"errors": 0}',
            "E1204 10:00:01.000000 1 model_lifecycle.cc:600] failed to load 'demo_text': boom",
            "I1204 10:00:02.000000 1 server.cc:300] Timeout 30: Found 0 live models and 0 in-flight non-inference requests",
            "W1204 10:00:02.100000 1 pinned_memory_manager.cc:200] failed to allocate pinned system memory: no CUDA error",
        ]
    )
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"triton-log-{os.getpid()}.log"
    path.write_text(log + "\n")
    try:
        assert _last_error(path).startswith("E1204 10:00:01") and "boom" in _last_error(path)
    finally:
        path.unlink()


def test_an_option_tritonserver_refused_is_named_and_ports_are_never_shared(tmp_path: Path) -> None:
    """A CI run lost a server to a port chosen twice: its gRPC port, picked and released by the
    test, was handed out again for the internal HTTP port, and tritonserver printed its usage text
    (whose help for --load-model says "error") before the line that says why."""
    from clipexport.serving.server import _last_error, free_local_ports

    usage = ["Usage: tritonserver [options]", "  --load-model <string>", "\t... will result in error. Note that ..."]
    why = "The server cannot listen to HTTP requests and GRPC requests at the same address and port 0.0.0.0:8123"
    (tmp_path / "log").write_text("\n".join([*usage, why]) + "\n")
    assert _last_error(tmp_path / "log") == why
    taken = set(free_local_ports(3))
    for _ in range(20):
        assert not taken & set(free_local_ports(2, avoid=taken))


# -- what held in this round, kept as tests ------------------------------------------------------
def test_deleted_corrupted_and_swapped_shards_are_redone(tiny_vit: Path, tmp_path: Path) -> None:
    import pandas as pd

    photos = _photos(tmp_path / "photos", 12)
    out = tmp_path / "ds"
    args = ["embed", tiny_vit, "--images", photos, "-o", out, "--shard-size", "3", "-q"]
    _cli(args, 0)
    fresh = pd.read_parquet(out)
    (out / "part-00000.parquet").unlink()
    corrupt = bytearray((out / "part-00001.parquet").read_bytes())
    # A byte of the embedding column's last data page (its compressed values, not a page header's
    # statistics: where those change, the values are intact and the shard rightly resumed).
    import pyarrow.parquet as pq

    chunk = pq.read_metadata(out / "part-00001.parquet").row_group(0).column(1)
    assert chunk.path_in_schema.startswith("embedding")
    corrupt[chunk.data_page_offset + chunk.total_compressed_size - 8] ^= 0xFF
    (out / "part-00001.parquet").write_bytes(bytes(corrupt))
    two, three = (out / "part-00002.parquet").read_bytes(), (out / "part-00003.parquet").read_bytes()
    (out / "part-00002.parquet").write_bytes(three)
    (out / "part-00003.parquet").write_bytes(two)
    printed = _cli(args[:-1], 0)
    assert "4 shards computed" in printed, printed
    again = pd.read_parquet(out)
    assert list(again["id"]) == list(fresh["id"])
    np.testing.assert_allclose(np.stack(again["embedding"]), np.stack(fresh["embedding"]), atol=1e-6)


def test_a_garbage_openvino_cache_still_answers_right(tiny_vit: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="the openvino extra (pip install 'clipexport[openvino]') is not installed")
    import shutil

    artifact = tmp_path / "artifact"
    shutil.copytree(tiny_vit, artifact)
    photos = _photos(tmp_path / "photos", 2)
    args = ["classify", artifact, photos, "--labels", "a,b,c", "--backend", "openvino"]
    first = _cli(args, 0)
    cache = artifact / "engines" / "openvino"
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert files
    for path in files:
        path.write_bytes(b"garbage" * 100)
    assert _cli(args, 0) == first
