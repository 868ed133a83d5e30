"""PNG figures of the evaluation. matplotlib is imported lazily (optional: ``prom3e[plot]``).

Every function takes plain data and a path, draws with the object-oriented API (no
pyplot state, no GUI backend) and returns the path. Metrics and projections come from the
tasks (:mod:`prom3e.tasks`); this module only draws them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

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
    ax2.set_xticks(x, [f"{s} visible" for s in sizes])
    ax2.set(ylabel="mean R@1", title="mean R@1 by visible-set size")
    ax2.legend(fontsize=8)
    return _save(fig, path)


def grouped_bars(sets: list[dict], keys: Sequence[str], names: Sequence[str], ylabel: str,
                 title: str, path: Path) -> Path:
    """One group of bars per visible set (zero-shot accuracy, probe accuracy)."""
    fig = _figure(max(6.0, 0.55 * len(sets) * len(keys) / 2 + 2), 4.2)
    ax = fig.subplots()
    x = np.arange(len(sets))
    width = 0.8 / len(keys)
    for j, (k, n) in enumerate(zip(keys, names, strict=True)):
        vals = [s[k] if s[k] is not None else np.nan for s in sets]
        ax.bar(x + (j - (len(keys) - 1) / 2) * width, vals, width, color=PALETTE[j % 10], label=n)
    ax.set_xticks(x, [_label(s["visible"]) for s in sets], rotation=45, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title, ylim=(0, 1))
    ax.legend(fontsize=8, ncols=len(keys))
    return _save(fig, path)


def sigma_violins(sig: dict[tuple[str, ...], np.ndarray], path: Path) -> Path:
    """‖σ‖₁ distribution per visible subset, sorted by median, coloured by subset size."""
    items = [(s, v[np.isfinite(v)]) for s, v in sig.items() if np.isfinite(v).sum() >= 2]
    items.sort(key=lambda it: float(np.median(it[1])))
    fig = _figure(7, max(3.0, 0.28 * len(items) + 1))
    ax = fig.subplots()
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
        ax.legend(handles=[Patch(color=PALETTE[(k - 1) % 10], alpha=0.7, label=f"{k} visible") for k in sizes],
                  fontsize=8, loc="lower right")
    ax.set(xlabel="‖σ‖₁ of the posterior (lower = more certain)",
           title="uncertainty per visible subset, most certain first")
    return _save(fig, path)


def calibration(calib: list[dict], path: Path, max_points: int = 6000) -> Path:
    """‖σ‖₁ vs reconstruction error and vs retrieval rank, pooled over pairs."""
    fig = _figure(10, 4.2)
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
    ax1.set(xlabel="‖σ‖₁", ylabel="reconstruction error (1 − cos)", title="calibration: error")
    ax2.set(xlabel="‖σ‖₁", ylabel="rank of the true item (inversion)", yscale="log",
            title="calibration: retrieval rank")
    for ax in (ax1, ax2):
        if len(keep):
            ax.legend(fontsize=8, markerscale=3)
    return _save(fig, path)


def next_modality(nxt: list[dict], path: Path) -> Path:
    """Heatmap: mean expected reduction of ‖σ‖₁ when adding a modality (rows: visible set)."""
    sets = [n for n in nxt if n["ranking"]]
    cands = sorted({r["add"] for n in sets for r in n["ranking"]})
    grid = np.full((len(sets), len(cands)), np.nan)
    for i, n in enumerate(sets):
        for r in n["ranking"]:
            grid[i, cands.index(r["add"])] = r["expected_reduction"]
    fig = _figure(1.2 + 0.8 * len(cands), 1.5 + 0.3 * len(sets))
    ax = fig.subplots()
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(np.arange(len(cands)), cands, rotation=45, ha="right")
    ax.set_yticks(np.arange(len(sets)), [_label(n["visible"]) for n in sets], fontsize=7)
    ax.set(xlabel="modality to add", title="expected ‖σ‖₁ reduction (higher = add first)")
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def gap_projection(projection: dict, path: Path) -> Path:
    """Scatter of each representation's 2-D projection, coloured by modality (one panel each).

    ``projection``: :func:`prom3e.tasks.gap.projections`'s result.
    """
    panels, names = projection["panels"], projection["modalities"]
    fig = _figure(4.2 * max(1, len(panels)), 4.2)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(panels))))
    for ax, (rep, xy) in zip(axes, panels.items(), strict=False):
        if xy is None:
            ax.set_title(f"{rep}: dims differ, no joint projection", fontsize=9)
            ax.set_axis_off()
            continue
        for m, pts in xy.items():
            ax.scatter(*pts.T, s=5, alpha=0.5, color=PALETTE[names.index(m) % 10], label=m)
        ax.set_title({"raw": "raw inputs f_m", "hidden": "hidden μ from {m} alone",
                      "reconstruction": "reconstructions f̂_m (from each other single m')"}[rep], fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    drawn = [ax for ax in axes if ax.collections]
    if drawn:
        drawn[0].legend(fontsize=7, markerscale=3)
    return _save(fig, path)
