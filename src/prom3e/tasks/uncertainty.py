"""Uncertainty: ‖σ‖₁ of the posterior per visible subset, "which modality next", calibration.

- ``sigma_by_subset``: ‖σ‖₁ = Σ exp(½·logσ²) for every row that has the whole subset.
- ``next_modality``: for a visible set S and a candidate m ∉ S, the *expected* reduction
  is ‖σ‖₁(S) − ‖σ‖₁(S ∪ {f̂_m(S)}) — m replaced by its reconstruction from S, so it needs
  nothing but S (what a user deciding what to collect has); the *actual* reduction uses
  the real m on rows that have it. Candidates are ranked by the mean expected reduction,
  and per row by its own expected reduction.
- calibration: Spearman correlation of ‖σ‖₁ with reconstruction error / retrieval rank.
- ``sigma_check``: does σ carry signal at all? (not collapsed at a clip, drops when a
  modality is added, ranks rows by retrieval difficulty) — a warning line when it does not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from prom3e.data.table import ModalTable
from prom3e.metrics import spearman
from prom3e.tasks.common import FuserLike


def sigma_l1_floor(fuser: FuserLike) -> float | None:
    """The least ‖σ‖₁ the model can report, E·exp(−clip/2), where every logσ² sits at its
    clip (a collapsed σ); ``None`` for a model without that clip."""
    cfg = getattr(getattr(fuser, "model", None), "cfg", None)
    clip, dim = getattr(cfg, "logvar_clip", None), getattr(cfg, "embed_dim", None)
    return None if clip is None or dim is None else float(dim * math.exp(-clip / 2))


def sigma_l1(posterior) -> np.ndarray:
    """``float64 [B]`` ‖σ‖₁ of a posterior (``sigma_l1`` property, or from ``logvar``)."""
    s = getattr(posterior, "sigma_l1", None)
    if s is None:
        s = torch.exp(0.5 * posterior.logvar).sum(-1)
    return np.asarray(s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else s, np.float64)


def rows_with(table: ModalTable, rows: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """The subset of ``rows`` where every modality in ``names`` is present."""
    idx = [table.index(n) for n in names]
    return rows[table.present[np.ix_(rows, idx)].all(1)]


def sigma_by_subset(fuser: FuserLike, table: ModalTable, rows: np.ndarray,
                    subsets: Sequence[tuple[str, ...]], batch_size: int = 1024,
                    progress=None) -> dict[tuple[str, ...], np.ndarray]:
    """‖σ‖₁ for each subset over ``rows``: ``float64 [len(rows)]``, NaN where it is incomplete."""
    out: dict[tuple[str, ...], np.ndarray] = {}
    pos = np.full(len(table), -1, np.int64)
    pos[rows] = np.arange(len(rows))
    for s in subsets:
        sig = np.full(len(rows), np.nan)
        r = rows_with(table, rows, s)
        if len(r):
            sig[pos[r]] = sigma_l1(fuser.encode(table.take(r), visible=list(s), batch_size=batch_size))
        out[tuple(s)] = sig
        if progress is not None:
            progress.update(1)
    return out


def summarize_subsets(sig: dict[tuple[str, ...], np.ndarray]) -> list[dict]:
    """Per subset: rows, mean / median / 10th / 90th percentile of ‖σ‖₁."""
    out = []
    for s, v in sig.items():
        v = v[np.isfinite(v)]
        q = np.percentile(v, [10, 50, 90]) if len(v) else [None] * 3
        out.append({"visible": list(s), "n": len(v), "sigma_l1_mean": float(v.mean()) if len(v) else None,
                    "sigma_l1_median": q[1], "sigma_l1_p10": q[0], "sigma_l1_p90": q[2]})
    return out


def _with_replaced(batch: ModalTable, name: str, value: torch.Tensor) -> ModalTable:
    """A copy of ``batch`` whose modality ``name`` is ``value`` and present on every row."""
    i = batch.index(name)
    feats = list(batch.features)
    feats[i] = np.asarray(value, np.float32)
    present = batch.present.copy()
    present[:, i] = True
    return ModalTable(list(batch.modalities), feats, present, batch.meta, batch.source)


def next_modality(fuser: FuserLike, table: ModalTable, rows: np.ndarray, visible: tuple[str, ...],
                  candidates: Sequence[str], sig: dict[tuple[str, ...], np.ndarray] | None = None,
                  batch_size: int = 1024) -> dict:
    """Rank the modalities to add to ``visible`` by expected reduction of ‖σ‖₁.

    ``sig`` (from :func:`sigma_by_subset` over the same ``rows``) supplies the actual
    ‖σ‖₁ of S ∪ {m} where computed; otherwise it is encoded here. Returns the ranking
    (mean expected / actual reduction per candidate), the share of rows whose own best
    candidate is each m, and the agreement between the expected and the actual best
    candidate on rows that have every candidate.
    """
    cands = [m for m in candidates if m not in visible]
    r = rows_with(table, rows, visible)
    out: dict = {"visible": list(visible), "n": len(r), "ranking": [], "best_share": {},
                 "agreement": None, "n_agreement": 0}
    if not len(r) or not cands:
        return out
    batch = table.take(r)
    pos = np.full(len(table), -1, np.int64)
    pos[rows] = np.arange(len(rows))
    if sig is not None and tuple(visible) in sig:
        base = sig[tuple(visible)][pos[r]]
    else:
        base = sigma_l1(fuser.encode(batch, visible=list(visible), batch_size=batch_size))
    recon = fuser.reconstruct(batch, targets=cands, visible=list(visible), batch_size=batch_size)
    expected = np.empty((len(r), len(cands)))
    actual = np.full((len(r), len(cands)), np.nan)
    for j, m in enumerate(cands):
        plugged = _with_replaced(batch, m, recon[m])
        post = fuser.encode(plugged, visible=[*visible, m], batch_size=batch_size)
        expected[:, j] = base - sigma_l1(post)
        key = tuple(n for n in table.modalities if n in (*visible, m))  # subsets keep table order
        if sig is not None and key in sig:
            actual[:, j] = base - sig[key][pos[r]]
        else:
            has = batch.present[:, batch.index(m)]
            if has.any():
                sub = batch.take(np.flatnonzero(has))
                actual[has, j] = base[has] - sigma_l1(
                    fuser.encode(sub, visible=[*visible, m], batch_size=batch_size))
    for j, m in enumerate(cands):
        a = actual[:, j][np.isfinite(actual[:, j])]
        out["ranking"].append({
            "add": m, "expected_reduction": float(expected[:, j].mean()),
            "actual_reduction": float(a.mean()) if len(a) else None, "n_actual": len(a),
            "frac_expected_lower": float((expected[:, j] > 0).mean()),
            "frac_actual_lower": float((a > 0).mean()) if len(a) else None,
        })
    out["ranking"].sort(key=lambda d: -d["expected_reduction"])
    best = expected.argmax(1)
    out["best_share"] = {m: float((best == j).mean()) for j, m in enumerate(cands)}
    full = np.isfinite(actual).all(1)
    if full.any():
        out["agreement"] = float((best[full] == actual[full].argmax(1)).mean())
        out["n_agreement"] = int(full.sum())
    # per-row detail (arrays: not written to metrics.json)
    out["_rows"], out["_candidates"], out["_expected"] = r, cands, expected
    out["_best"] = np.asarray(cands, dtype=object)[best]
    return out


def expected_reductions(fuser: FuserLike, x: torch.Tensor, present: torch.Tensor, names: Sequence[str],
                        batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the expected drop of ‖σ‖₁ from adding each absent modality (its visible set
    being the row's present modalities, which may differ row to row).

    ``x [B, M, Dmax]``, ``present bool [B, M]`` → (``base float64 [B]`` = ‖σ‖₁ of the row as
    it is, ``expected float64 [B, M]``, NaN where the modality is already present). As in
    :func:`next_modality`, a candidate is plugged in as its reconstruction from the visible
    set. One encode + one reconstruct + one encode per candidate modality, all rows batched.
    """
    base = sigma_l1(fuser.encode((x, present), batch_size=batch_size))
    out = np.full(tuple(present.shape), np.nan)
    cands = [m for m in range(len(names)) if not bool(present[:, m].all())]
    if not cands:
        return base, out
    recon = fuser.reconstruct((x, present), targets=[names[m] for m in cands], batch_size=batch_size)
    for m in cands:
        rows = (~present[:, m]).nonzero()[:, 0]
        x2, p2 = x[rows].clone(), present[rows].clone()
        r = recon[names[m]][rows]
        x2[:, m, : r.shape[1]] = r
        p2[:, m] = True
        out[rows.numpy(), m] = base[rows.numpy()] - sigma_l1(fuser.encode((x2, p2), batch_size=batch_size))
    return base, out


