"""The evaluation metrics, each defined once: retrieval ranks, R@k, MRR, median rank, top-k
and balanced accuracy, macro-F1, AUROC, Spearman.

**One tie rule, everywhere.** The rank of the true item among ``G`` candidates (gallery
items, or classes) is ``1 + #{other candidates scoring ≥ the true one}``: a tie counts
against the query, so a constant (collapsed) score gets the worst rank, never a hit.
Identical gallery vectors are one item — merge them first with :func:`dedup_gallery`, so
retrieving any copy of the true vector is a hit. A class prediction is the unique
best-scoring class; a tied top is no prediction (a miss), consistent with rank 1.

**Non-finite scores are misses.** A query whose true-item score is NaN or ±inf gets the
worst rank ``G``; a NaN score of another candidate never ranks above the true one; a row of
class scores with any non-finite value predicts nothing. So a model that outputs NaN scores
0, never 1.

Score matrices are built a chunk of query rows at a time (about ``CHUNK`` elements), so
memory stays bounded at any gallery size. Counting, AUROC, F1 and Spearman use NumPy,
scikit-learn and SciPy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

CHUNK = 1 << 22  # score-matrix elements per chunk (16 MiB of float32)
Array = torch.Tensor | np.ndarray


def _tensor(x: Array, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=dtype)


def l2n(x: Array) -> torch.Tensor:
    """Rows scaled to unit L2 norm as float32 (zero rows stay zero; NaN rows stay NaN).

    Each row is divided by its largest absolute value first, so a huge finite row (1e30)
    is normalised correctly instead of overflowing to zero.
    """
    t = _tensor(x)
    scale = t.abs().amax(-1, keepdim=True) if t.shape[-1] else torch.ones(t.shape[:-1] + (1,))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.nn.functional.normalize(t / scale, dim=-1)


def dedup_gallery(target: Array) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct target vectors (normalised) and each row's index among them.

    Identical vectors (one text embedding per class, one satellite tile per grid cell) are
    one gallery item: retrieving any copy of the true vector counts as a hit.
    """
    x = np.ascontiguousarray(np.asarray(target, dtype=np.float32))
    if len(x) == 0:
        return torch.zeros(0, x.shape[1] if x.ndim == 2 else 0), torch.zeros(0, dtype=torch.long)
    uniq, inv = np.unique(x, axis=0, return_inverse=True)
    return l2n(uniq), torch.from_numpy(inv.reshape(-1).astype(np.int64))


