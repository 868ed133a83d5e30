"""The evaluation figures say what a reader needs (issue 15): chance levels, axis labels and
scores, the σ clip floor, Spearman ρ, a readable next-modality heatmap. The figures of a real
(tiny) evaluation are captured as matplotlib objects and inspected."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from prom3e.viz import plots  # noqa: E402


@pytest.fixture(scope="module")
def figures(tiny_run, small_parquet, tmp_path_factory):
    from prom3e.api import Fuser
    from prom3e.tasks.evaluate import evaluate

    captured: dict[str, object] = {}
    save = plots._save

    def keep(fig, path: Path) -> Path:
        captured[Path(path).name] = fig
        return save(fig, path)

    plots._save = keep
    try:
        out = tmp_path_factory.mktemp("figs")
        fuser = Fuser.load(tiny_run, device="cpu")
        metrics = evaluate(fuser, small_parquet, label="species", out_dir=out, max_visible=1, max_subset_size=2,
                           threads=1)
    finally:
        plots._save = save
    return captured, metrics, fuser


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]] + [
        t.get_text() for t in fig.texts] + [
        t.get_text() for leg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if leg for t in leg.get_texts()]


def test_chance_on_zeroshot_and_probe(figures):
    figs, m, _ = figures
    k = m["zeroshot"]["n_prototypes"]
    for name, n in (("zeroshot.png", k), ("probe.png", m["settings"]["n_classes"])):
        ax = figs[name].axes[0]
        lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("chance")]
        assert len(lines) == 1 and lines[0].get_ydata()[0] == pytest.approx(1 / n), name
        assert any(f"chance (1/{n}" in t for t in _texts(figs[name])), name
        assert ax.get_xlabel() == "visible modalities"


def test_gap_has_axis_labels_and_scores(figures):
    figs, m, _ = figures
    axes = [ax for ax in figs["gap.png"].axes if ax.collections]
    assert len(axes) == 3
    for ax, rep in zip(axes, ("raw", "hidden", "reconstruction"), strict=True):
        assert ax.get_xlabel().startswith("PC 1 (") and ax.get_ylabel().startswith("PC 2 (")
        s = m["gap"][rep]
        assert f"separability {s['separability']:.2f}" in ax.get_title()
        assert f"centroid distance {s['centroid_distance']:.2f}" in ax.get_title()


def test_sigma_shows_the_clip_floor(figures):
    from prom3e.tasks.evaluate import sigma_l1_floor

    figs, m, fuser = figures
    cfg = fuser.model.cfg
    floor = sigma_l1_floor(fuser)
    assert floor == pytest.approx(cfg.embed_dim * math.exp(-cfg.logvar_clip / 2))
    lo = min(x["sigma_l1_p10"] for x in m["uncertainty"]["subsets"])
    assert lo >= floor  # nothing below the floor
    assert any(f"clip floor {floor:.3g}" in t for t in _texts(figs["sigma.png"]))


def test_calibration_titles_carry_rho(figures):
    figs, m, _ = figures
    cal = m["uncertainty"]["calibration"]
    titles = [ax.get_title() for ax in figs["calibration.png"].axes]
    assert f"Spearman ρ = {cal['pooled_spearman_recon_error']:+.2f}" in titles[0]
    assert f"Spearman ρ = {cal['pooled_spearman_rank']:+.2f}" in titles[1]


def test_next_modality_order_blank_and_scale(figures, tmp_path):
    from matplotlib.colors import TwoSlopeNorm

    figs, m, _ = figures
    fig = figs["next_modality.png"]
    ax = fig.axes[0]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    assert cols == [c for c in m["settings"]["modalities"] if c in cols]  # the table's order, as the rows
    assert any("already visible" in t for t in _texts(fig))
    norm = ax.images[0].norm
    assert isinstance(norm, TwoSlopeNorm) and norm.vcenter == 0
    # every value negative (adding anything raises σ): all cells below the centre, none hatched
    nxt = [{"visible": ["a"], "ranking": [{"add": "b", "expected_reduction": -0.5},
                                          {"add": "c", "expected_reduction": -0.1}]},
           {"visible": ["b"], "ranking": [{"add": "a", "expected_reduction": -0.2},
                                          {"add": "c", "expected_reduction": None}]}]
    captured = {}
    save = plots._save
    plots._save = lambda f, p: captured.setdefault("fig", f) and p
    try:
        plots.next_modality(nxt, tmp_path / "n.png", ["c", "b", "a"])
    finally:
        plots._save = save
    ax = captured["fig"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["c", "b", "a"]
    grid = np.asarray(ax.images[0].get_array(), dtype=float)
    assert np.nanmax(grid) < 0 and ax.images[0].norm.vcenter == 0
    assert ax.images[0].norm(np.nanmax(grid)) < 0.5  # the red half: "raises σ", not a bright "add first"
    assert any("no estimate" in t for t in _texts(captured["fig"]))
