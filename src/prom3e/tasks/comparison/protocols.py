"""The benchmark's data protocol: splits, missingness tables, visible subsets, label leaks.

- :func:`make_split`: per seed, a stratified train / test split (``train_frac`` of each
  class to train) and a stratified **validation** split inside the training rows
  (``val_frac`` of them): every choice (hyper-parameters, best epoch) is made on it, never
  on the test rows. A table's own split column (``train``/``val``/``test``) can fix it.
- :func:`eta_mask` (MAPs/AOEPT): a fixed, seeded missingness table — each row is
  incomplete with probability η and then loses k ~ U{1, …, n_present − 1} of its present
  modalities (for two modalities exactly MAPs' "both" setting).
- :func:`visible_subsets`: every non-empty visible set S, on the test rows that have all of S.
- :func:`leaking_modalities`: modalities that are (almost) one vector per class (e.g. a
  taxonomic text per species) — as a classifier input they *are* the label; the benchmark
  leaves them out by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError

SPLIT_NAMES = ("train", "val", "test")


def eta_mask(present: np.ndarray, eta: float, seed: int) -> np.ndarray:
    """A fixed missingness table: rows incomplete with prob. η lose k ~ U{1..n−1} present modalities."""
    rng = np.random.default_rng([seed, int(eta * 1000), 7])
    n_present = present.sum(1)
    hit = (rng.random(len(present)) < eta) & (n_present >= 2)
    k = np.floor(rng.random(len(present)) * (n_present - 1)).astype(int) + 1
    scores = np.where(present, rng.random(present.shape), 2.0)
    rank = scores.argsort(1).argsort(1)
    drop = hit[:, None] & (rank < k[:, None]) & present
    return present & ~drop


def hide(table: ModalTable, visible: np.ndarray) -> ModalTable:
    """The table with only ``visible`` kept (zeros elsewhere): what a method may train on."""
    feats = [np.where(visible[:, m:m + 1], f, 0).astype(np.float32) for m, f in enumerate(table.features)]
    return ModalTable(table.modalities, feats, visible, dict(table.meta), table.source)


def nonempty_rows(table: ModalTable) -> np.ndarray:
    """Indices of the rows that have at least one modality (refused when none has)."""
    rows = np.flatnonzero(table.present.any(1))
    if len(rows) == 0:
        raise Prom3eError(f"{table.source}: no row has any of the modalities {', '.join(table.modalities)}")
    return rows


LEAK_SHARE = 0.95  # a class's most common vector covers at least this share of its rows
LEAK_DISTINCT = 2.0  # ... and there are at most this many distinct vectors per class


def leaking_modalities(table: ModalTable, y: np.ndarray, rows: np.ndarray) -> list[str]:
    """Modalities that are (almost) one vector per class on ``rows`` (training rows): label leaks.

    Over the rows where the modality is present: at most ``LEAK_DISTINCT`` × the number of
    classes distinct vectors, and each class's most common vector covers ≥ ``LEAK_SHARE`` of
    the class's rows. A taxonomic text per species qualifies even when a few rows carry a
    second text or a few species share one (birdclef22's `taxonomy`: 158 vectors for 152
    species); a continuous modality has far more distinct vectors than classes.
    """
    out = []
    for m, name in enumerate(table.modalities):
        sel = rows[table.present[rows, m] & (y[rows] >= 0)]
        if len(sel) < 2:
            continue
        yc = y[sel].astype(np.int64)
        n_cls = len(np.unique(yc))
        _, vid = np.unique(np.ascontiguousarray(table.features[m][sel]), axis=0, return_inverse=True)
        vid = vid.reshape(-1)
        n_vec = int(vid.max()) + 1
        if n_cls < 2 or n_vec > LEAK_DISTINCT * n_cls:
            continue
        pairs, counts = np.unique(yc * n_vec + vid, return_counts=True)
        best = np.zeros(int(yc.max()) + 1, np.int64)
        np.maximum.at(best, pairs // n_vec, counts)  # each class's most common vector
        if best.sum() >= LEAK_SHARE * len(sel):
            out.append(name)
    return out


@dataclass
class Split:
    """Row indices of one seed's train / validation / test split (disjoint)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def make_split(y: np.ndarray, seed: int, train_frac: float = 0.7, val_frac: float = 0.15,
               split_labels: np.ndarray | None = None) -> Split:
    """Stratified train / test, then a stratified validation split inside the training rows.

    ``split_labels`` (a table's split column): rows marked ``train``/``val``/``test`` are
    used as marked (the same split for every seed; without ``val`` rows it is carved out of
    ``train`` with ``val_frac``); any other value is refused.
    """
    from prom3e.tasks.common import stratified_split

    if split_labels is not None:
        lab = np.asarray(split_labels).astype(str)
        bad = sorted(set(np.unique(lab)) - set(SPLIT_NAMES))
        if bad:
            raise Prom3eError(f"split column: unknown value(s) {', '.join(bad[:5])} (want {', '.join(SPLIT_NAMES)})")
        train, val, test = (np.flatnonzero(lab == s) for s in SPLIT_NAMES)
        if len(val) == 0:
            fit, v = stratified_split(y[train], fit_frac=1 - val_frac, seed=seed)
            train, val = train[fit], train[v]
    else:
        train, test = stratified_split(y, fit_frac=train_frac, seed=seed)
        fit, v = stratified_split(y[train], fit_frac=1 - val_frac, seed=seed + 1_000)
        train, val = train[fit], train[v]
    if len(test) == 0 or len(val) == 0 or len(train) < 2:
        raise Prom3eError(f"split: {len(train)} train / {len(val)} validation / {len(test)} test rows; "
                          "need ≥ 2 / ≥ 1 / ≥ 1 (too few rows per class)")
    return Split(np.sort(train), np.sort(val), np.sort(test))


def visible_subsets(present: np.ndarray, y: np.ndarray, modalities: list[str], cap: int, seed: int,
                    max_modalities: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``name → (row positions, visible mask)`` for every non-empty set S (rows having all of S, ≤ ``cap``)."""
    from prom3e.tasks.common import stratified_subsample

    m = len(modalities)
    if m > max_modalities:
        return {}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k in range(1, m + 1):
        for s in combinations(range(m), k):
            cols = np.zeros(m, bool)
            cols[list(s)] = True
            rows = stratified_subsample(np.flatnonzero(present[:, cols].all(1)), y, cap, seed)
            if len(rows):
                out["+".join(modalities[j] for j in s)] = (rows, np.broadcast_to(cols, (len(rows), m)).copy())
    return out
