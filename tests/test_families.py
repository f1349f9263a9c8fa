"""Families beyond CLIP BPE: exported offline from tiny random models, verified at the FP32 gate,
and tokenized by the torch-free runtime exactly as the source library does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import export_dir
from test_tokenizer import TRICKY
from clipexport.artifact.manifest import TokenizerKind, read_manifest
from clipexport.datasets import DEFAULT_CAPTIONS
from clipexport.runtime import ClipRuntime
from clipexport.verify.run import VerifyOptions, verify_artifact


@pytest.fixture(scope="module")
def hf_siglip(hf_siglip_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_dir(tmp_path_factory, "hf-siglip", str(hf_siglip_folder), None)


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
        np.testing.assert_allclose(runtime.encode_text(corpus[:8]), runtime.encode_text(want[:8].astype(np.int64)),
                                   atol=1e-6)


def test_runtime_tokenizer_needs_no_torch_or_transformers(hf_siglip: Path) -> None:
    import subprocess
    import sys

    code = ("import sys\n"
            "for name in ('torch', 'transformers', 'open_clip'):\n    sys.modules[name] = None\n"
            "from clipexport.runtime import ClipRuntime\n"
            f"with ClipRuntime.load({str(hf_siglip)!r}) as rt:\n"
            "    print(rt.encode_text(['a photo of a cat', '']).shape)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "(2, 64)" in proc.stdout, proc.stderr
