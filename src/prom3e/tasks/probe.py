"""Linear probing: multinomial logistic regression on frozen features.

Features are standardised (mean/std of the training rows) and fitted by full-batch
L-BFGS on ``mean cross-entropy + ½·λ‖W‖²`` with ``λ = 1 / (C·n_train)`` — the objective
of scikit-learn's ``LogisticRegression(C)`` (lbfgs, L2, unpenalised intercept). The
default solver is a short L-BFGS on torch tensors with the analytic gradient (several
times faster than scikit-learn's on wide token features, same optimum up to the
tolerance); ``solver="sklearn"`` runs scikit-learn itself. Scores: accuracy and macro-F1
on held-out rows (:mod:`prom3e.metrics`: NaN logits predict nothing, a miss).
Deterministic: no randomness in either solver.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from prom3e import metrics
from prom3e.tasks.common import stratified_split


def _softmax_loss_grad(x: torch.Tensor, onehot: torch.Tensor, lam: float, theta: torch.Tensor
                       ) -> tuple[float, torch.Tensor]:
    """Loss and gradient of ``mean CE + ½λ‖W‖²`` at ``theta = [W (d·C), b (C)]`` (analytic)."""
    d, c = x.shape[1], onehot.shape[1]
    w, b = theta[: d * c].view(d, c), theta[d * c:]
    logits = torch.addmm(b, x, w)
    lse = torch.logsumexp(logits, 1)
    loss = (lse - (logits * onehot).sum(1)).mean() + 0.5 * lam * (w * w).sum()
    resid = (torch.exp(logits - lse[:, None]) - onehot) / len(x)
    grad = torch.cat([(x.T @ resid + lam * w).reshape(-1), resid.sum(0)])
    return float(loss), grad


def lbfgs(fun, x0: torch.Tensor, max_iter: int = 50, history: int = 10, gtol: float = 1e-5,
          ftol: float = 1e-9) -> torch.Tensor:
    """Minimise a smooth function with L-BFGS (two-loop recursion, Armijo backtracking).

    ``fun(x) -> (value, gradient)``. Deterministic; small enough to read.
    """
    x = x0.clone()
    f, g = fun(x)
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    for _ in range(max_iter):
        if float(g.abs().max()) < gtol:
            break
        q, alphas = g.clone(), []
        for s, y in zip(reversed(s_hist), reversed(y_hist), strict=True):
            rho = 1.0 / float(y @ s)
            a = rho * float(s @ q)
            q -= a * y
            alphas.append((rho, a))
        if s_hist:
            q *= float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1])
        else:
            q /= max(1.0, float(g.abs().sum()))
        for (s, y), (rho, a) in zip(zip(s_hist, y_hist, strict=True), reversed(alphas), strict=True):
            q += (a - rho * float(y @ q)) * s
        direction = -q
        slope = float(g @ direction)
        if slope >= 0:  # not a descent direction: restart from the gradient
            s_hist.clear()
            y_hist.clear()
            direction, slope = -g, -float(g @ g)
        step = 1.0
        while True:
            x_new = x + step * direction
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s, y = x_new - x, g_new - g
        if float(y @ s) > 1e-10:
            s_hist.append(s)
            y_hist.append(y)
            if len(s_hist) > history:
                s_hist.pop(0)
                y_hist.pop(0)
        done = abs(f - f_new) <= ftol * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if done:
            break
    return x


def _fit_predict_torch(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int,
                       C: float, max_iter: int) -> np.ndarray:
    x = torch.from_numpy(x_train)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(y_train.astype(np.int64)), n_classes).float()
    lam = 1.0 / (C * len(x))
    d = x.shape[1]
    theta = lbfgs(lambda t: _softmax_loss_grad(x, onehot, lam, t),
                  torch.zeros(d * n_classes + n_classes), max_iter=max_iter)
    w, b = theta[: d * n_classes].view(d, n_classes), theta[d * n_classes:]
    return metrics.predict(torch.addmm(b, torch.from_numpy(x_test), w))  # −1: tied or NaN logits


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 C: float = 1.0, max_iter: int = 30, solver: str = "torch") -> dict[str, float | int | None]:
    """Fit on the training rows, score on the test rows: ``acc``, ``macro_f1`` and counts.

    Macro-F1 averages over the classes present in ``y_test``. With a single training class
    the probe predicts that class (no fit); with no test rows the scores are ``None``.
    """
    x_train = np.asarray(x_train, np.float32)
    x_test = np.asarray(x_test, np.float32)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    out: dict[str, float | int | None] = {
        "n_train": len(y_train), "n_test": len(y_test),
        "n_classes": len(np.unique(y_train)), "acc": None, "macro_f1": None,
    }
    if len(y_test) == 0 or len(y_train) == 0:
        return out
    classes, codes = np.unique(y_train, return_inverse=True)
    if len(classes) == 1:
        pred = np.full(len(y_test), classes[0])
    else:
        mean = x_train.mean(0)
        std = x_train.std(0) + 1e-6
        xtr, xte = (x_train - mean) / std, (x_test - mean) / std
        if solver == "torch":
            code = _fit_predict_torch(xtr, codes.reshape(-1), xte, len(classes), C, max_iter)
            pred = np.where(code >= 0, classes[np.maximum(code, 0)], -1)
        elif solver == "sklearn":
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(C=C, max_iter=max_iter)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(xtr, y_train)
            pred = clf.predict(xte)
        else:
            raise ValueError(f"unknown solver '{solver}' (torch or sklearn)")
    out["acc"] = metrics.accuracy(y_test, pred)
    out["macro_f1"] = metrics.macro_f1(y_test, pred)
    return out


def probe(x: np.ndarray, y: np.ndarray, test_frac: float = 0.25, seed: int = 0, C: float = 1.0,
          solver: str = "torch") -> dict[str, float | int | None]:
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
    return linear_probe(np.asarray(x)[tr], y[tr], np.asarray(x)[te], y[te], C=C, solver=solver)
