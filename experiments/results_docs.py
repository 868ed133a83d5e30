"""Renderers of docs/RESULTS.md's blocks that combine several result files, and the blocks that
other experiments will render (left as they are until their module is registered)."""

from __future__ import annotations

from core_results import CLAIMS, claim_cells
from docgen import load_result, pending, renderer

pending("benchmark-summary", "experiments/benchmark_docs.py (the method benchmark)")
pending("stage2-summary", "the stage-2 study's renderers (experiments/stage2_*.py)")
pending("speed-summary", "experiments/speed.py, once experiments/results/speed.json is measured")


@renderer("claims")
def _claims() -> str:
    demo = claim_cells(load_result("demo")["claims"])
    ucsc = claim_cells(load_result("ucsc_eval")["claims"])
    lines = ["| the paper's claim | synthetic (section 1) | ucsc-plants, stage-1 aligned (above) |", "|---|---|---|"]
    lines += [f"| {title} | {demo.get(key, '–')} | {ucsc.get(key, '–')} |" for key, title in CLAIMS]
    return "\n".join(lines)
