"""Linear probing: multinomial logistic regression on frozen features.

Features are standardised (mean/std of the training rows), then fitted with scikit-learn's
``LogisticRegression`` (lbfgs, L2, ``C``); the score is accuracy and macro-F1 on held-out
rows. Deterministic: lbfgs has no randomness and the split is seeded.
"""

from __future__ import annotations

import warnings

import numpy as np

from prom3e.tasks.common import stratified_split


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 C: float = 1.0, max_iter: int = 300) -> dict[str, float | int | None]:
    """Fit on the training rows, score on the test rows: ``acc``, ``macro_f1`` and counts.

    Macro-F1 averages over the classes present in ``y_test``. With a single training class
    the probe predicts that class (no fit); with no test rows the scores are ``None``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    x_train = np.asarray(x_train, np.float32)
    x_test = np.asarray(x_test, np.float32)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    out: dict[str, float | int | None] = {
        "n_train": len(y_train), "n_test": len(y_test),
        "n_classes": len(np.unique(y_train)), "acc": None, "macro_f1": None,
    }
    if len(y_test) == 0 or len(y_train) == 0:
        return out
    classes = np.unique(y_train)
    if len(classes) == 1:
        pred = np.full(len(y_test), classes[0])
    else:
        mean = x_train.mean(0)
        std = x_train.std(0) + 1e-6
        clf = LogisticRegression(C=C, max_iter=max_iter, tol=1e-4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit((x_train - mean) / std, y_train)
        pred = clf.predict((x_test - mean) / std)
    out["acc"] = float((pred == y_test).mean())
    out["macro_f1"] = float(f1_score(y_test, pred, labels=np.unique(y_test), average="macro",
                                     zero_division=0))
    return out


def probe(x: np.ndarray, y: np.ndarray, test_frac: float = 0.25, seed: int = 0,
          C: float = 1.0) -> dict[str, float | int | None]:
    """Stratified split of ``(x, y)`` then :func:`linear_probe`.

    Each class with ≥ 2 rows keeps at least one row on each side; singleton classes stay in
    training (so rare classes never crash the split). Rows with ``y < 0`` (integer labels)
    are dropped.
    """
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.integer):
        keep = y >= 0
        x, y = np.asarray(x)[keep], y[keep]
    _, codes = np.unique(y, return_inverse=True)
    tr, te = stratified_split(codes.reshape(-1), fit_frac=1 - test_frac, seed=seed)
    return linear_probe(np.asarray(x)[tr], y[tr], np.asarray(x)[te], y[te], C=C)
