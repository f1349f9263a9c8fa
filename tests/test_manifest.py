import json
from pathlib import Path

import pytest

from clipexport.errors import ManifestError
from clipexport.artifact.manifest import (
    TowerProperties,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Manifest,
    Tower,
    check_graph_files,
    read_manifest,
    write_manifest,
)


def test_round_trip_is_lossless(tiny_vit: Path, tmp_path: Path) -> None:
    manifest = read_manifest(tiny_vit)
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["schema_version"] == SCHEMA_VERSION


def test_manifest_describes_everything_the_runtime_needs(tiny_vit: Path) -> None:
    m = read_manifest(tiny_vit)
    vision, text = m.tower(Tower.VISION), m.tower(Tower.TEXT)
    assert [(s.name, s.dtype, s.shape) for s in vision.inputs] == [("image", "float32", ("batch", 3, 64, 64))]
    assert [(s.name, s.dtype, s.shape) for s in vision.outputs] == [("image_embeds", "float32", ("batch", 64))]
    assert [(s.name, s.dtype, s.shape) for s in text.inputs] == [("input_ids", "int64", ("batch", "sequence"))]
    assert [(s.name, s.dtype, s.shape) for s in text.outputs] == [("text_embeds", "float32", ("batch", 64))]
    assert m.embed_dim == 64 and m.normalized
    assert m.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's init value
    assert m.preprocess.image_size == (64, 64) and m.preprocess.interpolation == "bicubic"
    assert m.tokenizer.kind == "clip_bpe" and (m.tokenizer.sot_id, m.tokenizer.eot_id, m.tokenizer.pad_id) == (
        49406,
        49407,
        0,
    )
    assert text.properties == TowerProperties(pooling="argmax", causal_mask=True, variable_length=True)
    assert m.source.checkpoint_sha256 and len(m.source.checkpoint_sha256) == 64
    assert {"clipexport", "torch", "onnx", "open_clip"} <= set(m.versions)
    for tower in Tower:
        check_graph_files(tiny_vit, m.tower(tower).graph("fp32"))


def test_unknown_schema_version_is_a_clear_error(tiny_vit: Path, tmp_path: Path) -> None:
    data = json.loads((tiny_vit / MANIFEST_NAME).read_text())
    data["schema_version"] = 99
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="schema version 99 is not supported"):
        read_manifest(tmp_path)


def test_missing_key_names_the_key(tiny_vit: Path) -> None:
    data = json.loads((tiny_vit / MANIFEST_NAME).read_text())
    del data["tokenizer"]["eot_id"]
    with pytest.raises(ManifestError, match="tokenizer.eot_id"):
        Manifest.from_dict(data)


def test_not_an_artifact_folder(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not a clipexport artifact folder"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_changed_graph_is_detected(tiny_vit: Path, tmp_path: Path) -> None:
    graph = read_manifest(tiny_vit).tower("text").graph("fp32")
    (tmp_path / graph.file).write_bytes((tiny_vit / graph.file).read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="does not match the manifest"):
        check_graph_files(tmp_path, graph)
    (tmp_path / graph.file).unlink()
    with pytest.raises(ManifestError, match="missing"):
        check_graph_files(tmp_path, graph)


def test_missing_precision_names_the_fix(tiny_vit: Path) -> None:
    with pytest.raises(ManifestError, match="clipexport quantize"):
        read_manifest(tiny_vit).tower("vision").graph("int8")


def test_written_artifacts_are_not_owner_only(tiny_vit: Path) -> None:
    # mkstemp/mkdtemp default to 0600/0700; a serving user other than the exporter must read them.
    assert (tiny_vit / MANIFEST_NAME).stat().st_mode & 0o044 == 0o044
    assert tiny_vit.stat().st_mode & 0o055 == 0o055
