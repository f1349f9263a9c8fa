"""Regression tests for the adversarial run (issue 11): data loss, false passes, misleading
results. Each test names the item it guards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import CONFIGS, save_open_clip_checkpoint
from clipexport.artifact.manifest import read_manifest
from clipexport.cli import main
from clipexport.errors import DeviceUnavailableError, InputError, ManifestError, MissingDependencyError
from clipexport.runtime import ClipRuntime

CFG = str(CONFIGS / "tiny-vit.json")


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _copy(artifact: Path, tmp_path: Path, name: str = "a") -> Path:
    out = tmp_path / name
    shutil.copytree(artifact, out)
    return out


def _clipexport(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clipexport", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


# -- 1. --overwrite never deletes what is not ours -------------------------------------------
def test_overwrite_refuses_a_folder_of_user_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "thesis.tex").write_text("months of work")
    monkeypatch.chdir(tmp_path)
    code, out = _cli("export", CFG, "-o", ".", "--overwrite", "-q")
    assert code == 2 and "only replaces a clipexport artifact" in out
    assert (tmp_path / "thesis.tex").read_text() == "months of work"


def test_overwrite_refuses_the_folder_holding_the_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    checkpoint = save_open_clip_checkpoint("tiny-vit", folder)
    code, out = _cli("export", CFG, "--pretrained", str(checkpoint), "-o", str(folder), "--overwrite", "-q")
    assert code == 2 and "would contain" in out
    assert checkpoint.is_file()
    code, out = _cli("export", CFG, "--pretrained", str(checkpoint), "-o", str(folder / "inside"), "-q")
    assert code == 0, out  # next to the checkpoint (not containing it) is fine


def test_overwrite_refuses_the_hf_folder_and_paths_inside_it(hf_clip_folder: Path) -> None:
    code, out = _cli("export", str(hf_clip_folder), "-o", str(hf_clip_folder / "artifact"), "-q")
    assert code == 2 and "would contain (or sit inside)" in out
    assert not (hf_clip_folder / "artifact").exists()


def test_symlinked_output_is_refused_not_followed(tiny_vit: Path, tmp_path: Path) -> None:
    target = _copy(tiny_vit, tmp_path, "real")
    before = sorted(p.name for p in target.iterdir())
    (tmp_path / "link").symlink_to(target)
    code, out = _cli("export", CFG, "-o", str(tmp_path / "link"), "--overwrite", "-q")
    assert code == 2 and "symbolic link" in out
    assert (tmp_path / "link").is_symlink() and sorted(p.name for p in target.iterdir()) == before


def test_overwrite_replaces_an_earlier_artifact(tiny_vit: Path, tmp_path: Path) -> None:
    out_dir = _copy(tiny_vit, tmp_path)
    code, out = _cli("export", CFG, "-o", str(out_dir), "--overwrite", "-q")
    assert code == 0, out and read_manifest(out_dir)


# -- 2. concurrent quantize runs both land ---------------------------------------------------
def test_two_concurrent_quantize_runs_keep_every_entry(tiny_vit: Path, tmp_path: Path) -> None:
    artifact = _copy(tiny_vit, tmp_path)
    runs = [
        _clipexport("quantize", str(artifact), "--precision", "fp16", "-q"),
        _clipexport(
            "quantize", str(artifact), "--precision", "int8", "--target", "cpu", "--calibration-size", "16", "-q"
        ),
    ]
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    assert all(code == 0 for code, _ in results), results
    manifest = read_manifest(artifact)
    for tower in ("vision", "text"):
        assert {"fp32", "fp16", "int8"} <= set(manifest.tower(tower).graphs)
    from clipexport.artifact.manifest import check_graph_files

    for tower in manifest.towers.values():  # every listed file is there and is the one recorded
        for graph in tower.graphs.values():
            check_graph_files(artifact, graph)
    assert not [p for p in artifact.iterdir() if p.name.startswith(".quantize-")]


# -- 3. names from a manifest stay inside the artifact ---------------------------------------
@pytest.mark.parametrize("name", ["../../x/vision.onnx", "/tmp/vision.onnx"])
def test_manifest_paths_outside_the_artifact_are_refused(tiny_vit: Path, tmp_path: Path, name: str) -> None:
    artifact = _copy(tiny_vit, tmp_path)
    data = json.loads((artifact / "manifest.json").read_text())
    data["towers"]["vision"]["graphs"]["fp32"]["file"] = name
    (artifact / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="outside the artifact folder|not a plain relative file name"):
        ClipRuntime.load(artifact)
    code, out = _cli("quantize", str(artifact), "--precision", "fp16", "--towers", "vision", "-q")
    assert code == 2 and "refusing" in out or "not a plain relative" in out
    assert not (tmp_path.parent / "x").exists()


# -- 4. a bench that measured nothing keeps earlier results ----------------------------------
def test_bench_that_measured_nothing_keeps_earlier_results(tiny_vit: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed: the tensorrt backend would measure something")
    except ImportError:
        pass
    artifact = _copy(tiny_vit, tmp_path)
    (artifact / "bench").mkdir()
    (artifact / "bench" / "bench.json").write_text('{"earlier": true}')
    code, out = _cli("bench", str(artifact), "--backends", "tensorrt", "-q")
    assert code == 3 and "nothing was measured" in out
    assert json.loads((artifact / "bench" / "bench.json").read_text()) == {"earlier": True}


# -- 5. interrupted runs leave nothing behind --------------------------------------------------
def test_stale_staging_of_dead_runs_is_removed(tiny_vit: Path, tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (tmp_path / f".out.partial-{dead}-abc").mkdir()
    (tmp_path / f".out.partial-{dead}-abc" / "vision.onnx").write_bytes(b"x" * 100)
    (tmp_path / ".out.partial-notours").mkdir()  # not named like ours: left alone
    code, out = _cli("export", CFG, "-o", str(tmp_path / "out"))
    assert code == 0, out
    assert "left by an interrupted export" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.partial-notours", "out"]

    artifact = _copy(tiny_vit, tmp_path, "q")
    (artifact / f".quantize-{dead}-xyz").mkdir()
    code, out = _cli("quantize", str(artifact), "--precision", "fp16", "--towers", "vision")
    assert code == 0 and "left by an interrupted quantize" in out
    assert not [p for p in artifact.iterdir() if p.name.startswith(".quantize-")]


def test_sigterm_during_export_cleans_up_and_exits_130(tmp_path: Path) -> None:
    run = _clipexport("export", CFG, "-o", str(tmp_path / "out"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(".out.partial-*")):
        time.sleep(0.05)
    assert list(tmp_path.glob(".out.partial-*")), "the export never started staging"
    run.send_signal(signal.SIGTERM)
    code = run.wait(timeout=120)
    stderr = run.stderr.read()
    assert code == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert list(tmp_path.iterdir()) == []


# -- 6. no report claims a backend that did not run ------------------------------------------
def test_onnxruntime_trt_without_tensorrt_fails_instead_of_running_on_cpu(tiny_vit: Path, tmp_path: Path) -> None:
    from clipexport.runtime.backends import unavailable

    if unavailable("onnxruntime-trt") is None:
        pytest.skip("TensorRT's provider works here")
    artifact = _copy(tiny_vit, tmp_path)
    (artifact / "parity.json").write_text('{"earlier": true}')
    code, out = _cli("verify", str(artifact), "--backend", "onnxruntime-trt", "-q")
    assert code == 3 and len([line for line in out.splitlines() if line.strip()]) == 1, out
    assert (artifact / "parity.json").read_text() == '{"earlier": true}'  # no report claims it ran
    with pytest.raises((DeviceUnavailableError, MissingDependencyError)):
        ClipRuntime.load(artifact, backend="onnxruntime-trt")


def test_parity_report_records_what_ran(tiny_vit: Path, tmp_path: Path) -> None:
    artifact = _copy(tiny_vit, tmp_path)
    code, out = _cli("verify", str(artifact), "-q", "--num-images", "3")
    assert code == 0, out
    results = json.loads((artifact / "parity.json").read_text())["results"]
    assert results and all(r["ran_on"] == "onnxruntime (CPUExecutionProvider)" for r in results)


# -- 7. embed rows line up with inputs -------------------------------------------------------
def test_embed_rows_line_up_with_lines(tiny_vit: Path, tmp_path: Path) -> None:
    texts = tmp_path / "t.txt"
    lines = ["a cat", "", "a dog\u2028on a mat", "form\ffeed", "last"]
    texts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "t.npy"
    code, output = _cli("embed", str(tiny_vit), "--texts", str(texts), "-o", str(out))
    assert code == 0, output
    got = np.load(out)
    assert got.shape[0] == len(lines)
    with ClipRuntime.load(tiny_vit) as runtime:
        np.testing.assert_allclose(got, runtime.encode_text(lines), atol=1e-6)
    index = (tmp_path / "t.index.txt").read_text().splitlines()
    assert index == [f"{texts}:{i}" for i in range(1, len(lines) + 1)]


def test_embed_index_lists_kept_images_and_empty_results_fail(tiny_vit: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (30, 30)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"broken")
    Image.new("RGB", (30, 40)).save(folder / "c.png")
    code, output = _cli("embed", str(tiny_vit), "--images", str(folder), "-o", str(tmp_path / "e.npy"), "--skip-bad")
    assert code == 0 and "skipped" in output and "b.png" in output
    assert (tmp_path / "e.index.txt").read_text().splitlines() == [str(folder / "a.png"), str(folder / "c.png")]
    assert np.load(tmp_path / "e.npy").shape[0] == 2
    code, output = _cli(
        "embed", str(tiny_vit), "--images", str(folder / "b.png"), "-o", str(tmp_path / "z.npy"), "--skip-bad"
    )
    assert code == 2 and "nothing was written" in output and not (tmp_path / "z.npy").exists()


# -- 8. silent mistakes are loud ---------------------------------------------------------------
def test_runtime_api_refuses_silent_mistakes(tiny_vit: Path, tmp_path: Path) -> None:
    image = Image.new("RGB", (30, 30))
    with pytest.raises(InputError, match="unknown tower"):
        ClipRuntime.load(tiny_vit, precision={"vison": "int8"})
    with ClipRuntime.load(tiny_vit) as runtime:
        with pytest.raises(InputError, match="not one string"):
            runtime.classify(image, "cat")
        with pytest.raises(InputError, match="exactly one"):
            runtime.classify(image, ["cat", "dog"], templates=["a photo"])
        with pytest.raises(InputError, match="duplicate"):
            runtime.classify(image, ["cat", "cat"])
        with pytest.raises(InputError, match="positive integer"):
            runtime.encode_text(["a"], batch_size=0)


def test_a_label_with_a_comma_and_a_labels_file(tiny_vit: Path, tmp_path: Path) -> None:
    Image.new("RGB", (30, 30), (200, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "labels.txt").write_text("cat\ndog\n", encoding="utf-8")
    code, out = _cli(
        "classify",
        str(tiny_vit),
        str(tmp_path / "a.png"),
        "--label",
        "red, white and blue",
        "--labels-file",
        str(tmp_path / "labels.txt"),
        "--top",
        "3",
    )
    assert code == 0, out
    assert "red, white and blue" in out and "cat" in out and "dog" in out


# -- 9. bounded work per image -----------------------------------------------------------------
def test_extreme_aspect_ratio_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "strip.png"
    Image.new("L", (20000, 1)).save(path, optimize=True)
    assert path.stat().st_size < 1000
    code = (
        "import sys\n"
        "from clipexport.runtime import ImagePreprocessor\n"
        "from clipexport.errors import InputError\n"
        f"try:\n    ImagePreprocessor()([{str(path)!r}])\nexcept InputError as e:\n    print(e)\n"
        # VmHWM is this process image's peak RSS (ru_maxrss would carry pytest's over the exec).
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    message, peak_kib = proc.stdout.strip().splitlines()
    assert "aspect ratio 20000:1" in message and "CLIPEXPORT_MAX_ASPECT_RATIO" in message
    assert int(peak_kib) < 400 * 1024, f"peak {int(peak_kib) / 1024:.0f} MiB"  # was 5 GB


def test_limits_can_be_raised_for_real_images(monkeypatch: pytest.MonkeyPatch) -> None:
    from clipexport.runtime import ImagePreprocessor

    monkeypatch.setenv("CLIPEXPORT_MAX_ASPECT_RATIO", "1000")
    assert ImagePreprocessor()([Image.new("RGB", (900, 1))]).shape == (1, 3, 224, 224)


# -- 10. 16-bit images: parity kept, said once; exif_transpose exposed -------------------------
def test_sixteen_bit_images_warn_once_and_exif_transpose_is_exposed(tiny_vit: Path) -> None:
    from clipexport.runtime.preprocess import HighBitDepthWarning, ImagePreprocessor, _warned_modes

    _warned_modes.discard("I;16")
    image = Image.new("I;16", (20, 20), 40000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ImagePreprocessor()([image, image, image])
    assert len([w for w in caught if issubclass(w.category, HighBitDepthWarning)]) == 1
    assert "I;16" in str(caught[0].message)
    with ClipRuntime.load(tiny_vit, exif_transpose=True) as runtime:
        assert runtime.preprocessor.exif_transpose
    assert "--exif-transpose" in CliRunner().invoke(main, ["embed", "--help"]).output


# -- the errors' kinds: exit codes by class ----------------------------------------------------
def test_exit_codes_are_documented() -> None:
    help_text = CliRunner().invoke(main, ["--help"]).output
    for code in ("0", "1", "2", "3", "4", "130"):
        assert f"\n    {code} " in help_text or f"\n  {code} " in help_text


# -- tracebacks and misleading messages ------------------------------------------------------
def test_random_siglip_offline_is_one_line_exit_3(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipexport",
            "export",
            "ViT-B-16-SigLIP",
            "--pretrained",
            "random",
            "-o",
            str(tmp_path / "a"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert proc.returncode == 3 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "tokenizer" in lines[0] and "offline" in lines[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_bad_checkpoints_never_suggest_unsafe_loading(tmp_path: Path, damage: str) -> None:
    good = save_open_clip_checkpoint("tiny-vit", tmp_path)
    bad = tmp_path / "bad.pt"
    data = good.read_bytes()
    bad.write_bytes(os.urandom(1000) if damage == "garbage" else data[: len(data) // 2])
    code, out = _cli("export", CFG, "--pretrained", str(bad), "-o", str(tmp_path / "a"), "-q")
    assert code == 2 and "not a valid checkpoint file" in out and "weights_only" not in out


def test_a_folder_without_config_json_is_not_called_an_unknown_model(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    code, out = _cli("export", str(tmp_path / "model"), "-o", str(tmp_path / "a"))
    assert code == 2 and "without config.json" in out and "unknown OpenCLIP model" not in out


# -- TensorRT 11 and JetPack's 10.3 --------------------------------------------------------------
def test_onnxruntime_probes_tensorrt_10_and_11_and_sets_no_fp16_flag(tmp_path: Path) -> None:
    from clipexport.runtime.backends.onnxruntime import PROVIDER_LIBRARIES, TENSORRT
    from clipexport.runtime.backends.onnxruntime_trt import tensorrt_provider

    assert {"libnvinfer.so.10", "libnvinfer.so.11"} <= {lib for group in PROVIDER_LIBRARIES[TENSORRT] for lib in group}
    name, options = tensorrt_provider(tmp_path)
    assert name == TENSORRT and "trt_fp16_enable" not in options  # meaningless for strongly typed graphs


def test_build_plans_the_fp16_graph_it_will_make(tiny_vit: Path) -> None:
    code, out = _cli("build", str(tiny_vit), "--recipe", "vit-b-32-server", "--dry-run")
    assert code == 0, out
    assert "build makes the fp16 graph of vision, text first" in out and "--onnx=" in out and "vision.fp16.onnx" in out


def test_build_refuses_int8_quantized_for_the_cpu(tiny_vit: Path, tmp_path: Path) -> None:
    artifact = _copy(tiny_vit, tmp_path)
    code, out = _cli(
        "quantize",
        str(artifact),
        "--precision",
        "int8",
        "--target",
        "cpu",
        "--calibration-size",
        "8",
        "--towers",
        "vision",
        "-q",
    )
    assert code == 0, out
    code, out = _cli("build", str(artifact), "--recipe", "vit-b-32-agx-orin-int8", "--towers", "vision", "--dry-run")
    assert code == 2 and "--target cpu" in out and "--target tensorrt" in out


def test_build_makes_the_missing_fp16_graph_itself(
    tiny_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the TensorRT check, build makes fp16 with quantize's own code and records who made it
    (the engine compile itself needs TensorRT and a GPU: the `tensorrt`-marked test)."""
    from clipexport.trt import builder, pipeline

    artifact = _copy(tiny_vit, tmp_path)
    monkeypatch.setattr(builder, "require_tensorrt", lambda: None)
    monkeypatch.setattr(builder, "build_engine", lambda build, recipe, progress: build.onnx.name)
    lines: list[str] = []
    built = pipeline.build_artifact(
        pipeline.BuildOptions(artifact=artifact, recipe="vit-b-32-server", towers=(pipeline.Tower.VISION,)),
        lines.append,
    )
    assert built.engines == ["vision.fp16.onnx"] and any(
        "making the fp16 graph of vision first" in line for line in lines
    )
    assert read_manifest(artifact).tower("vision").graph("fp16").details.made_by == "build"


