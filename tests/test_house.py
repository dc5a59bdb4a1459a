"""The house rules of ``lsb_mm``, read from the source: packages by concept in layers, no import
circle, the experiments beside the library, small modules and functions.

Every import counts, also those inside functions (a lazy import still ties two modules together).
"""
import ast
import os
from typing import Dict, Set

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lsb_mm")
FACADE_USERS = {"lsb_mm", "lsb_mm.__main__", "lsb_mm.cli"}  # may import the package facade
LEAVES = {"lsb_mm._version": set(), "lsb_mm._lazy": set(), "lsb_mm.errors": set(), "lsb_mm.names": set(),
          "lsb_mm.files": {"lsb_mm.errors", "lsb_mm._version"}, "lsb_mm.models.model_card": {"lsb_mm.names"}}
PACKAGES = ("models", "data", "training", "retrieval", "evaluation", "serving", "scale", "cli")
# package -> the packages it must never import, at any depth of its modules
FORBIDDEN = {
    "data": {"models", "training", "retrieval", "evaluation", "serving", "scale", "cli"},
    "models": {"training", "retrieval", "evaluation", "serving", "scale", "cli"},
    "retrieval": {"training", "evaluation", "serving", "cli"},
    "evaluation": {"training", "serving", "scale", "cli"},
    "training": {"serving", "scale", "cli"},
    "scale": {"training", "retrieval", "evaluation", "serving", "cli"},
    "serving": {"training", "scale", "cli"},
}
EXPERIMENTS = "lsb_mm_experiments"
# the one place the library reaches the experiments: `lsb-mm demo`, imported when the command runs
EXPERIMENT_DOORS = {("lsb_mm.cli.misc", "lsb_mm_experiments.demo")}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


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
    assert "lsb_mm.models.encoders.base" in g["lsb_mm.models.encoders"]  # from lsb_mm.models.encoders.base import ...
    assert "lsb_mm.models.factory" in g["lsb_mm.training.trainer"]      # a lazy import inside a method
    assert "lsb_mm.files" in g["lsb_mm.data.tasks"]
    assert "lsb_mm.models.encoders" in g["lsb_mm.models.factory"]       # a package import is its __init__
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


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_library_is_in_packages_by_concept():
    top = sorted(m for m in _modules() if m.count(".") == 1 and not m.endswith("__main__"))
    loose = [m for m in top if _package(m) not in PACKAGES]
    assert loose == ["lsb_mm._lazy", "lsb_mm._version", "lsb_mm.errors", "lsb_mm.files", "lsb_mm.names"]
    assert all(f"lsb_mm.{p}" in _modules() for p in PACKAGES)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_keep_their_layer(package):
    """e.g. models never import training, serving, scale or cli; retrieval never imports training."""
    crossings = sorted((m, d) for m, deps in import_graph().items() if _package(m) == package
                       for d in deps if _package(d) in FORBIDDEN[package])
    assert crossings == []


def test_the_layer_rules_see_a_crossing():
    g = import_graph()
    assert any(_package(d) == "models" for d in g["lsb_mm.training.trainer"])  # an allowed one, seen
    assert "lsb_mm.retrieval.index" in g["lsb_mm.evaluation.evaluate"]


def _experiment_imports():
    """(lsb_mm module, lsb_mm_experiments module) for every import of the experiments in the library."""
    found = set()
    for mod, path in _modules().items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found |= {(mod, n) for n in names if n == EXPERIMENTS or n.startswith(EXPERIMENTS + ".")}
    return found


def test_the_library_imports_nothing_of_the_experiments():
    assert _experiment_imports() == EXPERIMENT_DOORS


def test_the_demo_door_is_lazy():
    """The one import of the experiments runs inside ``cmd_demo``: importing the CLI loads none of them."""
    import subprocess
    import sys

    code = "import sys, lsb_mm.cli; print(any(m.startswith('lsb_mm_experiments') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]


def _sources():
    """Every module of the library and of the experiments beside it: path -> module name."""
    out = {p: m for m, p in _modules().items()}
    for folder, _, files in os.walk(os.path.join(os.path.dirname(ROOT), EXPERIMENTS)):
        out.update({os.path.join(folder, f): f for f in files if f.endswith(".py")})
    return out


def test_modules_stay_small():
    long = {m: n for p, m in _sources().items() if (n := sum(1 for _ in open(p, encoding="utf-8"))) > MAX_MODULE_LINES}
    assert long == {}


def _function_lengths(path: str):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_functions_stay_short():
    long = sorted(f"{p}:{line} {name} ({n} lines)" for p in _sources()
                  for name, line, n in _function_lengths(p) if n > MAX_FUNCTION_LINES)
    assert long == []


def test_the_size_rules_measure(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n" + "    x = 1\n" * 90 + "\n\ndef g():\n    return 2\n")
    assert [(n, k) for n, _, k in _function_lengths(str(src))] == [("f", 91), ("g", 2)]


def test_no_test_module_imports_another():
    """Tests share code through ``helpers`` (and ``conftest``'s fixtures) only."""
    here = os.path.dirname(os.path.abspath(__file__))
    tests = {f[:-3] for f in os.listdir(here) if f.startswith("test_") and f.endswith(".py")}
    found = []
    for name in sorted(tests):
        with open(os.path.join(here, name + ".py"), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [(name, n) for n in names if n.split(".")[0] in tests]
    assert found == []
