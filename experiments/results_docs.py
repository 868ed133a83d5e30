"""Renderers of docs/RESULTS.md's blocks that combine several result files, and the blocks that
other experiments will render (left as they are until their module is registered)."""

from __future__ import annotations

from docgen import load_result, pending, renderer

from prom3e.tasks.claims import TITLES, evidence, verdict

pending("benchmark-summary", "experiments/benchmark_docs.py (the method benchmark)")
pending("stage2-summary", "the stage-2 study's renderers (experiments/stage2_*.py)")


def _cell(claims: dict, name: str) -> str:
    if name not in claims:
        return "–"
    v = verdict(claims[name])
    return f"{'**holds**' if v == 'holds' else v} ({evidence(name, claims[name])})"


@renderer("claims")
def _claims() -> str:
    demo, ucsc = load_result("demo")["claims"], load_result("ucsc_eval")["claims"]
    lines = ["| the paper's claim | synthetic (section 1) | ucsc-plants, stage-1 aligned (above) |", "|---|---|---|"]
    lines += [f"| {title} | {_cell(demo, name)} | {_cell(ucsc, name)} |" for name, title in TITLES.items()]
    return "\n".join(lines)