def calibration(sigma: np.ndarray, error: np.ndarray, rank: np.ndarray) -> dict[str, float | None]:
    """Spearman of ‖σ‖₁ with reconstruction error (1 − cos) and with retrieval rank."""
    return {"spearman_recon_error": spearman(sigma, error), "spearman_rank": spearman(sigma, rank)}


# What an uncertainty worth reading must show (issue 11's bars)
MAX_CLIP_SHARE = 0.05  # share of logσ² within CLIP_WITHIN of ±clip
CLIP_WITHIN = 0.5
MIN_FRAC_DROPS = 0.8  # share of (set, added modality) cases whose mean ‖σ‖₁ drops
MIN_SPEARMAN_RANK = 0.3  # mean over retrieval pairs of Spearman(‖σ‖₁, rank of the true target)


def clip_share(logvar: np.ndarray | torch.Tensor, clip: float) -> float:
    """Share of logσ² values within CLIP_WITHIN of ±clip (where a collapsed σ sits)."""
    lv = np.abs(np.asarray(logvar, np.float64))
    return float(np.mean(clip - lv < CLIP_WITHIN)) if lv.size else float("nan")


def sigma_check(clip: float | None, frac_drops: float | None, spearman_rank: float | None) -> dict:
    """The three checks, whether all pass, and one warning line when σ should not be read."""
    failed = []
    if clip is not None and clip > MAX_CLIP_SHARE:
        failed.append(f"{clip:.0%} of logσ² at the clip (bar < {MAX_CLIP_SHARE:.0%})")
    if frac_drops is not None and frac_drops < MIN_FRAC_DROPS:
        failed.append(f"adding a modality lowers mean ‖σ‖₁ in {frac_drops:.0%} of cases (bar ≥ {MIN_FRAC_DROPS:.0%})")
    if spearman_rank is None or spearman_rank < MIN_SPEARMAN_RANK:
        got = "undefined" if spearman_rank is None else f"{spearman_rank:.2f}"
        failed.append(f"Spearman(‖σ‖₁, rank of the true target) {got} (bar ≥ {MIN_SPEARMAN_RANK})")
    warning = None
    if clip is not None and clip > 0.5:
        warning = (f"warning: σ is collapsed ({clip:.0%} of logσ² within {CLIP_WITHIN} of the clip): "
                   "the uncertainty figures carry no signal and are not a finding")
    elif failed:
        warning = "warning: σ fails its own checks (" + "; ".join(failed) + "): the uncertainty study is not a finding"
    return {"clip_share": clip, "frac_sigma_drops": frac_drops, "spearman_rank_mean": spearman_rank,
            "passes": not failed, "warning": warning}
