"""``report.md`` (tables + figures, each with the setting that produced it) and the PNGs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from prom3e.io import atomic_write, write_text
from prom3e.viz import plots


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _int(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _d(v: Any) -> str:
    return "–" if v is None else f"{v:.1f}"


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_f(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _vis(v: Sequence[str]) -> str:
    return "+".join(v)


def _setting(m: dict, extra: str = "") -> str:
    s = m["settings"]
    how = (f"split column '{s['split_column']}'" if s.get("split_column")
           else f"seeded split, fit_frac {s['fit_frac']}")
    return (f"*Setting:* seed {s['seed']}, {s['n_test']} test rows / {s['n_fit']} fit rows of "
            f"{s['n_rows']} ({how}, caps {s['max_fit']}/{s['max_test']})"
            f"{', label ' + s['label'] if s['label'] else ''}{extra}.")


def make_plots(out: Path, m: dict, extras: dict) -> dict[str, str]:
    """Draw every figure the metrics allow; return {file name: caption}. Empty without matplotlib."""
    if not plots.have_matplotlib():
        return {}
    figs: dict[str, str] = {}
    if m.get("retrieval", {}).get("pairs"):
        plots.retrieval(m["retrieval"]["pairs"], out / "retrieval.png")
        figs["retrieval.png"] = "Retrieval R@1: modality inversion vs plain cross-modal"
    if m.get("zeroshot", {}).get("sets"):
        k = m["zeroshot"].get("n_prototypes")
        plots.grouped_bars(m["zeroshot"]["sets"], ["top1_cross", "top1_reconstruction", "top1_inversion"],
                           ["cross (δ=0)", "recon (δ=1)", "inversion"], "top-1 accuracy",
                           f"zero-shot against {m['zeroshot']['class_modality']} prototypes",
                           out / "zeroshot.png", chance=1 / k if k else None, chance_what=f"1/{k}")
        figs["zeroshot.png"] = "Zero-shot top-1 accuracy per visible set"
    if m.get("probe", {}).get("sets"):
        plots.grouped_bars(m["probe"]["sets"], ["acc_raw", "acc_mu", "acc_tokens", "acc_reconstruction"],
                           ["raw", "hidden μ", "all tokens", "reconstructions"], "accuracy",
                           f"linear probe of '{m['probe']['label']}'", out / "probe.png",
                           chance=1 / k if (k := m["settings"].get("n_classes")) else None, chance_what=f"1/{k}")
        figs["probe.png"] = "Linear-probe accuracy per visible set and feature"
    unc = extras.get("uncertainty")
    if unc:
        plots.sigma_violins(unc["sigma"], out / "sigma.png", floor=unc.get("floor"))
        figs["sigma.png"] = "‖σ‖₁ per visible subset"
        if any(n["ranking"] for n in m["uncertainty"]["next"]):
            plots.next_modality(m["uncertainty"]["next"], out / "next_modality.png", m["settings"]["modalities"])
            figs["next_modality.png"] = "Which modality to add next (expected ‖σ‖₁ reduction)"
    if extras.get("calibration"):
        cal = m.get("uncertainty", {}).get("calibration", {})
        plots.calibration(extras["calibration"], out / "calibration.png",
                          rho_error=cal.get("pooled_spearman_recon_error"), rho_rank=cal.get("pooled_spearman_rank"))
        figs["calibration.png"] = "Calibration: ‖σ‖₁ vs reconstruction error and retrieval rank"
    if extras.get("gap"):
        plots.gap_projection(extras["gap"]["projection"], out / "gap.png", scores=m.get("gap"))
        figs["gap.png"] = "Modality gap: 2-D PCA of raw inputs, hidden states, reconstructions"
    return figs


def _next_rows_csv(out: Path, m: dict, extras: dict) -> str | None:
    """Per-row "which modality next": expected ‖σ‖₁ reduction of each candidate (CSV)."""
    nxt = [n for n in (extras.get("uncertainty") or {}).get("next") or [] if len(n.get("_rows", []))]
    if not nxt:
        return None
    mods = m["settings"]["modalities"]
    parts = []
    for n in nxt:
        cols = np.full((len(n["_rows"]), len(mods)), np.nan)
        for j, c in enumerate(n["_candidates"]):
            cols[:, mods.index(c)] = n["_expected"][:, j]
        parts.append(pa.table({
            "row": pa.array(np.asarray(n["_rows"], np.int64)),
            "visible": pa.array(np.full(len(n["_rows"]), _vis(n["visible"]), dtype=object)),
            "best": pa.array(n["_best"]),
            **{f"expected_reduction_{c}": pa.array(cols[:, k], mask=np.isnan(cols[:, k]))
               for k, c in enumerate(mods)},
        }))
    table = pa.concat_tables(parts)
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write((",".join(table.column_names) + "\n").encode())  # arrow would quote the header
            pcsv.write_csv(table, fh, write_options=pcsv.WriteOptions(include_header=False))

    atomic_write(out / "next_modality.csv", write)
    return "next_modality.csv"


def render(m: dict, figs: dict[str, str], command: str | None = None, csv: str | None = None,
           claim_rows: Sequence[Sequence[str]] = ()) -> str:
    """The Markdown report of a metrics dict; ``claim_rows``: the paper's claims as worded by
    :func:`prom3e.tasks.claims.worded` (claim, verdict, evidence)."""
    s = m["settings"]
    parts = ["# prom3e evaluation report\n"]
    if command:
        parts.append(f"Command: `{command}`\n")
    parts.append(_table(["setting", "value"], [
        ["rows in table", s["n_rows"]], ["fit / test rows", f"{s['n_fit']} / {s['n_test']}"],
        ["seed", s["seed"]], ["label", s["label"]], ["classes", s["n_classes"]],
        ["class modality (zero-shot)", s["class_modality"]], ["modalities", ", ".join(s["modalities"])],
        ["δ grid", ", ".join(f"{d:g}" for d in s["delta_grid"])],
    ]))
    split = (f"the table's column `{s['split_column']}` (rows `test` are evaluated)" if s.get("split_column")
             else "deterministic by seed, stratified by the label")
    parts.append(
        f"Split: {split}; δ and the probes are fitted on the *fit* part, every number below is on the "
        "*test* part. Details: docs/EVALUATION.md.\n")

    def fig(name: str, extra: str = "") -> None:
        if name in figs:
            parts.append(f"![{figs[name]}]({name})\n\n{_setting(m, extra)}\n")

    warning = (m.get("uncertainty", {}).get("check") or {}).get("warning")
    if warning:
        parts.append(f"> **{warning[0].upper() + warning[1:]}**\n")
    if claim_rows:
        parts.append("## The paper's claims, checked on this data\n")
        parts.append(_table(["claim", "holds", "evidence"], [list(r) for r in claim_rows]))

    if "retrieval" in m:
        r = m["retrieval"]
        parts.append("## 1. Retrieval: cross-modal (δ = 0), reconstruction (δ = 1), inversion (δ on fit)\n")
        if r["summary"].get("n_nonfinite"):
            parts.append(f"**Warning:** {r['summary']['n_nonfinite']} reconstruction(s) held NaN/inf; each was "
                         "scored as a miss (worst rank).\n")
        by = r["summary"]["by_visible_size"]
        parts.append(_table(
            ["visible", "pairs", "R@1 cross", "R@1 recon", "R@1 inversion", "R@5 cross", "R@5 inversion",
             "mean δ"],
            [[f"{k} modalit{'y' if k == '1' else 'ies'}", by[k]["n"], *(by[k][f"{x}_mean"] for x in
              ("r1_cross", "r1_reconstruction", "r1_inversion", "r5_cross", "r5_inversion", "delta"))]
             for k in by]))
        fig("retrieval.png", ", galleries = distinct target embeddings of the test rows")
        parts.append("<details><summary>every pair</summary>\n\n" + _table(
            ["visible", "target", "n", "gallery", "δ", "R@1 cross", "R@1 recon", "R@1 inv", "R@5 cross",
             "R@5 inv", "R@10 inv", "med. rank cross", "med. rank inv"],
            [[_vis(p["visible"]), p["target"], p["n_query"], p["n_gallery"], _d(p["delta"]), p["r1_cross"],
              p["r1_reconstruction"], p["r1_inversion"], p["r5_cross"], p["r5_inversion"], p["r10_inversion"],
              _int(p["median_rank_cross"]), _int(p["median_rank_inversion"])] for p in r["pairs"]]) + "\n</details>\n")

    if "zeroshot" in m:
        z = m["zeroshot"]
        parts.append(f"## 2. Zero-shot classification against `{z['class_modality']}` prototypes "
                     f"({z['n_prototypes']} classes)\n")
        parts.append(_table(
            ["visible", "n", "δ", "top-1 cross", "top-1 recon", "top-1 inversion", "top-5 inversion",
             "macro cross", "macro inversion"],
            [[_vis(x["visible"]), x["n"], _d(x["delta"]), x["top1_cross"], x["top1_reconstruction"],
              x["top1_inversion"], x["top5_inversion"], x["macro_cross"], x["macro_inversion"]] for x in z["sets"]]))
        fig("zeroshot.png", f", prototypes from {s['prototypes']}")

    if "probe" in m:
        p = m["probe"]
        parts.append(f"## 3. Linear probing of `{p['label']}` (logistic regression, fit → test)\n")
        parts.append(_table(
            ["visible", "train", "test", "acc raw", "acc μ", "acc tokens", "acc recon", "F1 raw", "F1 μ",
             "F1 tokens", "F1 recon"],
            [[_vis(x["visible"]), x["n_train"], x["n_test"], x["acc_raw"], x["acc_mu"], x["acc_tokens"],
              x["acc_reconstruction"], x["f1_raw"], x["f1_mu"], x["f1_tokens"], x["f1_reconstruction"]]
             for x in p["sets"]]))
        fig("probe.png")

    if "uncertainty" in m:
        u = m["uncertainty"]
        parts.append("## 4. Uncertainty (‖σ‖₁ of the posterior)\n")
        if warning:
            parts.append(f"> **{warning[0].upper() + warning[1:]}**\n")
        parts.append(_table(["visible subset", "n", "mean ‖σ‖₁", "median", "p10", "p90"],
                            [[_vis(x["visible"]), x["n"], x["sigma_l1_mean"], x["sigma_l1_median"],
                              x["sigma_l1_p10"], x["sigma_l1_p90"]] for x in u["subsets"]]))
        fig("sigma.png")
        parts.append("### Which modality to add next\n")
        parts.append("Expected reduction: ‖σ‖₁(S) − ‖σ‖₁(S ∪ reconstructed m), needs only S. "
                     "Actual: with the real m, on rows that have it. Agreement: share of rows whose "
                     "expected best candidate is also the actual best.\n")
        parts.append(_table(
            ["visible", "ranking (expected reduction / actual)", "agreement"],
            [[_vis(n["visible"]), "; ".join(f"{r['add']} {_f(r['expected_reduction'])}/{_f(r['actual_reduction'])}"
                                            for r in n["ranking"]), n["agreement"]] for n in u["next"]]))
        fig("next_modality.png")
        if csv:
            parts.append(f"Per-row rankings: [{csv}]({csv}).\n")
        cal = u["calibration"]
        parts.append(f"### Calibration\nSpearman ρ of ‖σ‖₁ with the reconstruction error: "
                     f"{_f(cal['pooled_spearman_recon_error'])}; with the inversion retrieval rank: "
                     f"{_f(cal['pooled_spearman_rank'])} (pooled over {cal['n']} (row, pair) cases; per pair "
                     "in metrics.json).\n")
        fig("calibration.png")

    if "gap" in m:
        g = m["gap"]
        parts.append("## 5. Modality gap\n")
        parts.append(_table(
            ["representation", "mean centroid distance", "mean linear separability (0.5 = none)"],
            [[name, g[k]["centroid_distance"], g[k]["separability"]] for name, k in
             (("raw inputs f_a vs f_b", "raw"), ("hidden μ({a}) vs μ({b})", "hidden"),
              ("reconstruction f̂_b({a}) vs f_b", "reconstruction"))]))
        fig("gap.png", f", {g['n_rows']} test rows")
    return "\n".join(parts)


def write_outputs(out: Path, metrics: dict, run_extras: dict, plots: bool = True,
                  command: str | None = None) -> dict[str, str]:
    """Write the PNGs, ``next_modality.csv`` and ``report.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    figs = make_plots(out, metrics, run_extras) if plots else {}
    csv = _next_rows_csv(out, metrics, run_extras)
    text = render(metrics, figs, command, csv, run_extras.get("claims", ()))
    if plots and not figs:
        text += "\n*(matplotlib is not installed: no figures. `pip install prom3e[plot]`.)*\n"
    write_text(out / "report.md", text)
    return figs
