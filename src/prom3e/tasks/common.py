"""Helpers shared by the evaluation tasks: labels, deterministic splits, small numerics.

Everything here is vectorised over rows and deterministic for a given seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import Any, Protocol

import numpy as np
import torch


class FuserLike(Protocol):
    """What the tasks need from a model (:class:`prom3e.api.Fuser` implements it)."""

    modalities: list[str]
    dims: list[int]

    def encode(self, batch: Any, visible: Sequence[str] | None = None, hidden: bool = False,
               batch_size: int = 1024) -> Any: ...

    def reconstruct(self, batch: Any, targets: Sequence[str] | None = None,
                    visible: Sequence[str] | None = None, n_samples: int = 0, seed: int = 0,
                    batch_size: int = 1024) -> dict[str, torch.Tensor]: ...


def _within_class_position(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random position of each row within its class, and its class size."""
    n = len(y)
    order = np.lexsort((rng.random(n), y))
    ys = y[order]
    _, start, inv, counts = np.unique(ys, return_index=True, return_inverse=True, return_counts=True)
    pos = np.empty(n, np.int64)
    size = np.empty(n, np.int64)
    pos[order] = np.arange(n) - start[inv]
    size[order] = counts[inv]
    return pos, size


def stratified_split(y: np.ndarray, fit_frac: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into (fit, test) index arrays, stratified by ``y`` (any ints; −1 is a stratum).

    A class with ``n ≥ 2`` rows puts ``clip(round(fit_frac·n), 1, n − 1)`` of them in *fit*
    and the rest in *test*; a singleton class goes to *fit*. Same seed, same split.
    """
    y = np.asarray(y)
    pos, size = _within_class_position(y, np.random.default_rng(seed))
    n_fit = np.where(size >= 2, np.clip(np.round(fit_frac * size), 1, size - 1), 1)
    fit = pos < n_fit
    return np.flatnonzero(fit), np.flatnonzero(~fit)


def stratified_subsample(idx: np.ndarray, y: np.ndarray, cap: int | None, seed: int = 0) -> np.ndarray:
    """At most ``cap`` of the rows ``idx``, keeping the class proportions of ``y[idx]`` (sorted)."""
    idx = np.asarray(idx)
    if cap is None or len(idx) <= cap:
        return idx
    rng = np.random.default_rng(seed)
    pos, size = _within_class_position(np.asarray(y)[idx], rng)
    quantile = (pos + rng.random(len(idx))) / size  # evenly spread within each class
    keep = np.argsort(quantile, kind="stable")[:cap]
    return np.sort(idx[keep])


def visible_sets(modalities: Sequence[str], max_size: int) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``modalities`` up to ``max_size`` elements, by size then order."""
    out: list[tuple[str, ...]] = []
    for k in range(1, min(max_size, len(modalities)) + 1):
        out.extend(combinations(modalities, k))
    return out


def jsonable(x: Any, digits: int = 6) -> Any:
    """Nested metrics → JSON-safe values: NaN/inf → None, floats rounded, arrays → lists."""
    if isinstance(x, dict):
        return {str(k): jsonable(v, digits) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v, digits) for v in x]
    if isinstance(x, torch.Tensor):
        return jsonable(x.tolist(), digits)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist(), digits)
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        v = float(x)
        return round(v, digits) if math.isfinite(v) else None
    return x


def mean_or_none(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None
