"""The layer order of docs/architecture.md, proved on the source: every import between two parts
of the package (module level or inside a function, since a lazy import is still a dependency)
points down the layers or sideways without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import clipexport

PACKAGE = Path(clipexport.__file__).parent

# Lower numbers are lower layers; a part may import its own layer or lower ones, never higher.
LAYERS = {
    # leaves: stdlib (numpy for parity/datasets)
    "errors": 0,
    "files": 0,
    "progress": 0,
    "_deps": 0,
    "gpu": 0,
    "signals": 0,
    "__init__": 0,
    "_version": 0,
    "inputs": 0,
    "process": 0,
    "artifact": 1,
    "parity": 2,
    "datasets": 2,
    "vectors": 2,
    "runtime": 3,
    "client": 3,
    "demo": 2,
    "bulk": 4,
    "search": 4,
    "sources": 4,
    "export": 4,
    "precision": 4,
    "trt": 4,
    "verify": 5,
    "bench": 5,
    "serving": 5,
    "cli": 6,
    "__main__": 7,
}


def _part(module: str) -> str:
    """The part of the package a dotted module name belongs to: its first name under clipexport."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    names = list(rel.parts)
    if names[-1] == "__init__":
        names = names[:-1] + (["__init__"] if len(names) == 1 else [])
    return ".".join(names)


def _imports(path: Path, package: str | None = None) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if package is None:
        package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
                # `from clipexport import datasets` imports the submodule
                if node.module == "clipexport":
                    found |= {
                        f"clipexport.{alias.name}"
                        for alias in node.names
                        if (PACKAGE / alias.name).is_dir() or (PACKAGE / f"{alias.name}.py").is_file()
                    }
    return {name for name in found if name == "clipexport" or name.startswith("clipexport.")}


def _sources() -> list[Path]:
    """The package's code: data/ holds package data (recipes, the calibration set), not modules."""
    return [p for p in PACKAGE.rglob("*.py") if "data" not in p.relative_to(PACKAGE).parts[:1]]


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in _sources():
        source = _part(_module_name(path))
        for target in _imports(path):
            target_part = _part(target)
            if target == "clipexport":
                continue  # the package root only holds __version__
            if target_part != source:
                edges.setdefault(source, set()).add(target_part)
    return edges


def test_every_part_has_a_layer() -> None:
    parts = {_part(_module_name(p)) for p in _sources()}
    assert parts <= set(LAYERS), f"add {sorted(parts - set(LAYERS))} to LAYERS and docs/architecture.md"


def test_no_upward_import() -> None:
    upward = sorted(f"{a} -> {b}" for a, targets in _edges().items() for b in targets if LAYERS[b] > LAYERS[a])
    assert not upward, "imports that point up the layers: " + ", ".join(upward)


def _cycles(edges: dict[str, set[str]]) -> list[str]:
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif len(stack) < 32:
                visit(nxt, stack + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    return sorted(set(cycles))


def test_no_import_cycle_between_parts() -> None:
    cycles = _cycles(_edges())
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"precision": {"verify"}, "verify": {"precision"}}) == [
        "precision -> verify -> precision",
        "verify -> precision -> verify",
    ]
    assert _cycles({"export": {"sources"}, "sources": {"artifact"}}) == []


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    # A guard that cannot fail proves nothing: an import inside a function body is found.
    source = tmp_path / "probe.py"
    source.write_text(
        "import numpy\n\ndef f():\n    from clipexport.verify.run import verify_artifact\n"
        "    from ..parity import stats\n",
        encoding="utf-8",
    )
    assert _imports(source, "clipexport.runtime") == {"clipexport.verify.run", "clipexport.parity"}
