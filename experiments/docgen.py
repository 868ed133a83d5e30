"""Generated result blocks in the docs: the tables are rendered from committed JSON results.

An experiment script writes its summary to ``experiments/results/NAME.json`` (small, committed)
and registers a renderer that turns it into markdown::

    from docgen import load_result, renderer

    @renderer("stage2-ablation")
    def _table() -> str:
        r = load_result("stage2_ablation")
        return "| config | ... |\\n|---|---|\\n" + ...

A document marks the block that the renderer owns::

    <!-- BEGIN generated: stage2-ablation -->
    (replaced by the renderer's output)
    <!-- END generated: stage2-ablation -->

``python experiments/render_docs.py`` rewrites every block; ``--check`` exits 1 when a block is
out of date (the test suite runs it), so a figure in the docs is always the one in the results.
A block that another module will render (``pending(name, by)``) is left as it is until a
renderer of that name is registered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RENDERERS: dict[str, Callable[[], str]] = {}
PENDING: dict[str, str] = {}  # block name → what will render it
BLOCK = re.compile(r"(<!-- BEGIN generated: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- END generated: (?P=name) -->)",
                   re.S)


def renderer(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    def register(fn: Callable[[], str]) -> Callable[[], str]:
        if name in RENDERERS:
            raise ValueError(f"renderer '{name}' registered twice")
        RENDERERS[name] = fn
        return fn
    return register


def pending(name: str, by: str) -> None:
    """Mark the block ``name`` as rendered by ``by`` (a module not registered yet)."""
    PENDING[name] = by


def load_result(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the experiment that writes it")
    return json.loads(path.read_text())


def save_result(name: str, obj: dict) -> Path:
    """Write ``experiments/results/NAME.json`` atomically (sorted keys: stable diffs)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def render_text(text: str) -> tuple[str, list[str]]:
    """``text`` with every generated block re-rendered, and the names of unknown blocks."""
    unknown: list[str] = []

    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in RENDERERS:
            if name not in PENDING:
                unknown.append(name)
            return m.group(0)
        body = RENDERERS[name]().rstrip("\n") + "\n"
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(sub, text), unknown
