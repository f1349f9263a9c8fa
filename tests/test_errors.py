"""User mistakes end in one clear line (exit 2), never a traceback or a half-written folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import CONFIGS
from clipexport.cli import main


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _assert_one_line_error(code: int, output: str, *needles: str, exit_code: int = 2) -> None:
    assert code == exit_code, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_unknown_model_suggests_names(tmp_path: Path) -> None:
    code, out = _run("export", "ViT-B-23", "-o", str(tmp_path / "a"))
    _assert_one_line_error(code, out, "unknown OpenCLIP model 'ViT-B-23'", "did you mean", "ViT-B-32")
    assert not (tmp_path / "a").exists()


def test_unknown_pretrained_tag_lists_tags(tmp_path: Path) -> None:
    code, out = _run("export", "ViT-B-32", "--pretrained", "laion9000", "-o", str(tmp_path / "a"))
    _assert_one_line_error(code, out, "'laion9000' is not a pretrained tag", "openai")


def test_missing_checkpoint_path(tmp_path: Path) -> None:
    code, out = _run("export", "ViT-B-32", "--pretrained", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "a"))
    _assert_one_line_error(code, out, "checkpoint file", "not found")


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    code, out = _run("export", str(CONFIGS / "tiny-vit.json"), "--pretrained", str(bad), "-o", str(tmp_path / "a"))
    _assert_one_line_error(code, out, f"checkpoint {bad} could not be loaded")
    assert not (tmp_path / "a").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".a.partial")]


def test_checkpoint_for_another_model(tmp_path: Path) -> None:
    from conftest import save_open_clip_checkpoint

    ckpt = save_open_clip_checkpoint("tiny-rn", tmp_path)
    code, out = _run("export", str(CONFIGS / "tiny-vit.json"), "--pretrained", str(ckpt), "-o", str(tmp_path / "a"))
    _assert_one_line_error(code, out, "could not be loaded into tiny-vit")


def test_offline_download_says_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "clipexport", "export", "ViT-B-32", "--pretrained", "openai", "-o", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    # 3: the environment (no network), not a user mistake
    _assert_one_line_error(
        proc.returncode, proc.stderr, "download of weights", "offline?", "--pretrained PATH", exit_code=3
    )
    assert not (tmp_path / "a").exists()


def test_offline_hf_hub_id(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "clipexport", "export", "openai/clip-vit-base-patch32", "-o", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    _assert_one_line_error(
        proc.returncode, proc.stderr, "download of Hugging Face model", "save_pretrained", exit_code=3
    )


def test_missing_hf_folder(tmp_path: Path) -> None:
    code, out = _run("export", str(tmp_path / "nope"), "--source", "hf", "-o", str(tmp_path / "a"))
    _assert_one_line_error(code, out, "not found")


def test_bad_model_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "mine.json"
    bad.write_text('{"embed_dim": 3}')
    code, out = _run("export", str(bad), "-o", str(tmp_path / "a"))
    _assert_one_line_error(code, out, "not an OpenCLIP model config")


def test_non_empty_output_needs_overwrite(tmp_path: Path) -> None:
    out_dir = tmp_path / "a"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    code, out = _run("export", str(CONFIGS / "tiny-vit.json"), "-o", str(out_dir))
    _assert_one_line_error(code, out, "not empty", "--overwrite")
    assert (out_dir / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_whole_folder(tmp_path: Path) -> None:
    out_dir = tmp_path / "a"
    code, out = _run("export", str(CONFIGS / "tiny-vit.json"), "-o", str(out_dir), "-q")
    assert code == 0, out
    (out_dir / "stale.onnx").write_text("old")  # an earlier artifact with a leftover: replaced whole
    code, out = _run("export", str(CONFIGS / "tiny-vit.json"), "-o", str(out_dir), "--overwrite", "-q")
    assert code == 0, out
    assert sorted(p.name for p in out_dir.iterdir()) == ["manifest.json", "text.onnx", "vision.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no staging or backup left behind


def test_low_opset_is_refused(tmp_path: Path) -> None:
    code, out = _run("export", str(CONFIGS / "tiny-vit.json"), "--opset", "13", "-o", str(tmp_path / "a"))
    _assert_one_line_error(code, out, "opset 13", "LayerNormalization")
    assert not (tmp_path / "a").exists()


def test_verify_errors(tiny_vit: Path, tmp_path: Path) -> None:
    code, out = _run("verify", str(tmp_path))
    _assert_one_line_error(code, out, "not a clipexport artifact folder")
    empty = tmp_path / "imgs"
    empty.mkdir()
    code, out = _run("verify", str(tiny_vit), "--images", str(empty))
    _assert_one_line_error(code, out, "has no images")
    (empty / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, out = _run("verify", str(tiny_vit), "--images", str(empty))
    _assert_one_line_error(code, out, "cannot read image", "broken.jpg")
    blank = tmp_path / "texts.txt"
    blank.write_text("\n  \n")
    code, out = _run("verify", str(tiny_vit), "--texts", str(blank))
    _assert_one_line_error(code, out, "has no captions")


def test_verify_with_user_inputs(tiny_vit: Path, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (50, 80), (200, 10, 10)).save(folder / "red.png")
    Image.new("L", (300, 120), 128).save(folder / "grey.jpg")
    texts = tmp_path / "captions.txt"
    texts.write_text("a red square\na grey rectangle\n", encoding="utf-8")
    copy = tmp_path / "artifact"
    copy.mkdir()
    for f in tiny_vit.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    code, out = _run("verify", str(copy), "--images", str(folder), "--texts", str(texts), "-q")
    assert code == 0, out
    assert "(2 images x 2 texts)" in out


def test_verify_fails_on_a_tampered_graph(tiny_vit: Path, tmp_path: Path) -> None:
    copy = tmp_path / "artifact"
    copy.mkdir()
    for f in tiny_vit.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "vision.onnx").write_bytes((copy / "vision.onnx").read_bytes()[:-10])
    code, out = _run("verify", str(copy))
    _assert_one_line_error(code, out, "vision.onnx does not match the manifest")


def test_verify_exits_1_below_tolerance(tiny_vit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipexport.parity import gates

    # A gate no FP32 export can meet (max abs exactly 0) must turn into exit 1 with the failing tower named.
    monkeypatch.setitem(gates.GATES, "fp32", gates.Gate(min_cosine=1.0 + 1e-9, max_abs=0.0))
    code, out = _run("verify", str(tiny_vit), "-q")
    assert code == 1
    assert "FAIL" in out and "vision" in out
