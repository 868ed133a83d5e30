"""Zero-shot classification against class prototypes of a text-like modality.

A *class modality* holds one embedding per class (e.g. the taxonomic text
"Plantae … Genus species"). A query from visible modalities V — the raw mean (δ = 0),
the reconstructed class-modality embedding (δ = 1), or their δ-mix — is scored against
every class prototype by inner product; the best-scoring class is the prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from prom3e import metrics
from prom3e.metrics import l2n
from prom3e.tasks.retrieval import DELTA_GRID


def detect_class_modality(features: Sequence[np.ndarray], present: np.ndarray, names: Sequence[str],
                          y: np.ndarray, min_share: float = 0.95) -> str | None:
    """The first modality that is (almost) a function of the label, with few distinct values.

    Over labelled rows where the modality is present: it qualifies when the number of
    distinct vectors is at most the number of classes and the most common vector of each
    class covers ≥ ``min_share`` of that class's rows. ``None`` when nothing qualifies.
    """
    for m, name in enumerate(names):
        rows = np.flatnonzero(present[:, m] & (y >= 0))
        if len(rows) < 2:
            continue
        _, vid = np.unique(np.ascontiguousarray(features[m][rows]), axis=0, return_inverse=True)
        vid = vid.reshape(-1)
        n_cls = len(np.unique(y[rows]))
        if vid.max() + 1 > n_cls or n_cls < 2:
            continue
        # rows whose (class, vector) pair is the most common pair of their class
        pair = y[rows].astype(np.int64) * (vid.max() + 1) + vid
        pairs, counts = np.unique(pair, return_counts=True)
        cls_of_pair = pairs // (vid.max() + 1)
        best = np.zeros(int(y.max()) + 1, np.int64)
        np.maximum.at(best, cls_of_pair, counts)
        if best.sum() >= min_share * len(rows):
            return str(name)
    return None


def class_prototypes(emb: np.ndarray | torch.Tensor, y: np.ndarray, n_classes: int) -> tuple[torch.Tensor, np.ndarray]:
    """Mean normalised embedding per class (normalised): (``[C', d]``, the C' class codes).

    Rows with ``y < 0`` are ignored; classes without any row get no prototype.
    """
    y = np.asarray(y)
    ok = y >= 0
    x = l2n(emb)[torch.from_numpy(ok)]
    yy = torch.from_numpy(y[ok].astype(np.int64))
    sums = torch.zeros(n_classes, x.shape[1]).index_add_(0, yy, x)
    has = np.bincount(y[ok], minlength=n_classes) > 0
    return l2n(sums[torch.from_numpy(has)]), np.flatnonzero(has)


def class_scores(query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """``[Q, C]`` inner products with the prototypes (cosine for unit-norm queries)."""
    return query @ protos.T


def _true_columns(y: np.ndarray, proto_classes: np.ndarray) -> torch.Tensor:
    """Column of each row's class among the prototypes (−1: its class has no prototype)."""
    col = {int(c): j for j, c in enumerate(np.asarray(proto_classes))}
    return torch.tensor([col.get(int(v), -1) for v in np.asarray(y)], dtype=torch.long)


def classify_metrics(scores: torch.Tensor, y: np.ndarray, proto_classes: np.ndarray,
                     ks: Sequence[int] = (1, 5)) -> dict[str, float | None]:
    """Top-k accuracy and macro accuracy (mean per-class recall over the classes in ``y``).

    ``y`` are class codes; ``proto_classes[j]`` is the class of prototype column j. A row
    whose class has no prototype is always wrong. Ties and NaN: :mod:`prom3e.metrics`' rules
    (a tie with the true class, or a non-finite score, is a miss).
    """
    y = np.asarray(y)
    if len(y) == 0:
        return {**{f"top{k}": None for k in ks}, "macro": None}
    true = _true_columns(y, proto_classes)
    out: dict[str, float | None] = {f"top{k}": metrics.topk_accuracy(scores, true, k) for k in ks}
    pred_col = metrics.predict(scores)
    pred = np.where(pred_col >= 0, np.asarray(proto_classes)[np.maximum(pred_col, 0)], -1)
    out["macro"] = metrics.balanced_accuracy(y, pred)
    return out


def choose_delta_zeroshot(query: torch.Tensor | None, recon: torch.Tensor, protos: torch.Tensor,
                          y: np.ndarray, proto_classes: np.ndarray,
                          grid: Sequence[float] = DELTA_GRID) -> tuple[float, list[float]]:
    """δ of ``grid`` with the best top-1 accuracy on validation rows (ties: smaller δ)."""
    if query is None or len(y) == 0:
        return 1.0, []
    true = _true_columns(y, proto_classes)
    a, b = class_scores(query, protos), class_scores(recon, protos)
    acc = [metrics.topk_accuracy((1 - d) * a + d * b, true, 1) for d in grid]
    best = max(range(len(grid)), key=lambda i: (acc[i], -grid[i]))
    return float(grid[best]), [float(v) for v in acc]


def evaluate_set(fit_query: torch.Tensor | None, fit_recon: torch.Tensor, fit_y: np.ndarray,
                 test_query: torch.Tensor | None, test_recon: torch.Tensor, test_y: np.ndarray,
                 protos: torch.Tensor, proto_classes: np.ndarray,
                 grid: Sequence[float] = DELTA_GRID) -> dict:
    """Zero-shot metrics of one visible set: cross (δ = 0), recon (δ = 1), inversion (fit δ)."""
    delta, acc_grid = choose_delta_zeroshot(fit_query, fit_recon, protos, fit_y, proto_classes, grid)
    out: dict = {"n": len(test_y), "delta": delta}
    for name, dlt in (("cross", 0.0), ("reconstruction", 1.0), ("inversion", delta)):
        if test_query is None:
            q = test_recon if name != "cross" else None
        else:
            q = (1 - dlt) * test_query + dlt * test_recon
        m = classify_metrics(class_scores(q, protos), test_y, proto_classes) if q is not None else \
            dict.fromkeys(("top1", "top5", "macro"))
        out |= {f"{k}_{name}": v for k, v in m.items()}
    out["top1_by_delta_fit"] = acc_grid
    return out
