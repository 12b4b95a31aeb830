"""The layering contract's own guards, and the module-level import cycle check.

`lint-imports` (scripts/test.sh) enforces the contracts in pyproject.toml's ``[tool.importlinter]``. Two things
it cannot see by itself are checked here: that its graph covers every module (grimp skips packages without an
``__init__.py`` unless they are named as roots), and that every direct child of ``cqox_platform`` is sorted
into the core or the edge, so a new module is never silently outside the core contract.

Import-linter's ``acyclic_siblings`` contract looks at siblings only; a cycle between a package's
``__init__`` and one of its modules, or the CLI's circle, shows up here as a strongly connected component.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
OUR_PACKAGES = ("cqox_platform", "assets", "sensors")

# The edge of cqox_platform: everything that may import Dagster or the composition root. The rest is core.
EDGE = {"definitions", "resources", "cli", "instance_events"}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*CONFIG["root_packages"])


def contract(contract_id: str) -> dict:
    return next(c for c in CONFIG["contracts"] if c["id"] == contract_id)


def module_files() -> set[str]:
    names = set()
    for package in OUR_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "node_modules" in path.parts:
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.add(".".join(parts))
    return names


def test_the_graph_covers_every_module_file(graph: grimp.ImportGraph) -> None:
    missing = module_files() - graph.modules
    assert not missing, f"not in the import-linter graph (a package without __init__.py?): {sorted(missing)}"


def test_every_direct_child_of_cqox_platform_is_core_or_edge(graph: grimp.ImportGraph) -> None:
    children = {m.split(".")[1] for m in graph.find_children("cqox_platform")}
    core = {m.split(".")[1] for m in contract("core-is-plain-python")["source_modules"]}
    assert not core & EDGE
    assert children == core | (EDGE & children), (
        f"unclassified: {sorted(children - core - EDGE)}; add each to the core contract's source_modules "
        "in pyproject.toml, or to EDGE here if it may import Dagster"
    )


def strongly_connected_components(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Tarjan's algorithm over the direct imports among ``modules``; components of two or more are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.find_modules_directly_imported_by(node) & modules):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return components


def test_no_module_import_cycles(graph: grimp.ImportGraph) -> None:
    ours = {m for m in graph.modules if m.split(".")[0] in OUR_PACKAGES}
    cycles = strongly_connected_components(graph, ours)
    assert not cycles, f"import cycles (each a set of modules that import one another): {cycles}"
