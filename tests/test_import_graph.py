"""minidetr's imports flow one way: no module imports, at its top, one that imports it back.

Imports inside functions are left out: they run after every module has loaded
(the op kit reaches attention that way, and the CUDA kernels load on first use).
"""

from __future__ import annotations

import ast
from pathlib import Path

import minidetr

ROOT = Path(minidetr.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: _top_level_imports(p, set(paths)) - {m} for m, p in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for child in sorted(graph[module]):
            if state.get(child) == 1:
                return path[path.index(child) :] + [module, child]
            if child not in state and (found := visit(child, path + [module])):
                return found
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module, [])):
            return found
    return None


def test_no_import_cycles():
    graph = _graph()
    assert "minidetr.model.detr" in graph and graph["minidetr.model.detr"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_model_files_import_nothing_that_gathers_them():
    """The package's __init__ and the transformer's name list import the model; no model file
    imports either, so the stages stay one above the other."""
    graph = _graph()
    gatherers = {"minidetr.model", "minidetr.model.transformer"}
    for module, imports in graph.items():
        if module.startswith("minidetr.model.") and module not in gatherers:
            assert not imports & gatherers, f"{module} imports {imports & gatherers}"
