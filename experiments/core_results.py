"""The issue-2 headline: per target modality, R@1 from reconstruction vs the raw query.

Reads an evaluation's ``metrics.json`` (``prom3e evaluate`` or ``prom3e demo``) and prints a
Markdown table: for each target, R@1 of the true row's target among the test gallery from
(a) the best single visible modality's raw embedding (δ = 0), (b) the reconstruction from
the best single visible modality, (c) the reconstruction from the best pair, (d) the
inversion from the best pair; plus the means over all single / pair visible sets.

    .venv/bin/python experiments/core_results.py demo-output/eval/metrics.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def table(metrics: dict) -> str:
    by_target: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for p in metrics["retrieval"]["pairs"]:
        by_target[p["target"]][len(p["visible"])].append(p)
    rows = ["| target | gallery | raw, best single | recon, best single | recon, best pair | inversion, best pair "
            "| recon mean 1 → 2 visible |", "|---|---|---|---|---|---|---|"]

    def best(ps: list[dict], key: str) -> tuple[float, str]:
        ps = [p for p in ps if p.get(key) is not None]
        if not ps:
            return float("nan"), "-"
        top = max(ps, key=lambda p: p[key])
        return top[key], "+".join(top["visible"])

    def mean(ps: list[dict], key: str) -> float:
        vals = [p[key] for p in ps if p.get(key) is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    for target, sets in by_target.items():
        one, two = sets.get(1, []), sets.get(2, [])
        raw, raw_from = best(one, "r1_cross")
        rec1, rec1_from = best(one, "r1_reconstruction")
        rec2, rec2_from = best(two, "r1_reconstruction")
        inv2, inv2_from = best(two, "r1_inversion")
        gallery = max(p["n_gallery"] for p in one + two)
        rows.append(f"| {target} | {gallery} | {raw:.3f} ({raw_from}) | {rec1:.3f} ({rec1_from}) | "
                    f"{rec2:.3f} ({rec2_from}) | {inv2:.3f} ({inv2_from}) | "
                    f"{mean(one, 'r1_reconstruction'):.3f} → {mean(two, 'r1_reconstruction'):.3f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(json.loads(Path(sys.argv[1]).read_text())))
