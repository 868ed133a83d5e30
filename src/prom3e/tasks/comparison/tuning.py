"""Symmetric tuning: the same small grid for every method, chosen on validation rows only.

For one method and one seed:

1. **Grid on the natural regime.** Every point (learning rate × width) of :class:`Grid` is
   fitted on the training rows with the shared :class:`~prom3e.methods.base.FitConfig`
   (epochs = the budget E); each fit keeps the weights of its best epoch on the validation
   rows (the third grid axis: epochs ≤ E). The point with the highest validation accuracy
   wins (ties: the first in grid order). The test rows are never seen. A point whose
   training diverges is recorded as failed and not chosen (all failed: an error).
2. **η regimes** (``train_missing="eta"``): the chosen (lr, width) is fitted again on the
   training rows hidden by a fixed η table (the MAPs/AOEPT protocol: train and test at the
   same missing rate; no extra modality dropout on top), with its best epoch chosen on
   validation rows hidden by their own η table.

Every method, ProM3E included, goes through exactly this; ProM3E's pre-training phase uses
the same learning rate and weight decay (``prom3e_method``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from prom3e.errors import Prom3eError
from prom3e.methods import create
from prom3e.methods.base import FitConfig, Method, ValidationSet
from prom3e.tasks.comparison.cost import PeakMemory
from prom3e.tasks.comparison.protocols import hide


@dataclass
class Grid:
    """Learning rates × widths (the epoch axis is the best-epoch choice within the budget)."""

    lrs: list[float] = field(default_factory=lambda: [1e-3])
    widths: list[int] = field(default_factory=lambda: [64])

    def validate(self) -> None:
        if not self.lrs or not self.widths:
            raise Prom3eError("the tuning grid needs at least one learning rate and one width")
        if any(not (lr > 0 and np.isfinite(lr)) for lr in self.lrs):
            raise Prom3eError(f"grid learning rates must be positive, got {self.lrs}")
        if any(int(w) != w or w < 4 for w in self.widths):
            raise Prom3eError(f"grid widths must be integers ≥ 4, got {self.widths}")

    def points(self) -> list[tuple[float, int]]:
        return [(float(lr), int(w)) for lr in sorted(self.lrs) for w in sorted(self.widths)]


def regime_names(etas: list[float], train_missing: str) -> list[str]:
    """``natural`` (+ ``eta<η>`` per missing rate when each η protocol trains at its own η)."""
    return ["natural"] + ([f"eta{e:g}" for e in etas] if train_missing == "eta" else [])


def _fit(name: str, fit_cfg: FitConfig, options: dict, train, y, n_classes: int, val: ValidationSet
         ) -> tuple[Method | None, dict]:
    """A fitted method and its record; ``(None, record with 'failed')`` when training diverged."""
    method = create(name, fit_cfg, **options)
    with PeakMemory() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            method.fit(train, y, n_classes, val)
        except Prom3eError as e:
            if "diverged" not in str(e) and "non-finite" not in str(e):
                raise
            return None, {"lr": fit_cfg.lr, "width": fit_cfg.width, "failed": str(e),
                          "fit_seconds": time.perf_counter() - t0, "fit_cpu_seconds": time.process_time() - c0}
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return method, {"lr": fit_cfg.lr, "width": fit_cfg.width, "best_epoch": int(method.best_epoch),
                    "val_acc": float(method.best_val_acc), "fit_seconds": seconds, "fit_cpu_seconds": cpu,
                    "fit_peak_mib": mem.peak_mib}


def tune_and_fit(name: str, data, base: FitConfig, grid: Grid, options: dict, seed: int,
                 log: Callable[[str], None] = print) -> tuple[dict[str, Method], dict]:
    """Fit ``name`` on one seed's split (``data``: :class:`prom3e.tasks.comparison.benchmark.SeedData`).

    Returns ``{regime: fitted method}`` and a record: the grid trials, the chosen point, and
    per regime its best epoch, validation accuracy, fit time and peak memory.
    """
    t = data.table
    train_t, val_t = t.take(data.split.train), t.take(data.split.val)
    y_tr, y_val = data.y[data.split.train], data.y[data.split.val]
    trials, best, best_method = [], None, None
    t0, c0 = time.perf_counter(), time.process_time()
    for lr, width in grid.points():
        cfg = dataclasses.replace(base, lr=lr, width=width, seed=seed)
        val = ValidationSet(val_t, y_val, data.val_masks["natural"])
        method, rec = _fit(name, cfg, options, train_t, y_tr, data.n_classes, val)
        trials.append(rec)
        if method is not None and (best is None or rec["val_acc"] > best["val_acc"]):
            best, best_method = rec, method
        del method
    if best is None or best_method is None:
        raise Prom3eError(f"{name} seed {seed}: every grid point failed ({trials[0]['failed']})")
    models = {"natural": best_method}
    regimes = {"natural": best}
    for regime, train_vis in data.train_masks.items():
        if regime == "natural":
            continue
        cfg = dataclasses.replace(base, lr=best["lr"], width=best["width"], seed=seed, drop_prob=0.0)
        val = ValidationSet(val_t, y_val, data.val_masks[regime])
        method, regimes[regime] = _fit(name, cfg, options, hide(train_t, train_vis), y_tr, data.n_classes, val)
        if method is not None:  # a failed η refit leaves that protocol unscored for this seed (and says so)
            models[regime] = method
        else:
            log(f"  {name} seed {seed}: the {regime} fit failed ({regimes[regime]['failed']}): not scored")
    record = {"trials": trials, "selected": {"lr": best["lr"], "width": best["width"]}, "regimes": regimes,
              "tuning_seconds": time.perf_counter() - t0, "tuning_cpu_seconds": time.process_time() - c0}
    if len(trials) > 1:
        log(f"  {name} seed {seed}: chose lr {best['lr']:g}, width {best['width']} "
            f"(val acc {best['val_acc']:.3f}, best epoch {best['best_epoch']}) of {len(trials)} grid points")
    return models, record
