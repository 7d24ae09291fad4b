"""The package's import structure: no import circles, and every import pointing down the
layer order written in docs/architecture.md (read from that page, so the two cannot drift).

How imports are counted:
- every ``import`` and ``from ... import`` of a module of the package, wherever it stands:
  at the top of a module, inside a function or method, under ``if TYPE_CHECKING``. A lazy
  (function-level) import only delays loading a module, to keep heavy libraries out of
  start-up; the dependency is the same, and a function-level import is exactly how a
  circle hides, so it counts like any other for circles and for layers;
- ``from harness.x import y`` depends on ``harness.x.y`` when that is a module, else on
  ``harness.x``; importing a submodule also runs its package's ``__init__``, but that
  implicit arrow is not counted (a package importing its own submodules is not a circle);
- a registry's lazy entry, a ``"harness.x.y:attribute"`` string, is an import deferred to
  first use: it counts for the layer order (a lower layer may not name a higher one, even
  lazily; the higher one registers itself instead) but not for circles, since a package
  that names its own plugins, which import its registry back, is what lazy entries are for.

Circles are checked twice: between modules, and between the units the page lists (packages
and top-level modules), so that two packages of one layer cannot lean on each other either.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "architecture.md"
_LAZY_ENTRY = re.compile(r"^(harness(?:\.\w+)+):\w+$")
_LAYER_BLOCK = re.compile(r"^```layers\n(.*?)^```", re.S | re.M)


# --------------------------------------------------------------------------- the layer order of the page


@dataclass
class Layers:
    names: list[str]  # top first
    units: dict[str, int]  # unit (a package folder "harness/tools/" or a file "harness/runner.py") -> layer index

    def unit_of(self, path: str) -> str | None:
        """The most specific unit holding a module's file (relative path)."""
        if path in self.units:
            return path
        folders = [unit for unit in self.units if unit.endswith("/") and path.startswith(unit)]
        return max(folders, key=len) if folders else None


def read_layers(text: str, root: Path) -> Layers:
    """The ```layers block of the page: one line per layer, top first, ``name: unit unit ...``."""
    blocks = _LAYER_BLOCK.findall(text)
    assert len(blocks) == 1, "docs/architecture.md needs exactly one ```layers block"
    names: list[str] = []
    units: dict[str, int] = {}
    for line in blocks[0].splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, colon, listed = line.partition(":")
        assert colon and listed.split(), f"layer line {line!r}: expected 'name: unit unit ...'"
        names.append(name.strip())
        for unit in listed.split():
            assert unit not in units, f"{unit} is listed in two layers"
            target = root / unit
            assert (target.is_dir() if unit.endswith("/") else target.is_file()), \
                f"the layer block lists {unit}, which does not exist"
            units[unit] = len(names) - 1
    return Layers(names, units)


# --------------------------------------------------------------------------- the imports of the code


@dataclass
class Graph:
    modules: dict[str, str]  # dotted name -> path relative to the root
    imports: dict[str, set[str]] = field(default_factory=dict)  # real imports, lazy ones included
    named: dict[str, set[str]] = field(default_factory=dict)  # registry entries naming a module


def module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_graph(root: Path, package: str = "harness") -> Graph:
    files = sorted((root / package).rglob("*.py"))
    graph = Graph({module_name(path.relative_to(root)): path.relative_to(root).as_posix() for path in files})

    def resolve(name: str) -> str | None:
        while name and name not in graph.modules:
            name = name.rpartition(".")[0]
        return name or None

    for module, relative in graph.modules.items():
        tree = ast.parse((root / relative).read_text(encoding="utf-8"), relative)
        is_package = relative.endswith("__init__.py")
        imports, named = set(), set()
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package holding this module
                    anchor = module.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from a import b``: the module a.b when it is one, else a.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in graph.modules else base
                           for alias in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                entry = _LAZY_ENTRY.match(node.value)
                if entry and resolve(entry.group(1)) not in (None, module):
                    named.add(resolve(entry.group(1)))
            for target in targets:
                if target == package or target.startswith(package + "."):
                    found = resolve(target)
                    if found and found != module:
                        imports.add(found)
        graph.imports[module] = imports
        graph.named[module] = named
    return graph


# --------------------------------------------------------------------------- the checks


def find_circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one node, as one circle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph is small enough to recurse
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_circle_through(sorted(group), edges) for group in groups]


