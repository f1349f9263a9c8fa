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
    from clipexport.parity.gates import FALLBACK_TARGETS
    from clipexport.precision.pipeline import CONVERTERS

    assert set(GATES) == set(Precision)
    assert set(CONVERTERS) == {p.facts.maker for p in QUANTIZED}
    calibrated = {p for p in Precision if p.facts.calibrated}
    assert set(FALLBACK_TARGETS) == calibrated
    assert all(p.facts.targets for p in calibrated), "a calibrated precision names its Q/DQ placements"


# Files that may name a Precision or BackendKind member in a comparison: the registries themselves.
REGISTRY_FILES = {"artifact/precision.py", "parity/gates.py", "runtime/backends/__init__.py"}
PACKAGE = TESTS.parent / "clipexport"


def _member_comparisons(tree: ast.AST) -> list[tuple[int, str]]:
    """`x is Precision.INT8`, `kind == BackendKind.TENSORRT`, `p in (Precision.FP16, ...)`, and
    `{Precision.INT8: ...}` keys: a branch on a member by name, which facts or a module should make."""

    def member(node: ast.AST) -> str | None:
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("Precision", "BackendKind")
            and node.attr.isupper()
        ):
            return f"{node.value.id}.{node.attr}"
        return None

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                found += [(node.lineno, name) for name in map(member, items) if name]
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, name) for name in map(member, [k for k in node.keys if k is not None]) if name]
    return found


def test_no_file_outside_the_registries_branches_on_a_member() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in REGISTRY_FILES or rel.startswith("data/"):
            continue
        offenders += [f"{rel}:{line} {name}" for line, name in _member_comparisons(ast.parse(path.read_text("utf-8")))]
    assert not offenders, "branch on PrecisionFacts / the backend module instead: " + ", ".join(offenders)


def test_the_member_check_sees_branches() -> None:
    source = (
        "if p is Precision.INT8: pass\nok = kind in (BackendKind.TENSORRT, x)\nd = {Precision.FP16: 1}\n"
        "default = Precision.FP32\n"
    )
    assert [name for _, name in _member_comparisons(ast.parse(source))] == [
        "Precision.INT8",
        "BackendKind.TENSORRT",
        "Precision.FP16",
    ]


# Each Hugging Face model type `sources/hf.py` accepts -> the family whose test exports and verifies it.
HF_TYPES = {
    "clip": "hf-clip",
    "siglip": "hf-siglip",
    "metaclip_2": "hf-metaclip-2",
    "chinese_clip": "hf-chinese-clip",
    "altclip": "hf-altclip",
}


def test_every_hf_architecture_is_a_tested_family() -> None:
    from clipexport.sources.hf import ARCHITECTURES

    assert set(HF_TYPES) == set(ARCHITECTURES), "an HF model type without a tested family (or a stale entry here)"
    assert set(HF_TYPES.values()) <= set(FAMILY_TESTS)


@pytest.mark.parametrize("kind", list(BackendKind))
def test_every_backend_has_the_verbs(kind: BackendKind) -> None:
    from clipexport.runtime.backends import TritonServing

    module = backend_module(kind)
    assert callable(module.unavailable) and callable(module.open_tower)
    assert getattr(module, "TRITON", None) is None or isinstance(module.TRITON, TritonServing)


def test_every_family_has_an_export_and_verify_test() -> None:
    names = {f.name for f in FAMILIES}
    assert set(FAMILY_TESTS) | set(KNOWN_GAPS) == names, "a family without a test (or a test for an unlisted family)"
    assert not set(FAMILY_TESTS) & set(KNOWN_GAPS), "a family with a test is still listed as a gap"
    for family, where in FAMILY_TESTS.items():
        file, function = where.split("::")
        assert function in _test_functions(file), f"{family}: {where} does not exist"
