"""The package's layout stays a map of its architecture (docs/architecture.md): no import points up a layer, no
two modules import each other (directly or round a longer loop; imports inside functions count), no module over
400 lines and no function over 80 (the Triton kernels aside)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = ("ops", "layers", "models", "tasks", "cli")  # each may import only those before it


def _modules(root: Path, package: str = "involution") -> dict[str, tuple[Path, ast.Module]]:
    """Every module of ``package`` under the source folder ``root``: dotted name -> (path, syntax tree)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = (path, ast.parse(path.read_text(), str(path)))
    return found


def _imported_names(node: ast.Import | ast.ImportFrom, package: list[str]) -> list[str]:
    """The dotted name of everything ``node`` imports: ``import a.b`` -> ``a.b``; ``from X import a, b`` -> ``X.a``,
    ``X.b`` (each a submodule of X, or a name that X defines), a relative X resolved against ``package``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the package, one level up per extra dot
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{alias.name}" for alias in node.names]


def _imports(modules: dict[str, tuple[Path, ast.Module]], name: str) -> set[str]:
    """The modules among ``modules`` that module ``name`` imports: for each imported name, the module itself if it
    is one, else the module that defines it (every name of ``from . import a, b, c`` is an edge)."""
    path, tree = modules[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        for candidate in _imported_names(node, package):
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def import_graph(root: Path, package: str = "involution") -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at the top or inside functions), for ``package`` in ``root``."""
    modules = _modules(root, package)
    return {name: _imports(modules, name) for name in modules}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules of each loop of imports in ``graph`` (its strongly connected components of 2 or more, sorted)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


MODULES = _modules(SRC)
GRAPH = import_graph(SRC)


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_import_points_up_a_layer():
    upward = [f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
              if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a)]
    assert upward == []


def test_no_import_cycles():
    assert import_cycles(GRAPH) == []


def private_imports(modules: dict[str, tuple[Path, ast.Module]]) -> list[str]:
    """``importer -> name`` for each of the library's private modules or names (a dotted part starting with ``_``)
    imported from outside the package that holds it: ``involution.ops._shapes`` is the ops package's own,
    ``involution._checks`` the whole library's, a module's ``_helper`` its package's (its sibling modules share it)."""
    found = []
    for name, (path, tree) in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for imported in _imported_names(node, package):
                parts = imported.split(".")
                private = next((i for i, part in enumerate(parts) if part.startswith("_")), None)
                if parts[0] != "involution" or private is None or parts[private].startswith("__"):  # (dunders)
                    continue
                owner = ".".join(parts[:private])
                if owner in modules and modules[owner][0].name != "__init__.py":  # a module's name: its package's
                    owner = owner.rpartition(".")[0]
                if name != owner and not name.startswith(owner + "."):
                    found.append(f"{name} -> {imported}")
    return sorted(found)


def test_no_package_imports_another_ones_private_parts():
    """What another package needs has a public name (issue 30): private modules and names stay in their package."""
    assert private_imports(MODULES) == []


def test_every_name_of_a_from_import_is_an_edge():
    """``from . import a, b, c`` imports three modules: the command line's package imports each of its families."""
    families = {"classification", "deploy", "dense", "info", "models", "study", "video"}
    assert {f"involution.cli.{f}" for f in families} <= GRAPH["involution.cli"]


def test_the_parser_finds_a_cycle_through_the_second_name_of_an_import(tmp_path):
    """A synthetic package: ``a`` imports ``b`` and ``c`` in one statement, ``c`` imports ``a`` back inside a
    function; names that are no module count as an edge to the module that defines them."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from . import b, c\n",
        "b.py": "import os\nfrom .sub.d import helper, other\n",
        "c.py": "def late():\n    from .a import something\n",
        "sub/__init__.py": "",
        "sub/d.py": "def helper():\n    pass\nother = 1\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b", "pkg.c"}
    assert graph["pkg.b"] == {"pkg.sub.d"} and graph["pkg.c"] == {"pkg.a"}
    assert import_cycles(graph) == [["pkg.a", "pkg.c"]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_small(name):
    path, tree = MODULES[name]
    assert len(path.read_text().splitlines()) <= 400, f"{path}: over 400 lines: split it by what it does"
    if path.name == "triton_kernels.py":
        return
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert long == [], f"{path}: functions over 80 lines"
