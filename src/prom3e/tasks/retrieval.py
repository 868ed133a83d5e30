"""Cross-modal retrieval and modality inversion (δ-mixing), batched on torch.

For a query row with visible modalities V and a target modality t, the query vector is
``q' = (1 − δ)·f_V + δ·f̂_t(V)``, where ``f_V`` is the (normalised mean) raw embedding of
the visible modalities and ``f̂_t(V)`` the model's reconstruction of t. δ = 0 is plain
cross-modal retrieval (TaxaBind / ImageBind), δ = 1 reconstruction only; modality
inversion picks δ on a validation split. The gallery holds real t-embeddings; scores are
inner products with the L2-normalised gallery (so cosine for a fixed query).

**Rank of the true item** (1-based) = 1 + #items scoring strictly higher + #items scoring
exactly the same with a smaller gallery index: a deterministic tie rule that gives no
credit to degenerate (constant) scores. The true item's score is read from the same score
matrix as the others, so it is never compared against a re-computed copy of itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prom3e.tasks.common import l2n

DELTA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
KS: tuple[int, ...] = (1, 5, 10)
_BUDGET = 1 << 22  # score-matrix elements per chunk (16 MiB of float32)


def _chunk_rows(n_gallery: int, n_views: int = 1) -> int:
    return max(1, _BUDGET // max(1, n_gallery * n_views))


def _count_rank(scores: torch.Tensor, true_idx: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
    """``scores [c, G]``, ``true_idx [c]`` → 1-based ranks ``[c]`` (tie rule: module doc).

    Counting in float arithmetic (4 passes) is several times faster than boolean sums:
    with t = sign(score − true), #higher = (Σt + Σ|t|)/2 and #equal = G − Σ|t|.
    """
    c, g = scores.shape
    true = scores.gather(1, true_idx[:, None])
    work = torch.empty(c, g) if work is None else work[:c]
    acc = torch.float64 if g >= 1 << 24 else torch.float32  # exact integer counts
    t = torch.sub(scores, true, out=work).sign_()
    s_sign = t.sum(1, dtype=acc)
    s_abs = t.abs_().sum(1, dtype=acc)
    higher = ((s_sign + s_abs) / 2).long()
    tied = ((g - s_abs) > 1).nonzero()[:, 0]  # equal to the true score, besides itself: rare
    if len(tied):
        before = (scores[tied] == true[tied]) & (torch.arange(g) < true_idx[tied, None])
        higher[tied] += before.sum(1)
    return higher + 1


def rank_of_true(queries: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray,
                 true_idx: torch.Tensor | np.ndarray, backend: str = "torch",
                 max_rank: int = 1000) -> torch.Tensor:
    """1-based rank of ``gallery[true_idx[i]]`` for each query ``i`` (``int64 [Q]``).

    ``backend="torch"`` (default) is exact: chunked matmul and counting, memory bounded.
    ``backend="faiss"`` uses a flat inner-product index for the top ``max_rank`` items
    (ranks beyond are reported as ``max_rank + 1``), for galleries too large to scan here.
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
    step = _chunk_rows(g)
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
            out[i, s: s + step] = _count_rank(scores, t, work)
    return out


def _rank_faiss(q: torch.Tensor, g: torch.Tensor, t: torch.Tensor, max_rank: int) -> torch.Tensor:
    import faiss  # optional dependency: pip install prom3e[faiss]

    index = faiss.IndexFlatIP(g.shape[1])
    index.add(np.ascontiguousarray(g.numpy()))
    k = min(max_rank, g.shape[0])
    _, found = index.search(np.ascontiguousarray(q.numpy()), k)
    hit = torch.from_numpy(found) == t[:, None]
    first = hit.float().argmax(1) + 1
    return torch.where(hit.any(1), first, torch.full_like(first, k + 1)).long()


def recall_metrics(ranks: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float | None]:
    """``r{k}`` = fraction with rank ≤ k; ``median_rank``; ``mrr`` (mean reciprocal rank)."""
    r = ranks.double()
    if r.numel() == 0:
        return {**{f"r{k}": None for k in ks}, "median_rank": None, "mrr": None}
    out: dict[str, float | None] = {f"r{k}": float((r <= k).double().mean()) for k in ks}
    out["median_rank"] = float(r.median())  # lower median for even counts: deterministic
    out["mrr"] = float((1.0 / r).mean())
    return out


def dedup_gallery(target: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct target vectors (normalised) and each row's index among them.

    Identical vectors (one text embedding per class, one satellite tile per grid cell) are
    one gallery item: retrieving any copy of the true vector counts as a hit.
    """
    x = np.ascontiguousarray(np.asarray(target, dtype=np.float32))
    if len(x) == 0:
        return torch.zeros(0, x.shape[1] if x.ndim == 2 else 0), torch.zeros(0, dtype=torch.long)
    uniq, inv = np.unique(x, axis=0, return_inverse=True)
    return l2n(uniq), torch.from_numpy(inv.reshape(-1).astype(np.int64))


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
    mrr = (1.0 / ranks).mean(1)
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
                 "delta": delta}
    for name, r in zip(("cross", "reconstruction", "inversion"), ranks, strict=True):
        m = recall_metrics(r, ks)
        if name == "cross" and test.query is None:
            m = dict.fromkeys(m)
        out |= {f"{k}_{name}": v for k, v in m.items()}
    out["chance_r1"] = 1.0 / max(1, test.gallery.shape[0])
    out["r1_by_delta_fit"] = r1_grid
    return out, ranks[2]