# ---- round 2: one set of input rules, checked where every caller passes ------------------------


def test_token_ids_are_checked_before_the_backend_runs(tiny_vit: Path) -> None:
    """Negative, fractional, boolean, out-of-vocabulary and too-long ids: one InputError line each
    (they used to embed like other ids, or end in an ONNX Runtime Gather error)."""
    from clipexport.errors import InputError
    from clipexport.runtime import ClipRuntime

    with ClipRuntime.load(tiny_vit) as runtime:
        good = runtime.tokenizer(["a photo of a cat"])
        assert runtime.encode_text(good).shape == (1, 64)
        assert runtime.encode_text(good.astype(np.int32)).shape == (1, 64)
        cases = [
            (np.array([[49406, -59, 49407]]), "token id -59, outside the vocabulary"),
            (good.astype(np.float64) + 0.9, "must be integer token ids"),
            (good.astype(bool), "must be integer token ids"),
            (np.array([[49406, 60000, 49407]]), "token id 60000, outside the vocabulary"),
            (np.full((1, 78), 320), "more than the model's context of 77"),
        ]
        for ids, message in cases:
            with pytest.raises(InputError, match=message):
                runtime.encode_text(ids)
        for call, message in (
            (lambda: runtime.encode_text(None), "texts is None"),
            (lambda: runtime.encode_text(["a \ud800"]), "lone surrogate"),
            (lambda: runtime.encode_image(None), "images is None"),
        ):
            with pytest.raises(InputError, match=message):
                call()
    with pytest.raises(InputError, match="was closed"):
        runtime.encode_text(["after close"])
    with pytest.raises(InputError, match="must be a path"):
        ClipRuntime.load(None)


