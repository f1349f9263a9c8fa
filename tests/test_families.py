"""Families beyond CLIP BPE: exported offline from tiny random models, verified at the FP32 gate,
and tokenized by the torch-free runtime exactly as the source library does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import export_dir
from test_tokenizer import TRICKY
from clipexport.artifact.manifest import ResizeMode, TokenizerKind, read_manifest
from clipexport.artifact.precision import Precision
from clipexport.datasets import DEFAULT_CAPTIONS
from clipexport.runtime import ClipRuntime
from clipexport.verify.run import VerifyOptions, verify_artifact


# Families this module has exported, by PRECISION_FAMILIES name: the precision test copies one
# instead of exporting the same model with the same settings again.
_EXPORTED: dict[str, Path] = {}


def _exported(family: str, artifact: Path) -> Path:
    _EXPORTED[family] = artifact
    return artifact


@pytest.fixture(scope="module")
def hf_siglip(hf_siglip_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _exported("hf-siglip", export_dir(tmp_path_factory, "hf-siglip", str(hf_siglip_folder), None))


def test_hf_siglip_exports_and_verifies(hf_siglip: Path) -> None:
    manifest = read_manifest(hf_siglip)
    assert manifest.tokenizer.kind == TokenizerKind.HF_JSON.value and (hf_siglip / "tokenizer.json").is_file()
    assert manifest.logit_bias is not None and manifest.tokenizer.context_length == 64
    report = verify_artifact(VerifyOptions(artifact=hf_siglip, num_images=6))
    assert report.passed, report.table()


def test_hf_siglip_runtime_tokenizer_equals_transformers(hf_siglip: Path, hf_siglip_folder: Path) -> None:
    import transformers

    reference = transformers.AutoTokenizer.from_pretrained(hf_siglip_folder)
    corpus = TRICKY + list(DEFAULT_CAPTIONS)
    want = reference(corpus, padding="max_length", max_length=64, truncation=True, return_tensors="np")["input_ids"]
    with ClipRuntime.load(hf_siglip) as runtime:
        got = runtime.tokenizer(corpus)
        mismatched = [corpus[i] for i in range(len(corpus)) if not np.array_equal(got[i], want[i])]
        assert not mismatched, mismatched[:3]
        # Text embeddings through the runtime's own tokenizer equal the graph fed the reference ids.
        np.testing.assert_allclose(
            runtime.encode_text(corpus[:8]), runtime.encode_text(want[:8].astype(np.int64)), atol=1e-6
        )


def test_runtime_tokenizer_needs_no_torch_or_transformers(hf_siglip: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'open_clip'):\n    sys.modules[name] = None\n"
        "from clipexport.runtime import ClipRuntime\n"
        f"with ClipRuntime.load({str(hf_siglip)!r}) as rt:\n"
        "    print(rt.encode_text(['a photo of a cat', '']).shape)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "(2, 64)" in proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def siglip_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import train_unigram_tokenizer

    folder = tmp_path_factory.mktemp("siglip-tokenizer")
    train_unigram_tokenizer(64).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def open_clip_siglip(siglip_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OpenCLIP's SigLIP layout (no causal mask, `last` pooling, logit bias, an HF tokenizer with
    canonicalize cleaning), random weights, the tokenizer from a local folder: no network."""
    from conftest import CONFIGS

    return _exported(
        "open_clip-siglip",
        export_dir(
            tmp_path_factory, "oc-siglip", str(CONFIGS / "tiny-siglip.json"), "random", tokenizer=siglip_tokenizer_dir
        ),
    )


def test_open_clip_siglip_exports_offline_and_verifies(open_clip_siglip: Path) -> None:
    manifest = read_manifest(open_clip_siglip)
    assert manifest.tokenizer.kind == TokenizerKind.HF_JSON.value and manifest.tokenizer.clean == "canonicalize"
    assert not manifest.tower("text").properties.trimmable  # no causal mask: never cut
    # The config file's preprocess_cfg (SigLIP's squash, mean/std 0.5) reaches the runtime.
    assert manifest.preprocess.resize_mode is ResizeMode.SQUASH and manifest.preprocess.mean == (0.5, 0.5, 0.5)
    report = verify_artifact(VerifyOptions(artifact=open_clip_siglip, num_images=6))
    assert report.passed, report.table()


