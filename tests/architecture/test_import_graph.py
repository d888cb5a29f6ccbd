"""The module graph of ``embedplug/``: no import cycle, and the layering the op layer relies on.

Only imports executed when a module is imported count (module level, including ``if`` / ``try``
blocks); an import inside a function runs later and cannot deadlock initialisation. An import of a
submodule is an edge to that submodule; the parent packages it initialises on the way are not
edges (every module would otherwise reach ``embedplug/__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "embedplug"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}


def _module_level_imports(tree: ast.Module):
    """Import nodes outside function and class bodies."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    stack.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])


def imports_of(name: str) -> set[str]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in _module_level_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        edges.update(target for target in targets if target in MODULES and target != name)
    return edges


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_embedplug():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_extension_loader_imports_nothing_of_embedplug():
    assert GRAPH["embedplug._extension"] == set()


@pytest.mark.parametrize("layer", ["embedplug.losses", "embedplug.functional"])
def test_losses_and_functional_reach_references_only_through_the_ops(layer):
    offenders = {
        name: sorted(target for target in targets if target.startswith("embedplug.reference"))
        for name, targets in GRAPH.items()
        if name == layer or name.startswith(layer + ".")
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}
