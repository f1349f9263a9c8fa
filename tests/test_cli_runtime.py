"""`clipexport embed` and `clipexport classify`: thin commands over ClipRuntime."""

from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from clipexport.cli import main
from clipexport.runtime import ClipRuntime


def test_embed_and_classify(tiny_vit: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (90, 60), (200, 0, 0)).save(folder / "a.png")
    Image.new("L", (40, 70), 90).save(folder / "b.jpg")
    (folder / "c.png").write_bytes(b"broken")
    runner = CliRunner()
    out = tmp_path / "e.npy"
    result = runner.invoke(main, ["embed", str(tiny_vit), "--images", str(folder), "-o", str(out), "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "c.png" in result.output
    got = np.load(out)
    want = ClipRuntime.load(tiny_vit).encode_image([folder / "a.png", folder / "b.jpg"])
    np.testing.assert_allclose(got, want, atol=1e-6)

    result = runner.invoke(main, ["embed", str(tiny_vit), "--images", str(folder), "-o", str(tmp_path / "x.npy")])
    assert result.exit_code == 2 and "error: cannot read image" in result.output and "c.png" in result.output
    assert not (tmp_path / "x.npy").exists()

    texts = tmp_path / "t.txt"
    texts.write_text("a cat\na dog\n", encoding="utf-8")
    result = runner.invoke(main, ["embed", str(tiny_vit), "--texts", str(texts), "-o", str(tmp_path / "t.npy")])
    assert result.exit_code == 0 and np.load(tmp_path / "t.npy").shape == (2, 64)

    result = runner.invoke(main, ["classify", str(tiny_vit), str(folder / "a.png"), "--labels", "red,blue"])
    assert result.exit_code == 0, result.output
    assert "a.png" in result.output and "red" in result.output and "%" in result.output