def test_open_clip_siglip_runtime_tokenizer_equals_open_clip(
    open_clip_siglip: Path, siglip_tokenizer_dir: Path
) -> None:
    from open_clip.tokenizer import HFTokenizer

    reference = HFTokenizer(str(siglip_tokenizer_dir), context_length=64, clean="canonicalize")
    corpus = TRICKY + list(DEFAULT_CAPTIONS)
    want = reference(corpus).numpy()
    with ClipRuntime.load(open_clip_siglip) as runtime:
        got = runtime.tokenizer(corpus)
    mismatched = [corpus[i] for i in range(len(corpus)) if not np.array_equal(got[i], want[i])]
    assert not mismatched, mismatched[:3]


def test_open_clip_tokenizer_offline_names_the_option(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from conftest import CONFIGS

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipexport",
            "export",
            str(CONFIGS / "tiny-siglip.json"),
            "-o",
            str(tmp_path / "a"),
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 3 and "--tokenizer DIR" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_hf_folder_without_tokenizer_is_one_line(hf_siglip_folder: Path, tmp_path: Path) -> None:
    import shutil

    from click.testing import CliRunner

    from clipexport.cli import main

    folder = tmp_path / "no-tokenizer"
    shutil.copytree(hf_siglip_folder, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    result = CliRunner().invoke(main, ["export", str(folder), "-o", str(tmp_path / "a"), "-q"])
    assert result.exit_code == 2 and "no tokenizer files" in result.output and "--tokenizer DIR" in result.output
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(folder),
            "-o",
            str(tmp_path / "b"),
            "-q",
            "--tokenizer",
            str(hf_siglip_folder / "tokenizer.json"),
        ],
    )
    assert result.exit_code == 0, result.output


def _config_with(tmp_path: Path, base: str, **changes: dict) -> Path:
    import json

    from conftest import CONFIGS

    config = json.loads((CONFIGS / base).read_text())
    for section, values in changes.items():
        config[section].update(values)
    path = tmp_path / f"{base.removesuffix('.json')}-changed.json"
    path.write_text(json.dumps(config))
    return path