def test_an_edited_embed_dim_is_refused_at_load(tiny_vit: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from clipexport.errors import ManifestError
    from clipexport.runtime import ClipRuntime

    edited = tmp_path / "edited"
    shutil.copytree(tiny_vit, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["embed_dim"] = 999
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="output is 64-d but the manifest says embed_dim 999"):
        ClipRuntime.load(edited)


def test_a_runtime_with_one_tower_refuses_the_other(tiny_vit: Path) -> None:
    from clipexport.errors import InputError
    from clipexport.runtime import ClipRuntime

    with ClipRuntime.load(tiny_vit, towers=("text",)) as runtime:
        assert runtime.encode_text(["a"]).shape == (1, 64)
        with pytest.raises(InputError, match="without the vision tower"):
            runtime.encode_image([np.zeros((8, 8, 3), np.uint8)])


def test_a_clipexport_folder_in_the_working_directory_changes_nothing(tiny_vit: Path, tmp_path: Path) -> None:
    """The parent of a clone named clipexport: the package becomes a namespace package there;
    package data, the version and the runtime still load."""
    (tmp_path / "clipexport").mkdir()
    code = (
        "from clipexport.runtime import ClipRuntime\n"
        f"r = ClipRuntime.load({str(tiny_vit)!r})\n"
        "print(r.encode_text(['a photo of a cat']).shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "(1, 64)" in done.stdout, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "clipexport", "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "clipexport" in done.stdout, done.stderr
