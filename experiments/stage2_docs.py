"""Renderers of docs/STAGE2.md's generated tables (from experiments/results/stage2_ablation.json)."""

from __future__ import annotations

import numpy as np
from docgen import load_result, renderer

NAMES = {"birdclef22": "birdclef22", "ucsc": "ucsc-plants", "synthetic": "synthetic default"}


def _runs(dataset: str, full: bool) -> list[dict]:
    return [r for r in load_result("stage2_ablation")["runs"] if r["dataset"] == dataset and r["full"] == full]


def _mean(rs: list[dict], key: str) -> float | None:
    v = [r[key] for r in rs if r.get(key) is not None]
    return float(np.mean(v)) if v else None


def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def _by_variant(rs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rs:
        out.setdefault(r["variant"], []).append(r)
    return out


def ablation_table(dataset: str) -> str:
    groups = _by_variant(_runs(dataset, False))
    order = list(load_result("stage2_ablation")["variants"]) + list(load_result("stage2_ablation")["decode"])
    head = ("| variant | seeds | ρ(‖σ‖₁, rank) | ‖σ‖₁ drops | logσ² at clip | recon ≥ cross | R@1 inversion "
            "| R@1 recon | ZS pair > single | probe pairs ≥ raw LR | probe − raw LR | train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for v in sorted(groups, key=lambda x: order.index(x) if x in order else 99):
        rs = groups[v]
        gap = _mean(rs, "probe_pair_gap_mean")
        lines.append("| " + " | ".join([
            f"`{v}`", ",".join(str(r["seed"]) for r in rs), _f(_mean(rs, "spearman_sigma_rank_mean")),
            _pct(_mean(rs, "frac_sigma_drops")), _pct(_mean(rs, "clip_share")), _pct(_mean(rs, "frac_recon_ge_cross")),
            _f(_mean(rs, "r1_inversion_mean")), _f(_mean(rs, "r1_reconstruction_mean")),
            _pct(_mean(rs, "frac_zs_pair_beats_single")), _pct(_mean(rs, "frac_probe_pair_ge_raw")),
            "–" if gap is None else f"{100 * gap:+.1f} pts",
            f"{np.mean([r['seconds']['train'] for r in rs]):.0f}"]) + " |")
    return "\n".join(lines) + "\n"


for _ds in NAMES:
    renderer(f"stage2-ablation-{_ds}")(lambda ds=_ds: ablation_table(ds))