def test_scaled_cosine_attention_exports_and_verifies(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """open_clip's scaled_cosine_attn calls torch.bmm on 4-D tensors and fails in PyTorch itself;
    the loader's matmul fix makes it run, export and match (the reference gets the same fix)."""
    config = _config_with(
        tmp_path, "tiny-vit.json", vision_cfg={"scaled_cosine_attn": True}, text_cfg={"scaled_cosine_attn": True}
    )
    artifact = export_dir(tmp_path_factory, "cosine-attn", str(config), "random")
    manifest = read_manifest(artifact)
    for tower in ("vision", "text"):
        notes = manifest.tower(tower).graph(Precision.FP32).details.adjustments
        assert any(n.startswith("scaled_cosine_attention_matmul (2 attention") for n in notes), notes
    report = verify_artifact(VerifyOptions(artifact=artifact, num_images=6))
    assert report.passed, report.table()


def test_mobileclip_is_reparameterized_and_verified_against_the_unfolded_model(tmp_path_factory) -> None:
    """MobileCLIP's FastViT image tower (fastvit_mci0, tiny input): exported with its branches
    folded, recorded in the manifest, and verified against the loaded (unfolded) PyTorch model."""
    import onnx

    from conftest import CONFIGS

    config = str(CONFIGS / "tiny-mobileclip.json")
    folded = _exported("open_clip-mobileclip", export_dir(tmp_path_factory, "mobileclip", config, "random"))
    unfolded = export_dir(tmp_path_factory, "mobileclip-unfolded", config, "random", reparameterize=False)
    details = read_manifest(folded).tower("vision").graph(Precision.FP32).details
    assert any(n.startswith("reparameterized (timm reparameterize_model:") for n in details.adjustments)
    assert not read_manifest(unfolded).tower("vision").graph(Precision.FP32).details.adjustments
    nodes = {
        name: len(onnx.load(str(a / "vision.onnx")).graph.node)
        for name, a in (("folded", folded), ("unfolded", unfolded))
    }
    assert nodes["folded"] < 0.8 * nodes["unfolded"], nodes
    report = verify_artifact(VerifyOptions(artifact=folded, num_images=6))
    assert report.passed, report.table()


# Hugging Face families whose text tower takes the tokenizer's attention mask (derived in the graph).
MASKED_HF_FAMILIES = ("chinese_clip", "altclip", "metaclip_2")


@pytest.fixture(scope="module", params=MASKED_HF_FAMILIES)
def hf_masked_family(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    from helpers import save_tiny_hf_family

    family = request.param
    folder = save_tiny_hf_family(family, tmp_path_factory.mktemp(f"hf-{family}") / family)
    artifact = _exported(
        f"hf-{family.replace('_', '-')}", export_dir(tmp_path_factory, f"x-{family}", str(folder), None)
    )
    return family, folder, artifact


def test_hf_masked_family_exports_and_verifies(hf_masked_family) -> None:
    family, _, artifact = hf_masked_family
    text = read_manifest(artifact).tower("text")
    assert text.properties.padding_mask and text.properties.variable_length, family
    report = verify_artifact(VerifyOptions(artifact=artifact, num_images=6))
    assert report.passed, (family, report.table())


def test_hf_masked_family_runtime_equals_transformers(hf_masked_family) -> None:
    """Ids equal the transformers tokenizer's on the tricky corpus; embeddings through the
    torch-free runtime (pad, then cut after the batch's last real token) equal the model called
    as its card says: padding=True with the tokenizer's attention mask."""
    import torch
    import transformers

    family, folder, artifact = hf_masked_family
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    corpus = TRICKY + list(DEFAULT_CAPTIONS)
    with ClipRuntime.load(artifact) as runtime:
        length = runtime.manifest.tokenizer.context_length
        want = reference(corpus, padding="max_length", max_length=length, truncation=True, return_tensors="np")[
            "input_ids"
        ]
        got = runtime.tokenizer(corpus)
        mismatched = [corpus[i] for i in range(len(corpus)) if not np.array_equal(got[i], want[i])]
        assert not mismatched, (family, mismatched[:3])
        ours = runtime.encode_text(corpus[:12])
    batch = reference(corpus[:12], padding=True, truncation=True, max_length=length, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    theirs = torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_hf_siglip2_fixed_resolution_exports_and_tokenizes(tmp_path_factory: pytest.TempPathFactory) -> None:
    import transformers

    from helpers import save_tiny_hf_siglip2_fixed

    folder = save_tiny_hf_siglip2_fixed(tmp_path_factory.mktemp("hf-siglip2") / "siglip2")
    artifact = export_dir(tmp_path_factory, "x-siglip2", str(folder), None)
    report = verify_artifact(VerifyOptions(artifact=artifact, num_images=6))
    assert report.passed, report.table()
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    corpus = TRICKY + list(DEFAULT_CAPTIONS)
    want = reference(corpus, padding="max_length", max_length=64, truncation=True, return_tensors="np")["input_ids"]
    with ClipRuntime.load(artifact) as runtime:
        got = runtime.tokenizer(corpus)
    assert [corpus[i] for i in range(len(corpus)) if not np.array_equal(got[i], want[i])] == []


def test_unsupported_hf_types_are_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from transformers import Siglip2Config

    from clipexport.cli import main

    folder = tmp_path / "naflex"
    Siglip2Config().save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"x")  # a weights file, so the type check is what refuses
    result = CliRunner().invoke(main, ["export", str(folder), "-o", str(tmp_path / "a"), "-q"])
    assert result.exit_code == 2 and "NaFlex" in result.output and "not supported yet" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "a").exists()


@pytest.fixture(scope="module")
def xlmr_text_tower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import save_tiny_xlmr_text_tower

    return save_tiny_xlmr_text_tower(tmp_path_factory.mktemp("xlmr") / "xlm-roberta-tiny")


def test_open_clip_hf_text_tower_exports_offline_with_text_config(
    xlmr_text_tower: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """open_clip's xlm-roberta text towers (also mT5, NLLB, RoBERTa) fetch the HF config even for
    random init; --text-config gives it locally, and its tokenizer files serve the runtime."""
    from open_clip.tokenizer import HFTokenizer

    from conftest import CONFIGS

    artifact = export_dir(
        tmp_path_factory, "oc-xlmr", str(CONFIGS / "tiny-xlmr.json"), "random", text_config=xlmr_text_tower
    )
    report = verify_artifact(VerifyOptions(artifact=artifact, num_images=6))
    assert report.passed, report.table()
    reference = HFTokenizer(str(xlmr_text_tower), context_length=77)
    corpus = TRICKY + list(DEFAULT_CAPTIONS)
    want = reference(corpus).numpy()
    with ClipRuntime.load(artifact) as runtime:
        got = runtime.tokenizer(corpus)
    assert [corpus[i] for i in range(len(corpus)) if not np.array_equal(got[i], want[i])] == []


def test_hf_text_tower_offline_names_text_config(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from conftest import CONFIGS

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipexport",
            "export",
            str(CONFIGS / "tiny-xlmr.json"),
            "-o",
            str(tmp_path / "a"),
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 3 and "--text-config DIR" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _build_family(family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh tiny export of a family (each precision test converts its own copy): a copy of the
    module's export of it when a test above made one, the same model with the same settings."""
    import shutil

    from conftest import CONFIGS
    from helpers import save_tiny_hf_family, save_tiny_hf_siglip, train_unigram_tokenizer

    folder = tmp_path_factory.mktemp(f"p-{family}")
    if family in _EXPORTED:
        copy = folder / "artifact"
        shutil.copytree(_EXPORTED[family], copy, ignore=shutil.ignore_patterns("parity.json"))
        return copy
    if family == "open_clip-siglip":
        train_unigram_tokenizer(64).save_pretrained(folder / "tok")
        return export_dir(
            tmp_path_factory, family, str(CONFIGS / "tiny-siglip.json"), "random", tokenizer=folder / "tok"
        )
    if family == "open_clip-mobileclip":
        return export_dir(tmp_path_factory, family, str(CONFIGS / "tiny-mobileclip.json"), "random")
    if family == "hf-siglip":
        return export_dir(tmp_path_factory, family, str(save_tiny_hf_siglip(folder / "m")), None)
    hf_type = family.removeprefix("hf-").replace("-", "_")
    return export_dir(tmp_path_factory, family, str(save_tiny_hf_family(hf_type, folder / "m")), None)


# Each family row of the README's FP16 / INT8-cpu columns is one of these.
PRECISION_FAMILIES = (
    "open_clip-siglip",
    "open_clip-mobileclip",
    "hf-siglip",
    "hf-chinese-clip",
    "hf-altclip",
    "hf-metaclip-2",
)


@pytest.mark.parametrize("family", PRECISION_FAMILIES)
def test_family_fp16_and_cpu_int8_meet_the_gates(family: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """SigLIP's layout (no causal mask, last pooling, logit bias), BERT / XLM-R towers with a
    derived padding mask, FastViT: FP16 and INT8 (--target cpu) pass the precision gates."""
    from clipexport.precision.calibration import CalibrationSource
    from clipexport.precision.calibrated import Target
    from clipexport.precision.pipeline import QuantizeOptions, quantize_artifact

    artifact = _build_family(family, tmp_path_factory)
    small = CalibrationSource(size=24)
    quantize_artifact(QuantizeOptions(artifact=artifact, precision=Precision.FP16, calibration=small))
    quantize_artifact(
        QuantizeOptions(artifact=artifact, precision=Precision.INT8, calibration=small, target=Target.CPU)
    )
    report = verify_artifact(VerifyOptions(artifact=artifact, precisions=("fp16", "int8"), num_images=8))
    assert report.passed, (family, report.table())
