"""Cross-modal retrieval and modality inversion (δ-mixing), batched on torch.

For a query row with visible modalities V and a target modality t, the query vector is
``q' = (1 − δ)·f_V + δ·f̂_t(V)``, where ``f_V`` is the (normalised mean) raw embedding of
the visible modalities and ``f̂_t(V)`` the model's reconstruction of t. δ = 0 is plain
cross-modal retrieval (TaxaBind / ImageBind), δ = 1 reconstruction only; modality
inversion picks δ on a validation split. The gallery holds real t-embeddings; scores are
inner products with the L2-normalised gallery (so cosine for a fixed query).

Ranks, the tie rule (a tie counts against the query) and the non-finite rule (NaN is a
miss) are :mod:`prom3e.metrics`'s. The true item's score is read from the same score matrix
as the others, so it is never compared against a re-computed copy of itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prom3e.metrics import chunk_rows, l2n, rank_from_scores, retrieval_summary

DELTA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
KS: tuple[int, ...] = (1, 5, 10)


def rank_of_true(queries: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray,
                 true_idx: torch.Tensor | np.ndarray, backend: str = "torch",
                 max_rank: int = 1000) -> torch.Tensor:
    """1-based rank of ``gallery[true_idx[i]]`` for each query ``i`` (``int64 [Q]``).

    ``backend="torch"`` (default) is exact: chunked matmul and counting, memory bounded.
    ``backend="faiss"`` uses a flat inner-product index for the top ``max_rank`` items
    (ranks beyond are reported as ``max_rank + 1``; ties in faiss's order), for galleries too
    large to scan here. A query with a non-finite value gets the worst rank either way.
    """
    q = torch.as_tensor(np.asarray(queries) if not isinstance(queries, torch.Tensor) else queries,
                        dtype=torch.float32)
    g = l2n(gallery)
    t = torch.as_tensor(np.asarray(true_idx) if not isinstance(true_idx, torch.Tensor) else true_idx,
                        dtype=torch.long)
    if backend == "faiss":
        return _rank_faiss(q, g, t, max_rank)
    if backend != "torch":
        raise ValueError(f"unknown backend '{backend}' (torch or faiss)")
    return ranks_for_deltas(q, None, g, t, (0.0,))[0]


def ranks_for_deltas(query: torch.Tensor | None, recon: torch.Tensor | None, gallery: torch.Tensor,
                     true_idx: torch.Tensor, deltas: Sequence[float] = DELTA_GRID) -> torch.Tensor:
    """Ranks for every δ at once: ``int64 [len(deltas), Q]``.

    Scores are linear in δ, so the two score matrices ``f_V·Gᵀ`` and ``f̂_t·Gᵀ`` are
    computed once per chunk and mixed. ``query`` or ``recon`` may be ``None`` when every δ
    uses only the other (δ = 1 or δ = 0 respectively). ``gallery`` must be normalised.
    """
    ref = query if query is not None else recon
    if ref is None:
        raise ValueError("need a query or a reconstruction")
    if (query is None and any(d != 1 for d in deltas)) or (recon is None and any(d != 0 for d in deltas)):
        raise ValueError("a δ needs the input that is missing")
    n, g = ref.shape[0], gallery.shape[0]
    out = torch.empty(len(deltas), n, dtype=torch.long)
    step = chunk_rows(g)
    buf = torch.empty(min(step, n), g)
    work = torch.empty(min(step, n), g)
    for s in range(0, n, step):
        t = true_idx[s: s + step]
        a = query[s: s + step] @ gallery.T if query is not None else None
        b = recon[s: s + step] @ gallery.T if recon is not None else None
        if a is not None and b is not None:
            b -= a  # scores(δ) = a + δ·(b − a): one fused pass per δ
        for i, d in enumerate(deltas):
            if a is None or b is None:
                scores = a if a is not None else b
            elif d == 0:
                scores = a
            else:
                scores = torch.add(a, b, alpha=float(d), out=buf[: len(t)])
            out[i, s: s + step] = rank_from_scores(scores, t, work)
    return out


def _rank_faiss(q: torch.Tensor, g: torch.Tensor, t: torch.Tensor, max_rank: int) -> torch.Tensor:
    import faiss  # optional dependency: pip install prom3e[faiss]

    index = faiss.IndexFlatIP(g.shape[1])
    index.add(np.ascontiguousarray(g.numpy()))
    k = min(max_rank, g.shape[0])
    _, found = index.search(np.ascontiguousarray(q.numpy()), k)
    hit = torch.from_numpy(found) == t[:, None]
    first = hit.float().argmax(1) + 1
    ranks = torch.where(hit.any(1), first, torch.full_like(first, k + 1)).long()
    ranks[~torch.isfinite(q).all(1)] = g.shape[0]  # NaN is a miss (faiss would rank it anywhere)
    return ranks


def recall_metrics(ranks: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float | None]:
    """``r{k}`` = fraction with rank ≤ k; ``median_rank``; ``mrr`` (:func:`prom3e.metrics.retrieval_summary`)."""
    return retrieval_summary(ranks, ks)


def query_mean(raw: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
    """The δ = 0 query: the normalised mean of the visible modalities' normalised embeddings."""
    return l2n(torch.stack([l2n(r) for r in raw]).mean(0))


def choose_delta(query: torch.Tensor | None, recon: torch.Tensor, gallery: torch.Tensor,
                 true_idx: torch.Tensor, grid: Sequence[float] = DELTA_GRID) -> tuple[float, list[float]]:
    """The δ of ``grid`` with the best R@1 (then MRR, then the smaller δ) and R@1 per δ.

    Without a usable raw query (``None``: dims differ from the target's) δ is 1.
    """
    if query is None or len(true_idx) == 0:
        return 1.0, []
    ranks = ranks_for_deltas(query, recon, gallery, true_idx, grid).double()
    r1 = (ranks <= 1).double().mean(1)
    mrr = (1.0 / ranks).mean(1)  # prom3e.metrics' definitions, for every δ at once
    best = max(range(len(grid)), key=lambda i: (float(r1[i]), float(mrr[i]), -grid[i]))
    return float(grid[best]), [float(v) for v in r1]


@dataclass
class PairData:
    """One split's inputs for a (visible set, target) pair (all float32, rows aligned)."""

    query: torch.Tensor | None  # [Q, d] δ = 0 query (None when dims differ from the target's)
    recon: torch.Tensor  # [Q, d] reconstruction of the target
    true: torch.Tensor  # [Q] index of each query's true item in the gallery
    gallery: torch.Tensor  # [G, d] normalised distinct target embeddings


def evaluate_pair(fit: PairData, test: PairData, grid: Sequence[float] = DELTA_GRID,
                  ks: Sequence[int] = KS) -> tuple[dict, torch.Tensor]:
    """Metrics for one pair: δ from ``fit``; cross / recon / inversion on ``test``.

    Returns (metrics, test ranks at the chosen δ).
    """
    delta, r1_grid = choose_delta(fit.query, fit.recon, fit.gallery, fit.true, grid)
    deltas = (0.0, 1.0, delta) if test.query is not None else (1.0, 1.0, 1.0)
    ranks = ranks_for_deltas(test.query, test.recon, test.gallery, test.true, deltas)
    out: dict = {"n_query": int(test.true.numel()), "n_gallery": int(test.gallery.shape[0]),
                 "delta": delta, "n_nonfinite": int((~torch.isfinite(test.recon).all(1)).sum())}
    for name, r in zip(("cross", "reconstruction", "inversion"), ranks, strict=True):
        m = recall_metrics(r, ks)
        if name == "cross" and test.query is None:
            m = dict.fromkeys(m)
        out |= {f"{k}_{name}": v for k, v in m.items()}
    out["chance_r1"] = 1.0 / max(1, test.gallery.shape[0])
    out["r1_by_delta_fit"] = r1_grid
    return out, ranks[2]
