"""Modality gap: how far apart, and how separable, two clouds of embeddings are.

For two clouds A and B (rows L2-normalised):
- ``centroid_distance`` = ‖mean(A) − mean(B)‖₂ (0 = same centre; at most 2);
- ``separability`` = held-out accuracy of a linear classifier (shrinkage Fisher LDA) telling
  A from B, on equal numbers of rows from each (0.5 = indistinguishable, 1 = a clean cut).

The evaluation compares three representations of the same test rows: *raw* inputs
(f_a vs f_b), *hidden* states (μ from {a} alone vs μ from {b} alone), and
*reconstructions* (f̂_b decoded from {a} vs the real f_b).
"""

from __future__ import annotations

import numpy as np
import torch

from prom3e.metrics import l2n
from prom3e.tasks.common import mean_or_none


def centroid_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    """‖mean(â) − mean(b̂)‖₂ of the normalised rows; ``None`` if shapes are incompatible."""
    if len(a) == 0 or len(b) == 0 or a.shape[1] != b.shape[1]:
        return None
    return float((l2n(a).double().mean(0) - l2n(b).double().mean(0)).norm())


def separability(a: np.ndarray, b: np.ndarray, seed: int = 0, max_rows: int = 1000,
                 shrinkage: float = 0.1) -> float | None:
    """Held-out accuracy of a linear classifier of A vs B (balanced; half fits, half tests).

    The classifier is Fisher's linear discriminant with shrinkage (closed form, so the
    score is cheap and exactly reproducible): ``w = (Σ + s·tr(Σ)/d·I)⁻¹ (μ_B − μ_A)``,
    threshold halfway between the projected class means.
    """
    if len(a) < 4 or len(b) < 4 or a.shape[1] != b.shape[1]:
        return None
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b), max_rows)
    a = l2n(a).double()[np.sort(rng.permutation(len(a))[:n])]
    b = l2n(b).double()[np.sort(rng.permutation(len(b))[:n])]
    h = n // 2
    ma, mb = a[:h].mean(0), b[:h].mean(0)
    centred = torch.cat([a[:h] - ma, b[:h] - mb])
    cov = centred.T @ centred / max(1, len(centred) - 2)
    d = cov.shape[0]
    cov += (shrinkage * float(cov.trace()) / d + 1e-12) * torch.eye(d, dtype=cov.dtype)
    w = torch.linalg.solve(cov, mb - ma)
    thr = w @ (ma + mb) / 2
    correct = torch.cat([a[h:] @ w < thr, b[h:] @ w >= thr])
    return float(correct.double().mean())


def compare(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, float | None]:
    return {"centroid_distance": centroid_distance(a, b), "separability": separability(a, b, seed)}


def summarize(pairs: list[dict]) -> dict:
    """Mean centroid distance and separability over the pairs of one representation."""
    return {
        "centroid_distance": mean_or_none([p["centroid_distance"] for p in pairs]),
        "separability": mean_or_none([p["separability"] for p in pairs]),
        "pairs": pairs,
    }


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Rows projected on their first two principal components (sign fixed: deterministic)."""
    xc = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    xc = xc - xc.mean(0)
    _, vecs = torch.linalg.eigh(xc.T @ xc)  # ascending eigenvalues: d × d, cheap for d ≪ n
    v = vecs[:, -2:].flip(1).T
    v = v * torch.sign(v[torch.arange(len(v)), v.abs().argmax(1)])[:, None]
    return (xc @ v.T).numpy()


def projections(clouds: dict[str, dict[str, np.ndarray]], per_modality: int = 300, seed: int = 0) -> dict:
    """2-D PCA of each representation's clouds, for the gap figure.

    ``clouds[rep][modality]`` are the rows of one representation (``raw``, ``hidden``,
    ``reconstruction``). Up to ``per_modality`` rows of each modality (seeded) are projected
    jointly. Returns ``{"modalities": every modality name (sorted), "panels": {rep: {modality:
    xy [n, 2]}, or None when the modalities' dims differ (no joint projection)}, "variance_share":
    {rep: the share of the variance each of the two components holds}}``.
    """
    reps = [r for r in ("raw", "hidden", "reconstruction") if clouds.get(r)]
    rng = np.random.default_rng(seed)
    panels: dict[str, dict[str, np.ndarray] | None] = {}
    share: dict[str, np.ndarray] = {}
    for rep in reps:
        parts = {m: x for m, x in clouds[rep].items() if len(x)}
        if len({x.shape[1] for x in parts.values()}) != 1:
            panels[rep] = None
            continue
        take = {m: x[np.sort(rng.permutation(len(x))[:per_modality])] for m, x in parts.items()}
        points = np.concatenate(list(take.values()))
        xy = pca_2d(points)
        total = float(points.var(0).sum())
        share[rep] = xy.var(0) / total if total > 0 else np.full(2, np.nan)
        ends = np.cumsum([len(x) for x in take.values()])
        panels[rep] = dict(zip(take, np.split(xy, ends[:-1]), strict=True))
    return {"modalities": sorted({m for r in reps for m in clouds[r]}), "panels": panels, "variance_share": share}
