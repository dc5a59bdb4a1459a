"""The import structure of ``lsb_mm``, read from the source: no circles, layers respected.

Every import counts, also those inside functions (a lazy import still ties two modules together).
"""
import ast
import os
from typing import Dict, Set

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lsb_mm")
FACADE_USERS = {"lsb_mm", "lsb_mm.__main__", "lsb_mm.cli", "lsb_mm_experiments.demo"}  # may import the package facade
LEAVES = {"lsb_mm._version": set(), "lsb_mm.errors": set(), "lsb_mm.files": {"lsb_mm.errors", "lsb_mm._version"}, "lsb_mm.names": set(),
          "lsb_mm.models.model_card": {"lsb_mm.names"}}


def _modules() -> Dict[str, str]:
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, f)
    return out


def import_graph() -> Dict[str, Set[str]]:
    """module -> the lsb_mm modules it imports (a package name means its ``__init__``)."""
    mods = _modules()
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.endswith("__init__.py")
        package = mod if is_pkg else mod.rpartition(".")[0]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                # `from X import name`: the submodule X.name when it is one, else X itself
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in mods else src for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rpartition(".")[0]
                if t in mods and t != mod:
                    graph[mod].add(t)
    return graph


def _cycle(graph: Dict[str, Set[str]]):
    state: Dict[str, int] = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_sees_the_imports_it_should():
    g = import_graph()
    assert "lsb_mm.models.encoders.base" in g["lsb_mm.models.encoders"]            # from .base import ...
    assert "lsb_mm.models.factory" in g["lsb_mm.training.trainer"]                   # a lazy import inside a method
    assert "lsb_mm.files" in g["lsb_mm.data.tasks"]              # from ..files import ...
    assert "lsb_mm.models.encoders" in g["lsb_mm.models.factory"]                  # a package import is its __init__
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    assert _cycle(import_graph()) is None


def test_only_the_top_layer_imports_the_package_facade():
    g = import_graph()
    offenders = sorted(m for m, deps in g.items() if "lsb_mm" in deps and m not in FACADE_USERS)
    assert offenders == []


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_stay_leaves(leaf):
    assert import_graph()[leaf] <= LEAVES[leaf]


def test_serialization_is_the_file_format_alone():
    """It imports no model, encoder or factory: only the leaves."""
    assert import_graph()["lsb_mm.models.serialization"] <= set(LEAVES)
