"""The packages form layers (issue #30): no import runs back up, nothing private crosses a package, no two modules
share a file name.

Every module under ``src/kdgraph`` is parsed with ``ast``; every import counts, at module level, inside a function
(a lazy import is still a dependency) and under ``TYPE_CHECKING``. A package is ``kdgraph.X`` for a folder ``X``; a
top-level module (``errors``, ``named``, ``files``, ``runtime``, ``plan``, ``teach``, ``api``, ``__main__``) is a
package of its own. The root ``kdgraph/__init__.py`` re-exports lazily and is left out: ``import kdgraph`` names no
package.
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass(frozen=True)
class Import:
    importer: str  # module: kdgraph.store.replay
    target: str    # module or package imported from: kdgraph.data.views
    names: tuple[str, ...]  # the names of ``from target import ...``; () for ``import target``
    line: int


def module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(src: Path, root: str = "kdgraph") -> list[Import]:
    """Every import of a ``root`` module by a module under ``src/root``, relative imports resolved;
    ``from kdgraph import plan`` imports the module ``kdgraph.plan``."""
    found = []
    paths = sorted((src / root).rglob("*.py"))
    modules = {module_name(path, src) for path in paths}
    for path in paths:
        module = module_name(path, src)
        package_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found += [Import(module, alias.name, (), node.lineno) for alias in node.names
                          if alias.name.split(".")[0] == root]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package_parts[:len(package_parts) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                if target.split(".")[0] != root:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.append(Import(module, sub, (), node.lineno) if sub in modules else
                                 Import(module, target, (alias.name,), node.lineno))
    return found


def package_of(module: str) -> str:
    """``kdgraph.X`` for a module in the folder ``X`` (or ``X`` itself), a top-level module for itself."""
    return ".".join(module.split(".")[:2])


def package_graph(src: Path, root: str = "kdgraph") -> dict[tuple[str, str], list[Import]]:
    """(importer's package, imported package) → the imports that make the edge; the root package left out."""
    edges: dict[tuple[str, str], list[Import]] = {}
    for imp in imports(src, root):
        a, b = package_of(imp.importer), package_of(imp.target)
        if a != b and root not in (a, b):
            edges.setdefault((a, b), []).append(imp)
    return edges


def find_cycle(edges: dict[tuple[str, str], list[Import]]) -> list[str]:
    """One cycle of packages (``[a, b, ..., a]``), or [] when the graph is acyclic."""
    succ: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        succ.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in succ.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(succ):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def private_imports(src: Path, root: str = "kdgraph") -> list[Import]:
    """``from kdgraph.a.b import _c`` (or ``import kdgraph.a._b``) in a module outside package ``kdgraph.a``."""
    bad = []
    for imp in imports(src, root):
        if package_of(imp.importer) == package_of(imp.target):
            continue
        if any(n.startswith("_") and not n.startswith("__") for n in (*imp.names, *imp.target.split("."))):
            bad.append(imp)
    return bad


def where(imps: list[Import]) -> str:
    return ", ".join(f"{i.importer}:{i.line} ({i.target})" for i in imps[:3])


# -- the checker itself, on a small tree it must fault ------------------------------------------------------------
def write_tree(src: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


def test_the_checker_finds_a_cycle_made_by_a_lazy_import_and_a_private_name(tmp_path):
    src = write_tree(tmp_path, {
        "kdgraph/__init__.py": "",
        "kdgraph/plan.py": "from kdgraph.store.replay import open_store\n",
        "kdgraph/store/__init__.py": "",
        "kdgraph/store/replay.py": "def open_store():\n    from kdgraph.train.views import _crop\n",
        "kdgraph/train/__init__.py": "from .views import _crop\n",  # relative, same package: allowed
        "kdgraph/train/views.py": "import kdgraph\nfrom ..errors import KdgraphError\n",
        "kdgraph/errors.py": "",
    })
    edges = package_graph(src)
    assert set(edges) == {("kdgraph.plan", "kdgraph.store"), ("kdgraph.store", "kdgraph.train"),
                          ("kdgraph.train", "kdgraph.errors")}  # `import kdgraph`: the root, left out
    assert find_cycle(edges) == []
    (src / "kdgraph/train/views.py").write_text("from kdgraph import plan\n")  # the module kdgraph.plan
    cycle = find_cycle(package_graph(src))
    assert cycle[0] == cycle[-1] and set(cycle) == {"kdgraph.plan", "kdgraph.store", "kdgraph.train"}
    assert [(i.importer, i.names) for i in private_imports(src)] == [("kdgraph.store.replay", ("_crop",))]


# -- the real tree ---------------------------------------------------------------------------------------------
def test_the_package_graph_is_acyclic():
    edges = package_graph(SRC)
    cycle = find_cycle(edges)
    assert not cycle, "import cycle between packages: " + " → ".join(cycle) + "; made by " + "; ".join(
        f"{a} → {b}: {where(edges[(a, b)])}" for a, b in zip(cycle, cycle[1:]))


@pytest.mark.parametrize("package, above", [
    ("kdgraph.store", ("kdgraph.train", "kdgraph.plan", "kdgraph.rundir", "kdgraph.teach", "kdgraph.cli")),
    ("kdgraph.session", ("kdgraph.train", "kdgraph.plan", "kdgraph.rundir", "kdgraph.store", "kdgraph.eval")),
    ("kdgraph.eval", ("kdgraph.train", "kdgraph.plan", "kdgraph.rundir", "kdgraph.store")),
    ("kdgraph.data", ("kdgraph.train", "kdgraph.plan", "kdgraph.graph", "kdgraph.session", "kdgraph.store")),
])
def test_lower_packages_do_not_import_the_ones_above(package, above):
    edges = package_graph(SRC)
    wrong = {b: edges[(a, b)] for a, b in edges if a == package and b in above}
    assert not wrong, "; ".join(f"{package} imports {b}: {where(imps)}" for b, imps in wrong.items())


def test_no_private_name_is_imported_across_packages():
    bad = private_imports(SRC)
    assert not bad, "private names imported from another package (make them public, or stop reaching for them): " + \
        ", ".join(f"{i.importer}:{i.line} from {i.target} import {', '.join(i.names)}" for i in bad)


def test_no_two_modules_share_a_file_name():
    names = Counter(p.name for p in (SRC / "kdgraph").rglob("*.py") if p.name != "__init__.py")
    assert not [n for n, count in names.items() if count > 1], sorted(
        str(p.relative_to(SRC)) for p in (SRC / "kdgraph").rglob("*.py") if names[p.name] > 1)