def chunk_rows(n_candidates: int, budget: int | None = None) -> int:
    """Query rows per chunk so that a ``[rows, n_candidates]`` score matrix fits ``budget``
    elements (default :data:`CHUNK`; at least one row)."""
    return max(1, (budget or CHUNK) // max(1, n_candidates))


# --- ranks -----------------------------------------------------------------------------------

def rank_from_scores(scores: torch.Tensor, true_idx: torch.Tensor, work: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """``scores [c, G]`` and the true column of each row ``[c]`` → 1-based ranks ``int64 [c]``.

    The tie rule and the non-finite rule of the module doc. Counting in float arithmetic is
    several times faster than boolean sums: with ``t = sign(score − true)``, the number of
    candidates below the true one is ``(Σ|t| − Σt) / 2`` and rank = G − that; rows with a tie
    or a NaN (``sign`` gives 0 for both) are recounted exactly.
    """
    c, g = scores.shape
    if c == 0:
        return torch.zeros(0, dtype=torch.long)
    true = scores.gather(1, true_idx[:, None].long())
    buf = torch.empty(c, g) if work is None else work[:c]
    acc = torch.float64 if g >= 1 << 24 else torch.float32  # exact integer counts
    t = torch.sub(scores.float(), true.float(), out=buf).sign_()  # sign(NaN) = 0: looks tied
    s_sign = t.sum(1, dtype=acc)
    s_abs = t.abs_().sum(1, dtype=acc)
    below = (s_abs - s_sign) / 2
    check = ((g - s_abs) > 1).nonzero()[:, 0]  # a tie or a NaN besides the true item: rare, count exactly
    if len(check):
        sc, tr = scores[check].float(), true[check].float()
        below[check] = ((sc < tr) | torch.isnan(sc)).sum(1).to(acc)
    ranks = (g - below).long()
    ranks[~torch.isfinite(true[:, 0].float())] = g  # a non-finite true score: the worst rank
    return ranks


def retrieval_ranks(queries: Array, gallery: Array, true_idx: Array) -> torch.Tensor:
    """Rank of ``gallery[true_idx[i]]`` for each query ``i`` by inner product (``int64 [Q]``).

    Chunked over queries: memory is ``O(chunk · G)``, never ``Q × G``. Normalise both sides
    first (:func:`l2n`) for cosine similarity.
    """
    q, g, t = _tensor(queries), _tensor(gallery), _tensor(true_idx, torch.long)
    out = torch.empty(len(q), dtype=torch.long)
    step = chunk_rows(len(g))
    work = torch.empty(min(step, len(q)), len(g))
    for s in range(0, len(q), step):
        out[s:s + step] = rank_from_scores(q[s:s + step] @ g.T, t[s:s + step], work)
    return out


def label_ranks(queries: Array, gallery: Array, query_labels: Array, gallery_labels: Array) -> torch.Tensor:
    """Rank of the best same-label gallery item for each query: ``1 + #{other-label items
    scoring ≥ it}`` (chunked; the tie and non-finite rules as :func:`rank_from_scores`)."""
    q, g = _tensor(queries), _tensor(gallery)
    ql, gl = _tensor(query_labels, torch.long), _tensor(gallery_labels, torch.long)
    out = torch.empty(len(q), dtype=torch.long)
    step = chunk_rows(len(g))
    for s in range(0, len(q), step):
        scores = q[s:s + step] @ g.T
        same = ql[s:s + step, None] == gl[None, :]
        best = scores.masked_fill(~same, float("-inf")).nan_to_num(nan=float("-inf")).amax(1)
        best = torch.where(same.any(1) & torch.isfinite(best), best, torch.full_like(best, float("nan")))
        others = scores.masked_fill(same, float("-inf"))
        above = (others >= best[:, None]).sum(1)
        out[s:s + step] = torch.where(torch.isfinite(best), above + 1, torch.full_like(above, len(g)))
    return out


# --- retrieval summaries ------------------------------------------------------------------

def recall_at_k(ranks: Array, k: int) -> float | None:
    """Fraction of queries with rank ≤ k (``None`` without queries)."""
    r = _tensor(ranks, torch.float64)
    return float((r <= k).double().mean()) if r.numel() else None


def mrr(ranks: Array) -> float | None:
    """Mean reciprocal rank (``None`` without queries)."""
    r = _tensor(ranks, torch.float64)
    return float((1.0 / r).mean()) if r.numel() else None


def median_rank(ranks: Array) -> float | None:
    """Median rank (the lower median for even counts: deterministic; ``None`` without queries)."""
    r = _tensor(ranks, torch.float64)
    return float(r.median()) if r.numel() else None


def retrieval_summary(ranks: Array, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float | None]:
    """``r{k}`` for each k, ``median_rank`` and ``mrr``."""
    return {**{f"r{k}": recall_at_k(ranks, k) for k in ks}, "median_rank": median_rank(ranks), "mrr": mrr(ranks)}


# --- classification ----------------------------------------------------------------------------

def predict(scores: Array) -> np.ndarray:
    """The unique best-scoring column of each row; −1 (no prediction) for a tied top or a row
    with a non-finite score."""
    s = _tensor(scores)
    if s.shape[0] == 0 or s.shape[1] == 0:
        return np.full(s.shape[0], -1, np.int64)
    top, arg = s.max(1)
    unique = (s == top[:, None]).sum(1) == 1
    ok = torch.isfinite(s).all(1) & unique
    return torch.where(ok, arg, torch.full_like(arg, -1)).numpy().astype(np.int64)


def topk_accuracy(scores: Array, true_col: Array, k: int = 1) -> float | None:
    """Fraction of rows whose true column ranks ≤ k (the tie rule); ``true_col`` −1 is a miss."""
    s, t = _tensor(scores), _tensor(true_col, torch.long)
    if len(t) == 0:
        return None
    has = t >= 0
    ranks = torch.full((len(t),), s.shape[1] + 1, dtype=torch.long)
    if has.any() and s.shape[1]:
        ranks[has] = rank_from_scores(s[has], t[has])
    return float((ranks <= k).double().mean())


def accuracy(y_true: Array, y_pred: Array) -> float | None:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else None


def balanced_accuracy(y_true: Array, y_pred: Array) -> float | None:
    """Mean over the classes of ``y_true`` of their recall (scikit-learn's balanced accuracy)."""
    from sklearn.metrics import balanced_accuracy_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return None
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" (e.g. −1): fine
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y_true, y_pred))


def macro_f1(y_true: Array, y_pred: Array) -> float | None:
    """Macro-F1 over the classes of ``y_true`` (scikit-learn's; −1 predictions are misses)."""
    from sklearn.metrics import f1_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return None
    return float(f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))


def auroc(scores: Array, y: Array, classes: Array | None = None) -> float | None:
    """One-vs-rest AUROC, macro over the classes of ``y`` that have positives and negatives.

    ``scores [N, C]``: column ``j`` scores class ``classes[j]`` (default ``j``). Ties count
    half (Mann–Whitney, as scikit-learn's ``roc_auc_score``); a non-finite score ranks a
    positive last and a negative first (a miss either way). ``None`` when undefined.
    """
    from scipy.stats import rankdata

    s = np.asarray(scores, np.float64)
    y = np.asarray(y)
    classes = np.arange(s.shape[1]) if classes is None else np.asarray(classes)
    if len(y) == 0:
        return None
    col = {int(c): j for j, c in enumerate(classes)}
    present = [c for c in np.unique(y) if int(c) in col]
    pos = y[:, None] == np.asarray(present)[None, :]
    n_pos, n_neg = pos.sum(0), len(y) - pos.sum(0)
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return None
    cols = s[:, [col[int(c)] for c in present]][:, ok]
    pos = pos[:, ok]
    bad = ~np.isfinite(cols)
    cols = np.where(bad & pos, -np.inf, np.where(bad, np.inf, cols))
    ranks = rankdata(cols, axis=0)
    auc = ((ranks * pos).sum(0) - n_pos[ok] * (n_pos[ok] + 1) / 2) / (n_pos[ok] * n_neg[ok])
    return float(auc.mean())


# --- correlation -------------------------------------------------------------------------------

def average_ranks(x: Array) -> np.ndarray:
    """1-based ranks, ties given their average rank (``scipy.stats.rankdata``)."""
    from scipy.stats import rankdata

    return rankdata(np.asarray(x))


def spearman(a: Array, b: Array) -> float | None:
    """Spearman rank correlation over the pairs where both are finite (average ranks for
    ties); ``None`` with fewer than 3 pairs or a constant side."""
    from scipy.stats import spearmanr

    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    rho = spearmanr(a[ok], b[ok]).statistic
    return float(rho) if np.isfinite(rho) else None
