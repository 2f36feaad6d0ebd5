"""Layering: a static import scan of sutazai_hwopt, its cycles, and imports against the documented direction.

The scan fails on any cycle between modules and on any import against the layer table of docs/architecture.md
("Dependency direction"), which it parses, so the doc and the check cannot drift. The fixture tests build small
trees with a deliberate cycle and an upward import to show the scan finds them. A person can run it over a tree:
``python tests/foundation/test_layers.py sutazai_hwopt`` prints the same findings.

Which imports make an edge (the rules are in docs/architecture.md, "Dependency direction"):

* every ``import`` / ``from ... import`` anywhere in a module: module level, inside functions, under
  ``if TYPE_CHECKING:`` (a type-only cycle is still two modules that cannot be read apart);
* relative imports are resolved against the importing module (``__init__.py`` is its own package);
* ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg`` (its ``__init__``);
* importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``: those are edges too, except for packages
  that contain the importing module — Python has already started them before the importing module runs, so a
  submodule importing a sibling (``from . import codec``) does not depend on its package's ``__init__``, and a
  package ``__init__`` that re-exports its submodules is not in a cycle with them. A submodule that names its
  own package (``from . import Cache`` where ``Cache`` is not a submodule, ``import pkg``) does depend on its
  ``__init__``, and closes a cycle if that ``__init__`` imports it.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Edge:
    """One import: ``source`` imports ``target`` at ``line`` (of the file of ``source``)."""

    source: str
    target: str
    line: int


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package directory ``root``."""
    root = root.resolve()
    mods: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _known(name: str, mods: Mapping[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module of the scanned package."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, mods: Mapping[str, Path]) -> set[str]:
    """The package's modules one import statement makes ``module`` depend on (before the ancestor rule)."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            hit = _known(alias.name, mods)
            if hit:
                found.add(hit)
        return found
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        hit = sub if sub in mods else _known(target, mods)
        if hit:
            found.add(hit)
    return found


def import_edges(mods: Mapping[str, Path]) -> list[Edge]:
    """Every edge between two modules of the package, with the ancestor ``__init__`` files it implies."""
    edges: set[Edge] = set()
    for module, path in mods.items():
        is_package = path.name == "__init__.py"
        own = {*_ancestors(module), module}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(module, is_package, node, mods):
                if target != module:  # named directly: a dependency even on an enclosing package's __init__
                    edges.add(Edge(module, target, node.lineno))
                for dep in _ancestors(target):  # run on the way: only packages not already started
                    if dep not in own and dep in mods:
                        edges.add(Edge(module, dep, node.lineno))
    return sorted(edges, key=lambda e: (e.source, e.target, e.line))


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


# -- the layer table ------------------------------------------------------------------------------------------

_ROW = re.compile(r"^\|\s*(\d+)\s*\|(.*)\|\s*$")


def parse_layers(markdown: str, section: str = "Dependency direction") -> list[tuple[int, list[str]]]:
    """``[(layer, [module patterns])]`` from the first table under the heading ``section``.

    Rows look like ``| 4 | `pkg.cache.*`, `pkg.testing` | why |``: the first cell is the layer number (bottom = 0),
    the second the back-quoted module names it holds (see :func:`layer_of`). Raises ``ValueError`` when the
    section or its table is missing, so a doc edit cannot silently turn the check off.
    """
    lines = markdown.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if re.match(rf"^#+\s+{re.escape(section)}\s*$", line))
    except StopIteration:
        raise ValueError(f"no section {section!r} in the document") from None
    rows: list[tuple[int, list[str]]] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        match = _ROW.match(line.strip())
        if match:
            cells = match.group(2).split("|")
            names = re.findall(r"`([^`]+)`", cells[0])
            if not names:
                raise ValueError(f"layer {match.group(1)} names no module: {line!r}")
            rows.append((int(match.group(1)), names))
    if not rows:
        raise ValueError(f"section {section!r} has no layer table")
    return rows


def layer_of(module: str, layers: list[tuple[int, list[str]]]) -> int | None:
    """The layer of ``module``: ``x`` names that module, ``x.*`` names ``x`` and everything under it; the most
    specific (longest) matching name wins."""
    best: tuple[int, int] | None = None  # (specificity, layer)
    for layer, patterns in layers:
        for pattern in patterns:
            if pattern.endswith(".*"):
                base = pattern[:-2]
                hit = module == base or module.startswith(base + ".")
            else:
                base = pattern
                hit = module == base
            if hit and (best is None or len(base) > best[0]):
                best = (len(base), layer)
    return None if best is None else best[1]


def upward(edges: Iterable[Edge], layers: list[tuple[int, list[str]]]) -> list[str]:
    """Each import of a module from a higher layer, and each module the table does not place, as a message."""
    problems: list[str] = []
    unplaced: set[str] = set()
    for e in edges:
        src, dst = layer_of(e.source, layers), layer_of(e.target, layers)
        for name, layer in ((e.source, src), (e.target, dst)):
            if layer is None:
                unplaced.add(name)
        if src is not None and dst is not None and dst > src:
            problems.append(f"{e.source}:{e.line} (layer {src}) imports {e.target} (layer {dst})")
    problems.extend(f"{name} is in no layer of the table" for name in sorted(unplaced))
    return problems


# -- the tests ------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sutazai_hwopt"
DOC = ROOT / "docs" / "architecture.md"

FIXTURE_DOC = """# Fixture

## Dependency direction

| layer | modules | why |
| --- | --- | --- |
| 0 | `pkg.low`, `pkg.leaf` | bottom |
| 1 | `pkg.part.*` | a part |
| 2 | `pkg.top`, `pkg` | top |
"""


def _tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``{relative path: source}`` under ``root``; return the package directory ``root/pkg``."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def _scan(pkg: Path) -> tuple[list[list[str]], list[str]]:
    edges = import_edges(module_files(pkg))
    return cycles(edges), upward(edges, parse_layers(FIXTURE_DOC))


_CLEAN = {
    "pkg/__init__.py": "from .part import Thing\n",
    "pkg/low.py": "X = 1\n",
    "pkg/part/__init__.py": "from .a import Thing\nfrom .b import helper\n",  # re-exports its submodules
    "pkg/part/a.py": "from .. import low\nfrom . import b\nfrom .b import helper\n\nclass Thing: ...\n",
    "pkg/part/b.py": "import pkg.low\n\ndef helper() -> int:\n    return pkg.low.X\n",
    "pkg/top.py": "from pkg.part.a import Thing\n",
}


def test_a_clean_tree_passes_and_reexports_are_no_cycle(tmp_path: Path) -> None:
    found, bad = _scan(_tree(tmp_path, _CLEAN))
    assert found == []
    assert bad == []


def test_the_scan_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    files = dict(_CLEAN)
    files["pkg/part/b.py"] = "def helper() -> int:\n    from .a import Thing\n    return 1\n"
    found, _ = _scan(_tree(tmp_path, files))
    assert found == [["pkg.part.a", "pkg.part.b"]]


def test_the_scan_finds_a_cycle_hidden_under_type_checking(tmp_path: Path) -> None:
    files = dict(_CLEAN)
    files["pkg/part/b.py"] = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.part.a import Thing\n"
        "def helper() -> int:\n    return 1\n"
    )
    found, _ = _scan(_tree(tmp_path, files))
    assert found == [["pkg.part.a", "pkg.part.b"]]


def test_a_submodule_taking_a_name_from_its_own_package_init_is_a_cycle(tmp_path: Path) -> None:
    files = dict(_CLEAN)
    files["pkg/part/b.py"] = "from . import Thing\n\ndef helper() -> int:\n    return 1\n"
    found, _ = _scan(_tree(tmp_path, files))
    assert found == [["pkg.part", "pkg.part.a", "pkg.part.b"]]


def test_the_scan_finds_an_upward_import(tmp_path: Path) -> None:
    files = dict(_CLEAN)
    files["pkg/leaf.py"] = "def late():\n    from .top import Thing\n    return Thing\n"
    found, bad = _scan(_tree(tmp_path, files))
    assert found == []
    assert bad == ["pkg.leaf:2 (layer 0) imports pkg.top (layer 2)"]


def test_importing_a_submodule_of_a_higher_package_counts_its_init(tmp_path: Path) -> None:
    files = dict(_CLEAN)
    files["pkg/leaf.py"] = "import pkg.part.b\n"  # runs pkg/part/__init__.py on the way
    _, bad = _scan(_tree(tmp_path, files))
    assert bad == [
        "pkg.leaf:1 (layer 0) imports pkg.part (layer 1)",
        "pkg.leaf:1 (layer 0) imports pkg.part.b (layer 1)",
    ]


def test_a_module_the_table_does_not_place_fails(tmp_path: Path) -> None:
    files = dict(_CLEAN)
    files["pkg/stray.py"] = "from . import low\n"
    _, bad = _scan(_tree(tmp_path, files))
    assert bad == ["pkg.stray is in no layer of the table"]


def test_a_doc_without_the_table_is_an_error() -> None:
    with pytest.raises(ValueError, match="no section"):
        parse_layers("# nothing here\n")
    with pytest.raises(ValueError, match="no layer table"):
        parse_layers("## Dependency direction\n\nprose only\n\n## Next\n| 0 | `x` | |\n")


def test_the_documented_table_is_read_from_the_doc() -> None:
    layers = parse_layers(DOC.read_text(encoding="utf-8"))

    def layer(name: str) -> int:
        found = layer_of(f"sutazai_hwopt{name}", layers)
        assert found is not None, name
        return found

    assert layer(".errors") == 0
    assert layer("._native.cache_core") < layer(".config") < layer(".shm") == layer(".trust") < layer(".cache.engine")
    assert layer(".shm") < layer(".memory.manager")
    assert layer(".profiler.sampler") < layer(".eliminator.eliminator") < layer(".master")
    assert layer(".master") < layer(".host.service") < layer(".cli")
    assert layer("") > layer(".cli")


def test_the_package_imports_only_downward() -> None:
    edges = import_edges(module_files(PACKAGE))
    assert upward(edges, parse_layers(DOC.read_text(encoding="utf-8"))) == []


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(import_edges(module_files(PACKAGE))) == []


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "sutazai_hwopt")
    edges = import_edges(module_files(root))
    found = cycles(edges)
    for component in found:
        print("CYCLE:", " <-> ".join(component))
    doc = Path(argv[2]) if len(argv) > 2 else root.parent / "docs" / "architecture.md"
    bad = upward(edges, parse_layers(doc.read_text(encoding="utf-8"))) if doc.exists() else []
    for line in bad:
        print("UPWARD:", line)
    print(f"{len(found)} cycle group(s), {len(bad)} direction problem(s)")
    return 1 if found or bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