def _circle_through(group: list[str], edges: dict[str, set[str]]) -> list[str]:
    """One circle inside a strongly connected group, for the message: a -> b -> ... -> a."""
    members = set(group)
    start = group[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for other in sorted(edges.get(node, ())):
            if other == start:
                return paths[node] + [start]
            if other in members and other not in paths:
                paths[other] = paths[node] + [other]
                queue.append(other)
    raise AssertionError(f"{group} is not strongly connected")


def unassigned(graph: Graph, layers: Layers) -> list[str]:
    return sorted(path for path in graph.modules.values() if layers.unit_of(path) is None)


def upward_arrows(graph: Graph, layers: Layers) -> list[str]:
    """Every import (or registry entry) of a module in a higher layer than the importer's."""
    problems = []
    for module, path in sorted(graph.modules.items()):
        level = layers.units[layers.unit_of(path)]
        for kind, targets in (("imports", graph.imports[module]), ("names in a registry entry", graph.named[module])):
            for target in sorted(targets):
                target_level = layers.units[layers.unit_of(graph.modules[target])]
                if target_level < level:
                    problems.append(f"{module} ({layers.names[level]}) {kind} {target} "
                                    f"({layers.names[target_level]}, a layer above)")
    return problems


def unit_edges(graph: Graph, layers: Layers) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module, targets in graph.imports.items():
        unit = layers.unit_of(graph.modules[module])
        edges.setdefault(unit, set()).update(
            other for other in (layers.unit_of(graph.modules[t]) for t in targets) if other != unit)
    return edges


def circle_text(circles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(circle) for circle in circles)


# --------------------------------------------------------------------------- the package itself


@pytest.fixture(scope="module")
def layers() -> Layers:
    return read_layers(PAGE.read_text(encoding="utf-8"), REPO)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return read_graph(REPO)


def test_the_page_orders_the_layers_as_the_design_says(layers):
    assert layers.names == ["cli", "applications", "runner", "systems and tasks", "tools and scoring",
                            "backends", "base"]
    assert layers.units["harness/synthetic/"] == layers.units["harness/tasks/"]


def test_every_module_has_a_layer(graph, layers):
    missing = unassigned(graph, layers)
    assert not missing, "modules missing from the layers block of docs/architecture.md: " + ", ".join(missing)


def test_no_import_circles_between_modules(graph):
    circles = find_circles(graph.imports)
    assert not circles, "import circles:\n" + circle_text(circles)


def test_no_import_circles_between_packages(graph, layers):
    circles = find_circles(unit_edges(graph, layers))
    assert not circles, "import circles between packages:\n" + circle_text(circles)


def test_imports_point_down_the_layers(graph, layers):
    problems = upward_arrows(graph, layers)
    assert not problems, "imports against the layer order of docs/architecture.md:\n" + "\n".join(problems)


def test_the_walk_sees_lazy_imports_and_registry_entries(graph):
    """Guards the walker itself on arrows known to exist in the package."""
    assert "harness.records" in graph.imports["harness.runner"]  # at the top of the module
    assert "harness.backends" in graph.imports["harness.cli.training"]  # inside a function
    assert "harness.synthetic.source" in graph.named["harness.tasks.sources"]  # a lazy registry entry
    assert "harness.backends.base" in graph.imports["harness.backends"]  # from a package's __init__


def test_the_modules_the_page_names_exist():
    """Every `harness/...` path and `harness.x` module the page names in code spans exists."""
    text = PAGE.read_text(encoding="utf-8")
    for span in re.findall(r"`([^`\n]+)`", text):
        for path in re.findall(r"\bharness/[\w/]+(?:\.py)?/?", span):
            assert (REPO / path).exists(), f"docs/architecture.md names {path}, which does not exist"
        for dotted in re.findall(r"\bharness(?:\.\w+)+", span):
            parts = dotted.split(".")
            candidates = [REPO.joinpath(*parts[:n]) for n in range(len(parts), 1, -1)]
            assert any(c.with_suffix(".py").is_file() or (c / "__init__.py").is_file() for c in candidates), \
                f"docs/architecture.md names {dotted}, which is no module"


# --------------------------------------------------------------------------- the checks can fail


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_catch_circles_upward_arrows_and_strays(tmp_path):
    _write(tmp_path, {
        "harness/__init__.py": "",
        "harness/low/__init__.py": "from harness.low import base\n",
        "harness/low/base.py": "def f():\n    from harness.low import other  # lazy, still an arrow\n",
        "harness/low/other.py": "from . import base\n",
        "harness/high.py": "import harness.low.base\nREGISTRY = {'x': 'harness.low.other:Thing'}\n",
        "harness/cheat.py": "TABLE = {'up': 'harness.high:Thing'}\n",
        "harness/stray.py": "",
    })
    page = ("```layers\n# top first\ntop: harness/high.py\nbottom: harness/low/ harness/cheat.py "
            "harness/__init__.py\n```\n")
    layers = read_layers(page, tmp_path)
    graph = read_graph(tmp_path)
    assert find_circles(graph.imports) == [["harness.low.base", "harness.low.other", "harness.low.base"]]
    assert unassigned(graph, layers) == ["harness/stray.py"]
    (tmp_path / "harness/stray.py").unlink()
    graph = read_graph(tmp_path)
    assert upward_arrows(graph, layers) == [
        "harness.cheat (bottom) names in a registry entry harness.high (top, a layer above)"]
    graph.imports["harness.low.other"].add("harness.high")
    assert "harness.low.other (bottom) imports harness.high (top, a layer above)" in upward_arrows(graph, layers)
    assert find_circles(unit_edges(graph, layers)) == [["harness/high.py", "harness/low/", "harness/high.py"]]


def test_the_layer_block_must_list_real_units_once(tmp_path):
    _write(tmp_path, {"harness/__init__.py": "", "harness/a.py": ""})
    with pytest.raises(AssertionError, match="does not exist"):
        read_layers("```layers\ntop: harness/b.py\n```\n", tmp_path)
    with pytest.raises(AssertionError, match="two layers"):
        read_layers("```layers\ntop: harness/a.py\nbottom: harness/a.py\n```\n", tmp_path)
    with pytest.raises(AssertionError, match="exactly one"):
        read_layers("no block here\n", tmp_path)
