"""The package's shape: no import cycles, and one registry that every stage is declared in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sfhpc"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The sfhpc modules `path` imports anywhere in its source (inside functions too: a lazy import is still an
    edge), except under `if TYPE_CHECKING:`, which never runs. `from pkg import name` is an edge to the submodule
    pkg.name when there is one, else to pkg."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    skipped = {id(n) for block in ast.walk(tree) if _is_type_checking_block(block) for n in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) - {module_name(path)} for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path, monkeypatch):
    package = tmp_path / "sfhpc"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from sfhpc.b import thing\n")
    (package / "b.py").write_text("def thing():\n    from sfhpc import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sfhpc import a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    graph = import_graph()
    assert graph["sfhpc.c"] == set()  # an import only a type checker runs is no edge
    assert find_cycle(graph) == ["sfhpc.a", "sfhpc.b", "sfhpc.a"]


METRIC_NAMES = ("test_accuracy", "robust_accuracy_", "robust_", "rho_", "bandwidth_octaves", "centre_cpi",
                "peak_sensitivity", "noise_ceiling_", "rdm_ceiling_", "clean_correct", "thresholds")


@pytest.mark.parametrize("name", ["sfhpc.report", "sfhpc.sweep", "sfhpc.cli", "sfhpc.launch", "sfhpc.status"])
def test_no_module_outside_a_stage_spells_its_metric_names(name):
    """The report, the expansion and the CLI read metric and curve names from the stages' specs."""
    source = "".join(path.read_text() for path in _module_files(name))
    for literal in METRIC_NAMES:
        assert f'"{literal}' not in source and f"'{literal}" not in source, (name, literal)


@pytest.mark.parametrize("name", ["sfhpc.report", "sfhpc.sweep", "sfhpc.launch", "sfhpc.status", "sfhpc.job"])
def test_the_framework_names_no_stage(name):
    """What a stage is, where it runs and what it reports comes from the registry, never from a stage's name."""
    from sfhpc.stages.registry import BUILTIN_STAGES

    source = "".join(path.read_text() for path in _module_files(name))
    for stage in BUILTIN_STAGES:
        assert f'"{stage}"' not in source and f"'{stage}'" not in source, (name, stage)


def _module_files(name: str) -> list[Path]:
    folder = PACKAGE.parent / name.replace(".", "/")
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [folder.with_suffix(".py")]
