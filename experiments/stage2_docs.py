"""Renderers of docs/STAGE2.md's generated tables (experiments/results/stage2_ablation.json and
stage2_sigma_bound.json)."""

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
    res = load_result("stage2_ablation")
    order = res["order"]
    head = ("| variant | seeds | ρ(‖σ‖₁, rank) | ‖σ‖₁ drops | logσ² at clip | recon ≥ cross | R@1 inversion "
            "| R@1 recon | ZS pair > single | μ probe pairs ≥ raw LR | model probe pairs ≥ raw LR | probe − raw LR "
            "| train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for v in sorted(groups, key=lambda x: order.index(x) if x in order else 99):
        rs = groups[v]
        gap = _mean(rs, "probe_pair_gap_mean")
        lines.append("| " + " | ".join([
            f"**`{v}`**" if v == res["winner"] else f"`{v}`", ",".join(str(r["seed"]) for r in rs),
            _f(_mean(rs, "spearman_sigma_rank_mean")),
            _pct(_mean(rs, "frac_sigma_drops")), _pct(_mean(rs, "clip_share")), _pct(_mean(rs, "frac_recon_ge_cross")),
            _f(_mean(rs, "r1_inversion_mean")), _f(_mean(rs, "r1_reconstruction_mean")),
            _pct(_mean(rs, "frac_zs_pair_beats_single")), _pct(_mean(rs, "frac_probe_mu_pair_ge_raw")),
            _pct(_mean(rs, "frac_probe_pair_ge_raw")),
            "–" if gap is None else f"{100 * gap:+.1f} pts",
            f"{np.mean([r['seconds']['train'] for r in rs]):.0f}"]) + " |")
    return "\n".join(lines) + "\n"


for _ds in NAMES:
    renderer(f"stage2-ablation-{_ds}")(lambda ds=_ds: ablation_table(ds))


# issue 11's targets: (label, summary key, threshold text, test on the value)
TARGETS = [
    ("ρ(‖σ‖₁, rank of the true target), mean over pairs", "spearman_sigma_rank_mean", "≥ 0.30",
     lambda v: v >= 0.3, _f),
    ("adding a modality lowers mean ‖σ‖₁ (share of cases)", "frac_sigma_drops", "≥ 80 %", lambda v: v >= 0.8, _pct),
    ("logσ² within 0.5 of a clip", "clip_share", "< 5 %", lambda v: v < 0.05, _pct),
    ("2-modality sets whose probe ≥ raw-feature LR (kind chosen on val)", "frac_probe_pair_ge_raw", "100 %",
     lambda v: v >= 1.0 - 1e-9, _pct),
    ("… μ alone", "frac_probe_mu_pair_ge_raw", "(100 %)", None, _pct),
    ("… μ beside the aligned inputs (skip)", "frac_probe_skip_pair_ge_raw", "(100 %)", None, _pct),
    ("mean probe accuracy − raw LR, 2-modality sets", "probe_pair_gap_mean", "≥ 0", lambda v: v >= 0,
     lambda v: "–" if v is None else f"{100 * v:+.1f} pts"),
    ("2-modality zero-shot > best single modality (share of sets)", "frac_zs_pair_beats_single", "100 %",
     lambda v: v >= 1.0 - 1e-9, _pct),
    ("reconstruction R@1 ≥ plain cross-modal R@1 (share of pairs)", "frac_recon_ge_cross", "≥ 80 %",
     lambda v: v >= 0.8, _pct),
    ("mean inversion R@1", "r1_inversion_mean", "not < baseline −2 % rel. (synthetic)", None, _f),
]


def targets_table(dataset: str) -> str:
    res = load_result("stage2_ablation")
    winner, base = res["winner"], res["baseline"]
    groups = _by_variant(_runs(dataset, False))
    if winner not in groups or base not in groups:
        return f"(no runs of `{winner}` and `{base}` on {NAMES[dataset]})\n"
    seeds = sorted({r["seed"] for r in groups[winner]} & {r["seed"] for r in groups[base]})
    w = [r for r in groups[winner] if r["seed"] in seeds]
    b = [r for r in groups[base] if r["seed"] in seeds]
    lines = [f"Seeds {', '.join(map(str, seeds))} (mean over seeds); baseline `{base}` and new default "
             f"`{winner}` from the same sweep, same split and budget.", "",
             f"| target | required | baseline `{base}` | new default `{winner}` | met |", "|---|---|---|---|---|"]
    for label, key, need, ok, fmt in TARGETS:
        vb, vw = _mean(b, key), _mean(w, key)
        if dataset == "synthetic" and key == "frac_probe_pair_ge_raw":
            label = "2-modality sets whose probe ≥ raw-feature LR (`prom3e evaluate`'s: C = 1, best of μ and tokens)"
        if key == "r1_inversion_mean":
            met = "–" if vb is None or vw is None else ("yes" if vw >= 0.98 * vb else "no")
            if dataset != "synthetic":
                met = "(info)"
            rel = "" if not vb or vw is None else f" ({100 * (vw / vb - 1):+.1f} %)"
            lines.append(f"| {label} | {need} | {fmt(vb)} | {fmt(vw)}{rel} | {met} |")
            continue
        met = "–" if ok is None or vw is None else ("yes" if ok(vw) else "**no**")
        lines.append(f"| {label} | {need} | {fmt(vb)} | {fmt(vw)} | {met} |")
    return "\n".join(lines) + "\n"


def probe_table(dataset: str) -> str:
    res = load_result("stage2_ablation")
    rs = [r for r in _by_variant(_runs(dataset, False)).get(res["winner"], []) if r.get("probe")]
    if not rs:
        return "(no probe runs)\n"
    sets: dict[str, dict[str, list[float]]] = {}
    for r in rs:
        for p in r["probe"]:
            for k in ("raw", "aligned", "mu", "skip", "ours"):
                if p.get(k) is not None:
                    sets.setdefault(p["visible"], {}).setdefault(k, []).append(p[k])
    lines = [f"`{res['winner']}`, seeds {', '.join(str(r['seed']) for r in rs)} (mean); top-1 species accuracy on "
             "test, every probe an LR with C chosen on val.", "",
             "| visible set | raw LR | aligned LR | μ | μ + aligned (skip) | model probe (kind chosen on val) |",
             "|---|---|---|---|---|---|"]
    for v, d in sets.items():
        lines.append(f"| {v} | " + " | ".join(_f(float(np.mean(d[k]))) if k in d else "–"
                                             for k in ("raw", "aligned", "mu", "skip", "ours")) + " |")
    return "\n".join(lines) + "\n"


@renderer("stage2-sigma-bound")
def _bound() -> str:
    r = load_result("stage2_sigma_bound")
    return ("| run | pairs | ρ(‖σ‖₁, rank) | ρ(kNN of the inputs → rank) | ρ(oracle shared score, rank) |\n"
            "|---|---|---|---|---|\n"
            f"| `{r['run']}` | {r['n_pairs']} | {_f(r['rho_sigma_mean'])} | {_f(r['rho_knn_mean'])} "
            f"| {_f(r['rho_oracle_mean'])} |\n")


for _ds in NAMES:
    renderer(f"stage2-targets-{_ds}")(lambda ds=_ds: targets_table(ds))
    renderer(f"stage2-probes-{_ds}")(lambda ds=_ds: probe_table(ds))


@renderer("stage2-variants")
def _variants() -> str:
    """Each variant as its options beyond the reference objective (``ref``)."""
    res = load_result("stage2_ablation")
    used = {r["variant"] for r in res["runs"]}
    ref = res["variants"]["ref"]["model_overrides"]
    lines = ["| variant | options (beyond `ref`: the reference objective, KL weight 1e-3) |", "|---|---|"]
    for name in res["order"]:
        if name not in res["variants"]:
            continue
        v = res["variants"][name]
        if name not in used:
            continue
        opts = [f"{k}={v['model_overrides'][k]}" for k in v.get("model_overrides", {})
                if v["model_overrides"][k] != ref.get(k)]
        opts += [f"{k}={val}" for k, val in v.items() if k != "model_overrides"]
        lines.append(f"| `{name}` | {', '.join(opts) if opts else '(the reference)'} |")
    for name, (base, n) in res["decode"].items():
        if name in used:
            lines.append(f"| `{name}` | `{base}`, reconstructions averaged over {n} posterior draws (not μ) |")
    return "\n".join(lines) + "\n"
