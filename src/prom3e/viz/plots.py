"""PNG figures of the evaluation. matplotlib is imported lazily (optional: ``prom3e[plot]``).

Every function takes plain data and a path, draws with the object-oriented API (no
pyplot state, no GUI backend) and returns the path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prom3e.tasks.gap import pca_2d

PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3",
           "#8C8C8C", "#CCB974", "#64B5CD")


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, metadata={"Software": None})
    return path


def _label(v: Sequence[str]) -> str:
    return "+".join(v)


def retrieval(pairs: list[dict], path: Path) -> Path:
    """R@1 of inversion vs cross-modal per pair, and mean R@1 by number of visible modalities."""
    fig = _figure(10, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    sizes = sorted({len(p["visible"]) for p in pairs})
    for k, size in enumerate(sizes):
        g = [p for p in pairs if len(p["visible"]) == size and p["r1_cross"] is not None]
        ax1.scatter([p["r1_cross"] for p in g], [p["r1_inversion"] for p in g], s=18,
                    color=PALETTE[k % 10], label=f"{size} visible", alpha=0.8)
    hi = max([p["r1_inversion"] or 0 for p in pairs] + [p["r1_cross"] or 0 for p in pairs] + [0.01])
    ax1.plot([0, hi], [0, hi], color="k", lw=0.8, ls="--")
    ax1.set(xlabel="R@1 cross-modal (δ = 0)", ylabel="R@1 inversion (δ from fit split)",
            title="per (visible, target) pair: above the line = inversion wins")
    ax1.legend(fontsize=8)
    width = 0.25
    x = np.arange(len(sizes))
    for j, (name, col) in enumerate((("cross", 0), ("reconstruction", 1), ("inversion", 2))):
        vals = [np.mean([p[f"r1_{name}"] for p in pairs if len(p["visible"]) == s
                         and p[f"r1_{name}"] is not None] or [np.nan]) for s in sizes]
        ax2.bar(x + (j - 1) * width, vals, width, color=PALETTE[col], label=name)
    chance = [p["chance_r1"] for p in pairs if p.get("chance_r1") is not None]
    _chance_line(ax2, float(np.mean(chance)) if chance else None, "mean 1/gallery")
    ax2.set_xticks(x, [f"{s} visible" for s in sizes])
    top = ax2.get_ylim()[1]
    ax2.set(ylabel="mean R@1", title="mean R@1 by visible-set size", ylim=(0, top * 1.35))  # room for the legend
    ax2.legend(fontsize=8, ncols=2, loc="upper center")
    return _save(fig, path)


def _chance_line(ax, chance: float | None, what: str) -> None:
    """A dashed line at the chance level, labelled in the legend."""
    if chance is not None and np.isfinite(chance):
        ax.axhline(chance, color="k", lw=1, ls="--", label=f"chance ({what} = {chance:.3g})")


def grouped_bars(sets: list[dict], keys: Sequence[str], names: Sequence[str], ylabel: str,
                 title: str, path: Path, chance: float | None = None, chance_what: str = "1/K") -> Path:
    """One group of bars per visible set (zero-shot accuracy, probe accuracy), with the
    accuracy of a uniform random guess (``chance``) as a dashed line."""
    fig = _figure(max(6.0, 0.55 * len(sets) * len(keys) / 2 + 2), 4.2)
    ax = fig.subplots()
    x = np.arange(len(sets))
    width = 0.8 / len(keys)
    for j, (k, n) in enumerate(zip(keys, names, strict=True)):
        vals = [s[k] if s[k] is not None else np.nan for s in sets]
        ax.bar(x + (j - (len(keys) - 1) / 2) * width, vals, width, color=PALETTE[j % 10], label=n)
    _chance_line(ax, chance, chance_what)
    ax.set_xticks(x, [_label(s["visible"]) for s in sets], rotation=45, ha="right", fontsize=8)
    ax.set(xlabel="visible modalities", ylabel=ylabel, title=title, ylim=(0, 1.13))  # the band above 1: legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.legend(fontsize=8, ncols=len(keys) + (chance is not None), loc="upper center", frameon=False)
    return _save(fig, path)


def sigma_violins(sig: dict[tuple[str, ...], np.ndarray], path: Path, floor: float | None = None) -> Path:
    """‖σ‖₁ distribution per visible subset, sorted by median, coloured by subset size; the
    clip floor (the least ‖σ‖₁ the model can report, where a collapsed σ sits) as a red line,
    or an arrow to it when it lies far left of every value."""
    items = [(s, v[np.isfinite(v)]) for s, v in sig.items() if np.isfinite(v).sum() >= 2]
    items.sort(key=lambda it: float(np.median(it[1])))
    fig = _figure(7, max(3.0, 0.28 * len(items) + 1.2))
    ax = fig.subplots()
    handles = []
    if items:
        data = [v for _, v in items]
        try:  # matplotlib ≥ 3.10
            parts = ax.violinplot(data, orientation="horizontal", showmedians=True, widths=0.85)
        except TypeError:
            parts = ax.violinplot(data, vert=False, showmedians=True, widths=0.85)
        for body, (s, _) in zip(parts["bodies"], items, strict=True):
            body.set_facecolor(PALETTE[(len(s) - 1) % 10])
            body.set_alpha(0.7)
        ax.set_yticks(np.arange(1, len(items) + 1), [_label(s) for s, _ in items], fontsize=7)
        ax.invert_yaxis()  # most certain on top
        from matplotlib.patches import Patch

        sizes = sorted({len(s) for s, _ in items})
        handles = [Patch(color=PALETTE[(k - 1) % 10], alpha=0.7, label=f"{k} visible") for k in sizes]
        if floor is not None and np.isfinite(floor):
            lo = min(float(v.min()) for v in data)
            hi = max(float(v.max()) for v in data)
            if floor >= lo - (hi - lo):  # near the data: draw it
                handles.append(ax.axvline(floor, color=PALETTE[3], lw=1.5, ls="--",
                                          label=f"clip floor {floor:.3g}: a collapsed σ sits here"))
            else:  # far left: say where it is without squashing the violins
                ax.annotate(f"← clip floor {floor:.3g} (where a collapsed σ sits) is off this axis",
                            xy=(0.01, 0.01), xycoords="axes fraction", fontsize=8, color=PALETTE[3])
        fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=len(handles), frameon=False)
    ax.set(xlabel="‖σ‖₁ of the posterior (lower = more certain)", ylabel="visible modalities",
           title="uncertainty per visible subset, most certain first")
    return _save(fig, path)


def calibration(calib: list[dict], path: Path, max_points: int = 6000, rho_error: float | None = None,
                rho_rank: float | None = None) -> Path:
    """‖σ‖₁ vs reconstruction error and vs retrieval rank, pooled over pairs; the pooled
    Spearman ρ of each in its title (ρ > 0: a larger σ goes with a worse result)."""
    fig = _figure(10, 4.4)
    ax1, ax2 = fig.subplots(1, 2)
    sig = np.concatenate([c["sigma"] for c in calib]) if calib else np.zeros(0)
    err = np.concatenate([c["error"] for c in calib]) if calib else np.zeros(0)
    rank = np.concatenate([c["rank"] for c in calib]) if calib else np.zeros(0)
    size = np.concatenate([np.full(len(c["sigma"]), len(c["visible"])) for c in calib]) if calib else np.zeros(0)
    keep = np.sort(np.random.default_rng(0).permutation(len(sig))[:max_points])
    for k, s in enumerate(sorted(set(size[keep].tolist()))):
        m = keep[size[keep] == s]
        ax1.scatter(sig[m], err[m], s=4, alpha=0.4, color=PALETTE[k % 10], label=f"{int(s)} visible")
        ax2.scatter(sig[m], rank[m], s=4, alpha=0.4, color=PALETTE[k % 10], label=f"{int(s)} visible")

    def rho(v: float | None) -> str:
        return "ρ undefined" if v is None or not np.isfinite(v) else f"Spearman ρ = {v:+.2f}"

    shown = f"{len(keep)} of {len(sig)} cases shown" if len(keep) < len(sig) else f"{len(sig)} cases"
    ax1.set(xlabel="‖σ‖₁", ylabel="reconstruction error (1 − cos)",
            title=f"σ vs error: {rho(rho_error)}\n({shown}; ρ > 0 = calibrated)")
    ax2.set(xlabel="‖σ‖₁", ylabel="rank of the true item (inversion)", yscale="log",
            title=f"σ vs retrieval rank: {rho(rho_rank)}\n({shown}; ρ > 0 = calibrated)")
    for ax in (ax1, ax2):
        ax.title.set_fontsize(10)
        if len(keep):
            ax.legend(fontsize=8, markerscale=3)
    return _save(fig, path)


def next_modality(nxt: list[dict], path: Path, modalities: Sequence[str] | None = None) -> Path:
    """Heatmap of the mean expected reduction of ‖σ‖₁ when adding a modality (rows: visible
    sets in the evaluation's order; columns: candidates in the table's modality order).

    The colour scale is diverging and centred at 0 (blue: adding lowers ‖σ‖₁, red: it raises
    it), so an all-negative grid reads as "adding anything raises σ". Grey cells: the
    modality is already visible (nothing to add), hatched: no estimate for that pair."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Patch

    sets = [n for n in nxt if n["ranking"]]
    found = {r["add"] for n in sets for r in n["ranking"]}
    order = list(modalities) if modalities else sorted(found)
    cands = [m for m in order if m in found] + sorted(found - set(order))
    grid = np.full((len(sets), len(cands)), np.nan)
    for i, n in enumerate(sets):
        for r in n["ranking"]:
            if r["expected_reduction"] is not None:
                grid[i, cands.index(r["add"])] = r["expected_reduction"]
    visible = np.array([[c in n["visible"] for c in cands] for n in sets], bool).reshape(len(sets), len(cands))
    fig = _figure(2.6 + 0.85 * len(cands), 2.0 + 0.3 * len(sets))
    ax = fig.subplots()
    ax.set_facecolor("white")
    span = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    span = span if span > 0 else 1.0
    im = ax.imshow(grid, aspect="auto", cmap="RdBu", norm=TwoSlopeNorm(0.0, -span, span))
    ax.imshow(np.where(visible, 1.0, np.nan), aspect="auto", cmap="Greys", vmin=0, vmax=4)
    missing = ~visible & ~np.isfinite(grid)
    for i, j in zip(*np.nonzero(missing), strict=True):
        ax.add_patch(_hatched_cell(j, i))
    if grid.size <= 400:  # the numbers, where they fit
        for i, j in zip(*np.nonzero(np.isfinite(grid)), strict=True):
            v = grid[i, j]
            ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=6,
                    color="white" if abs(v) > 0.6 * span else "black")
    ax.set_xticks(np.arange(len(cands)), cands, rotation=45, ha="right")
    ax.set_yticks(np.arange(len(sets)), [_label(n["visible"]) for n in sets], fontsize=7)
    ax.set(xlabel="modality to add", ylabel="visible modalities",
           title="expected ‖σ‖₁ reduction when adding a modality\n(higher = add first)")
    ax.title.set_fontsize(10)
    bar = fig.colorbar(im, ax=ax)
    bar.set_label("blue: adding lowers ‖σ‖₁ · red: raises it", fontsize=8)
    keys = [Patch(facecolor="#d9d9d9", edgecolor="#999999", label="blank: already visible (nothing to add)")]
    if missing.any():
        keys.append(Patch(facecolor="white", hatch="///", edgecolor="#999999", label="no estimate (no rows)"))
    fig.legend(handles=keys, fontsize=8, loc="outside lower center", ncols=len(keys), frameon=False)
    return _save(fig, path)


