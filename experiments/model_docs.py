"""Renderer of docs/MODEL.md's measured effects of the deviations from the reference
(pairs of runs of the stage-2 study, experiments/results/stage2_ablation.json)."""

from __future__ import annotations

import numpy as np
from docgen import load_result, renderer

DATASETS = {"synthetic": "synthetic default", "birdclef22": "birdclef22", "ucsc": "ucsc-plants"}

# (what changes, variant without it, variant with it): variants of experiments/stage2_ablation.py
PAIRS = [
    ("the default objective (PoE σ, 4-draw mixture InfoNCE with μ as a draw, loss on μ, KL summed, "
     "λ = 1e-4, logσ² clip ±12) instead of the reference objective (1 draw, KL mean, λ = 1e-3, clip ±8)",
     "ref", "P_dm_mu1_clip12"),
    ("logσ² clipped at ±12 instead of ±8 (the default objective otherwise)", "P_dm_mu1", "P_dm_mu1_clip12"),
    ("σ from a product of per-modality experts instead of a Linear head (4-draw objective, KL sum, λ = 1e-4)",
     "mc4_kl_sum_1e-4", "poe_mc4_kl_sum_1e-4"),
    ("λ = 1e-4 instead of the reference's 1e-3 (PoE σ, 4 draws, μ as a draw, KL sum)",
     "P_draw_mean_kl1e-3", "P_draw_mean"),
    ("KL summed over dimensions instead of averaged (1 draw, λ = 1e-3)", "ref", "kl_sum_1e-3"),
]
METRICS = [("R@1 recon", "r1_reconstruction_mean", "{:.3f}"), ("R@1 inversion", "r1_inversion_mean", "{:.3f}"),
           ("ρ(‖σ‖₁, rank)", "spearman_sigma_rank_mean", "{:+.3f}"), ("‖σ‖₁ drops", "frac_sigma_drops", "{:.0%}")]


def _runs(dataset: str, variant: str) -> list[dict]:
    return [r for r in load_result("stage2_ablation")["runs"]
            if r["dataset"] == dataset and r["variant"] == variant and not r["full"]]


def _cell(rs: list[dict], key: str, fmt: str) -> str:
    return fmt.format(float(np.mean([r[key] for r in rs])))


@renderer("model-deviation-effects")
def _effects() -> str:
    head = "| change | data (epochs; seeds) | " + " | ".join(m for m, _, _ in METRICS) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for what, before, after in PAIRS:
        first = True
        for ds, name in DATASETS.items():
            a, b = _runs(ds, before), _runs(ds, after)
            if not a or not b:
                continue
            seeds = f"{','.join(str(r['seed']) for r in a)} → {','.join(str(r['seed']) for r in b)}"
            cells = [f"{_cell(a, k, f)} → {_cell(b, k, f)}" for _, k, f in METRICS]
            change = f"{what} (`{before}` → `{after}`)" if first else "″"
            lines.append(f"| {change} | {name} ({a[0]['epochs']}; {seeds}) | " + " | ".join(cells) + " |")
            first = False
    ref = _runs("synthetic", "ref")
    if len(ref) > 1:
        spread = max(r["r1_reconstruction_mean"] for r in ref) - min(r["r1_reconstruction_mean"] for r in ref)
        lines += ["", f"One seed per run unless listed: the {len(ref)} seeds of `ref` on the synthetic default "
                      f"differ by {spread:.3f} in R@1 recon, so differences of that size are not findings."]
    return "\n".join(lines) + "\n"
