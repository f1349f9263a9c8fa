"""Coverage guards (optimum's pattern): a registered precision, backend or model family without
its gate, converter, module or test fails here, so the registries cannot claim more than is tested."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from clipexport.artifact.precision import QUANTIZED, Precision
from clipexport.parity.gates import GATES
from clipexport.runtime.backends import BackendKind, backend_module
from clipexport.sources.families import FAMILIES

TESTS = Path(__file__).parent

# family -> the test (file::function) that exports a tiny model of it offline and verifies it.
FAMILY_TESTS = {
    "open_clip-vit": "test_export.py::test_tiny_vit_matches",
    "open_clip-vit-quickgelu": "test_export.py::test_family_exports_and_matches",
    "open_clip-modified-resnet": "test_export.py::test_family_exports_and_matches",
    "open_clip-timm-convnext": "test_export.py::test_family_exports_and_matches",
    "open_clip-mobileclip": "test_families.py::test_mobileclip_is_reparameterized_and_verified_against_the_unfolded_model",
    "hf-clip": "test_export.py::test_hf_clip_folder_exports_and_matches",
    "hf-siglip": "test_families.py::test_hf_siglip_exports_and_verifies",
    "hf-siglip2-fixed": "test_families.py::test_hf_siglip2_fixed_resolution_exports_and_tokenizes",
    "hf-chinese-clip": "test_families.py::test_hf_masked_family_exports_and_verifies",
    "hf-altclip": "test_families.py::test_hf_masked_family_exports_and_verifies",
    "hf-metaclip-2": "test_families.py::test_hf_masked_family_exports_and_verifies",
    "open_clip-hf-text": "test_families.py::test_open_clip_hf_text_tower_exports_offline_with_text_config",
    "open_clip-siglip": "test_families.py::test_open_clip_siglip_exports_offline_and_verifies",
}
# Families the sources accept that have no export+verify test yet, each with the issue that fills it.
KNOWN_GAPS: dict[str, str] = {}


def _test_functions(file: str) -> set[str]:
    tree = ast.parse((TESTS / file).read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_precision_has_a_gate_and_a_maker() -> None:
    from clipexport.precision.pipeline import CONVERTERS

    assert set(GATES) == set(Precision)
    assert set(CONVERTERS) == set(QUANTIZED)


@pytest.mark.parametrize("kind", list(BackendKind))
def test_every_backend_has_the_verbs(kind: BackendKind) -> None:
    module = backend_module(kind)
    assert callable(module.unavailable) and callable(module.open_tower)


def test_every_family_has_an_export_and_verify_test() -> None:
    names = {f.name for f in FAMILIES}
    assert set(FAMILY_TESTS) | set(KNOWN_GAPS) == names, "a family without a test (or a test for an unlisted family)"
    assert not set(FAMILY_TESTS) & set(KNOWN_GAPS), "a family with a test is still listed as a gap"
    for family, where in FAMILY_TESTS.items():
        file, function = where.split("::")
        assert function in _test_functions(file), f"{family}: {where} does not exist"
