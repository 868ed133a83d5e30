"""The layer order of DESIGN.md, enforced on every import of every module.

library (data, encoders, align, models, methods, train, api, index, metrics, io, config, hub,
runtime, distributed, errors, export) ← harnesses (tasks, perf, viz) ← faces (cli, commands,
serve): a module may import its own layer or a lower one, never a higher one, and the
packages import each other without a cycle. Every ``import`` counts — at module level and
inside functions — so a function-local import cannot hide a cycle. Importing the root
package ``prom3e`` itself (``from prom3e import __version__``) is no edge: every submodule's
parent is imported first anyway; the root may only re-export the library.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "prom3e"
LAYERS: dict[str, tuple[str, ...]] = {
    "library": ("data", "encoders", "align", "models", "methods", "train", "api", "index", "metrics", "io",
                "config", "hub", "runtime", "distributed", "errors", "export"),
    "harness": ("tasks", "perf", "viz"),
    "face": ("cli", "commands", "serve"),
}
RANK = {unit: rank for rank, units in enumerate(LAYERS.values()) for unit in units}
# Known upward imports, by (importer package, imported package), each with the step that removes
# it. The test fails when one is no longer needed, so the list only shrinks.
PENDING: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module an imported name lives in (``prom3e.tasks.common.l2n`` → ``prom3e.tasks.common``)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports(module: str) -> list[tuple[str, int]]:
    """Every prom3e module ``module`` imports (anywhere in the file), with the line."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..y import z
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out += [(_resolve(n), node.lineno) for n in names if n.split(".")[0] == "prom3e"]
    return out


def unit(module: str) -> str:
    """The top-level package (or module) of ``prom3e`` that ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "prom3e"


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer package, imported package) → ['module:line', …], the root package left out."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module in MODULES:
        for target, line in imports(module):
            a, b = unit(module), unit(target)
            if a != b and "prom3e" not in (a, b):
                edges[(a, b)].append(f"{module}:{line}")
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_every_package_has_a_layer():
    units = {unit(m) for m in MODULES} - {"prom3e"}
    assert units - set(RANK) == set(), "add the new package to LAYERS in tests/test_layers.py (and DESIGN.md)"


def test_imports_only_point_down():
    edges = package_edges()
    upward = {pair: where for pair, where in edges.items() if RANK[pair[1]] > RANK[pair[0]]}
    new = {pair: where for pair, where in upward.items() if pair not in PENDING}
    assert not new, "upward imports (library ← harness ← face): " + "; ".join(
        f"{a} → {b} at {', '.join(w)}" for (a, b), w in new.items())
    stale = sorted(set(PENDING) - set(upward))
    assert not stale, f"no longer imported upward, remove from PENDING: {stale}"


def test_root_package_reexports_only_the_library():
    targets = {unit(t) for t, _ in imports("prom3e")} - {"prom3e"}
    assert all(RANK[t] == 0 for t in targets), targets


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    edges = package_edges()
    for a, b in edges:
        graph[a].add(b)
    found = cycles(graph)
    detail = "; ".join(f"{a} → {b} at {', '.join(edges[(a, b)])}" for c in found for a in c for b in c
                       if (a, b) in edges)
    assert not found, f"import cycles between packages {found}: {detail}"


def test_no_import_cycle_between_modules():
    graph = {m: {t for t, _ in imports(m) if t not in (m, "prom3e")} for m in MODULES if m != "prom3e"}
    assert cycles(graph) == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set(), "c": {"b"}}, []),
    ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
])
def test_cycle_finder(graph, expected):
    assert sorted(cycles(graph)) == expected


def test_the_import_reader_sees_function_local_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "prom3e"
    (pkg / "tasks").mkdir(parents=True)
    for f in ("__init__.py", "tasks/__init__.py", "tasks/common.py", "metrics.py"):
        (pkg / f).write_text("")
    (pkg / "tasks" / "evaluate.py").write_text(
        "from . import common\n\ndef f():\n    from prom3e.metrics import l2n\n    import prom3e.tasks.common\n")
    monkeypatch.setattr(sys.modules[__name__], "MODULES", {
        "prom3e": pkg / "__init__.py", "prom3e.tasks": pkg / "tasks" / "__init__.py",
        "prom3e.tasks.common": pkg / "tasks" / "common.py", "prom3e.tasks.evaluate": pkg / "tasks" / "evaluate.py",
        "prom3e.metrics": pkg / "metrics.py"})
    assert imports("prom3e.tasks.evaluate") == [("prom3e.tasks.common", 1), ("prom3e.metrics", 4),
                                                ("prom3e.tasks.common", 5)]


def test_the_command_line_parser_imports_no_heavy_library():
    """Building every subcommand's parser (``prom3e --help``) loads no torch, numpy or pyarrow:
    command modules import those inside the function that runs the command."""
    import subprocess

    heavy = ("torch", "numpy", "pyarrow", "sklearn", "scipy", "matplotlib", "pydantic", "yaml", "tqdm")
    code = ("import sys; from prom3e.cli import build_parser; build_parser(); "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"building the CLI parser imported: {out.stdout.strip()}"