def _hatched_cell(x: float, y: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor="white", hatch="///", edgecolor="#999999", lw=0)


GAP_TITLES = {"raw": "raw inputs f_m", "hidden": "hidden μ from {m} alone",
              "reconstruction": "reconstructions f̂_m (from each other single m')"}


def gap_projection(clouds: dict[str, dict[str, np.ndarray]], path: Path, per_modality: int = 300,
                   scores: dict[str, dict] | None = None) -> Path:
    """2-D PCA of each representation's clouds, coloured by modality (one panel each); each
    title carries the gap's scores (``scores[rep]``: mean centroid distance and linear
    separability, 0.5 = no gap) and the axes the share of variance their components hold."""
    reps = [r for r in ("raw", "hidden", "reconstruction") if clouds.get(r)]
    fig = _figure(4.4 * max(1, len(reps)), 4.6)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(reps))))
    names = sorted({m for r in reps for m in clouds[r]})
    rng = np.random.default_rng(0)
    for ax, rep in zip(axes, reps, strict=False):
        parts = {m: x for m, x in clouds[rep].items() if len(x)}
        dims = {x.shape[1] for x in parts.values()}
        if len(dims) != 1:
            ax.set_title(f"{rep}: dims differ, no joint projection", fontsize=9)
            ax.set_axis_off()
            continue
        take = {m: x[np.sort(rng.permutation(len(x))[:per_modality])] for m, x in parts.items()}
        points = np.concatenate(list(take.values()))
        xy = pca_2d(points)
        total = float(points.var(0).sum())
        share = xy.var(0) / total if total > 0 else np.full(2, np.nan)
        start = 0
        for m, x in take.items():
            ax.scatter(*xy[start: start + len(x)].T, s=5, alpha=0.5, color=PALETTE[names.index(m) % 10], label=m)
            start += len(x)
        s = (scores or {}).get(rep) or {}
        line = (f"\ncentroid distance {s['centroid_distance']:.2f} · separability {s['separability']:.2f}"
                if s.get("centroid_distance") is not None and s.get("separability") is not None else "")
        ax.set_title(GAP_TITLES[rep] + line, fontsize=9)
        ax.set(xlabel=f"PC 1 ({share[0]:.0%} of variance)", ylabel=f"PC 2 ({share[1]:.0%} of variance)")
        ax.set_xticks([])
        ax.set_yticks([])
    drawn = [ax for ax in axes if ax.collections]
    if drawn:
        drawn[0].legend(fontsize=7, markerscale=3)
    if scores:
        fig.suptitle("modality gap: separability 0.5 = the modalities' clouds overlap (no gap), 1.0 = a linear "
                     "cut separates them", fontsize=9)
    return _save(fig, path)
