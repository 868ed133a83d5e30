"""The benchmark: every method, the same splits, seeds, tuning grid and budget.

Per seed (:mod:`prom3e.tasks.comparison.protocols`): a stratified train / test split and a
validation split inside the training rows; modalities that are one vector per class (label
leaks) are left out of every method's input by default (``leak_policy="keep"`` keeps them)
and named in the results; rows left without any modality are dropped and counted. Every
method is tuned the same way on validation rows only (:mod:`prom3e.tasks.comparison.tuning`: grid
of learning rate × width, best epoch within the budget; each η protocol trained at its own
η) and scored on the test rows (:mod:`prom3e.tasks.comparison.scoring`) under

- ``eta<η>`` (MAPs/AOEPT): a fixed, seeded missingness table;
- ``subsets``: every non-empty visible set S, on the test rows that have all of S
  (at most ``subset_cap`` rows per set, stratified);
- ``natural``: the table's own missingness.

Metrics (:mod:`prom3e.metrics`): accuracy, macro-F1 (over classes in the test rows), AUROC
(one-vs-rest, macro over test classes with positives and negatives; a tied or NaN row is a
miss); the estimate's R@1 and NM²I (``scoring``). Over seeds: mean, **sample** standard
deviation (ddof = 1) and the half-width of a 95 % t-interval. Wall time:
``time.perf_counter``; memory: peak resident-set increase (:mod:`prom3e.tasks.comparison.cost`). With
an output folder (:class:`prom3e.tasks.comparison.store.ResultStore`) each method × seed is saved as
it finishes and the report is rewritten, so a killed run keeps what finished and can be resumed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from prom3e.config import Options
from prom3e.data.labels import encode_labels
from prom3e.data.table import ModalTable, read_table
from prom3e.errors import Prom3eError
from prom3e.io import atomic_write
from prom3e.methods import METHODS
from prom3e.methods.base import FitConfig
from prom3e.tasks.comparison.protocols import (  # noqa: F401  (eta_mask, hide re-exported: the benchmark's protocol)
    eta_mask,
    hide,
    leaking_modalities,
    make_split,
    nonempty_rows,
    visible_subsets,
)
from prom3e.tasks.comparison.report import markdown, plot
from prom3e.tasks.comparison.scoring import classification_metrics, nm2i, recall_at_1, score  # noqa: F401  (re-exported)
from prom3e.tasks.comparison.tuning import Grid, regime_names, tune_and_fit


@dataclass
class BenchConfig(Options):
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    etas: list[float] = field(default_factory=lambda: [0.7, 0.9])
    train_frac: float = 0.7
    val_frac: float = 0.15  # of the training rows: the validation split (every choice is made on it)
    train_missing: Literal["natural", "eta"] = "eta"  # eta: each η protocol trains at that η | natural: one model
    subset_cap: int = 1000
    max_subset_modalities: int = 8  # protocol (b) enumerates 2^M − 1 sets; skipped beyond this
    fit: FitConfig = field(default_factory=FitConfig)  # fit.epochs = the budget; lr/width: see grid
    grid: Any = None  # a Grid, or None: the single point (fit.lr, fit.width)
    method_options: dict[str, dict] = field(default_factory=dict)
    leak_policy: Literal["drop", "keep"] = "drop"  # drop | keep one-per-class (label-leaking) modalities
    split_column: str | None = None  # a column of train/val/test values fixing the split

    def grid_or_default(self) -> Grid:
        return self.grid or Grid([self.fit.lr], [self.fit.width])

    WHAT: ClassVar[str] = "benchmark option"
    BOUNDS: ClassVar[dict[str, str]] = {"seeds": ">= 0", "etas": "[0, 1)", "train_frac": "(0, 1)",
                                        "val_frac": "(0, 1)", "subset_cap": ">= 1", "max_subset_modalities": ">= 1"}

    def check(self) -> None:
        unknown = [m for m in [*self.methods, *self.method_options] if m not in METHODS]
        if unknown:
            self.fail("methods", f"unknown method(s) {', '.join(unknown)} (have: {', '.join(METHODS)})")
        if not self.methods or not self.seeds:
            self.fail("methods" if not self.methods else "seeds", "give at least one")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.methods)) != len(self.methods):
            self.fail("seeds", "seeds and methods must not repeat")
        if self.grid is not None and not isinstance(self.grid, Grid):
            self.fail("grid", f"expected a Grid, got {type(self.grid).__name__}")
        self.grid_or_default().validate()


# --- one seed ----------------------------------------------------------------------------------
@dataclass
class SeedData:
    table: ModalTable
    y: np.ndarray
    n_classes: int
    split: object  # protocols.Split
    train_masks: dict[str, np.ndarray]  # regime → visible mask of the training rows
    val_masks: dict[str, np.ndarray]  # regime → visible mask of the validation rows
    test_masks: dict[str, np.ndarray]  # protocol → visible mask of the test rows
    subsets: dict[str, tuple[np.ndarray, np.ndarray]]  # name → (test-row positions, visible mask)
    class_mod: int | None


def prepare(table: ModalTable, y: np.ndarray, cfg: BenchConfig, seed: int, split_labels=None) -> SeedData:
    from prom3e.tasks.zeroshot import detect_class_modality

    split = make_split(y, seed, cfg.train_frac, cfg.val_frac, split_labels)
    pres = {k: table.present[getattr(split, k)] for k in ("train", "val", "test")}
    masks = {k: {"natural": p.copy()} for k, p in pres.items()}
    for e in cfg.etas:  # fixed tables: test as before (seed), training / validation their own
        masks["test"][f"eta{e:g}"] = eta_mask(pres["test"], e, seed)
        masks["train"][f"eta{e:g}"] = eta_mask(pres["train"], e, seed + 1)
        masks["val"][f"eta{e:g}"] = eta_mask(pres["val"], e, seed + 2)
    regimes = regime_names(cfg.etas, cfg.train_missing)
    test_masks = {k: masks["test"][k] for k in [f"eta{e:g}" for e in cfg.etas] + ["natural"]}
    subsets = visible_subsets(pres["test"], y[split.test], table.modalities, cfg.subset_cap, seed,
                              cfg.max_subset_modalities)
    tr = split.train
    cm = detect_class_modality([f[tr] for f in table.features], table.present[tr], table.modalities, y[tr])
    return SeedData(table, y, int(y.max()) + 1, split, {r: masks["train"][r] for r in regimes},
                    {r: masks["val"][r] for r in regimes}, test_masks, subsets,
                    table.modalities.index(cm) if cm else None)


def run_method(name: str, data: SeedData, cfg: BenchConfig, seed: int, log: Callable[[str], None] = print) -> dict:
    """Tune and fit one method on one seed's split (validation only), then score it on the test rows."""
    t0, c0 = time.perf_counter(), time.process_time()
    models, tuning = tune_and_fit(name, data, cfg.fit, cfg.grid_or_default(), cfg.method_options.get(name, {}),
                                  seed, log)
    nat = tuning["regimes"]["natural"]
    out = {"seed": seed, "fit_seconds": nat["fit_seconds"], "fit_peak_mib": nat["fit_peak_mib"],
           "best_epoch": nat["best_epoch"], "val_acc": nat["val_acc"],
           "fit_cpu_seconds": nat["fit_cpu_seconds"], "tuning_seconds": tuning["tuning_seconds"],
           "tuning_cpu_seconds": tuning["tuning_cpu_seconds"], "tuning": tuning, **score(models, data, seed)}
    out["seconds"] = time.perf_counter() - t0  # tuning + scoring of this method × seed
    out["cpu_seconds"] = time.process_time() - c0
    accs = {p: v["acc"] for p, v in out["protocols"].items()}
    log(f"  {name} seed {seed}: " + ", ".join(f"{p} acc {'failed' if a is None else f'{a:.3f}'}"
                                            for p, a in accs.items()) + f" ({out['tuning_seconds']:.0f}s)")
    return out


# --- over seeds ------------------------------------------------------------------------------------
_NOT_SUMMARISED = ("seed", "n", "tuning", "estimate_space", "class_modality", "failed")


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for k, v in d.items():
        if k in _NOT_SUMMARISED:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "/"))
        elif isinstance(v, int | float) and not isinstance(v, bool) and v is not None:
            flat[key] = float(v)
    return flat


def summarise(per_seed: Sequence[dict]) -> dict[str, dict[str, float]]:
    """``path → {mean, std, ci95, n}`` over seeds: sample std (ddof = 1; 0 for one seed), t-interval."""
    from scipy.stats import t as student_t

    flats = [_flatten(r) for r in per_seed]
    keys = sorted(set().union(*flats)) if flats else []
    out = {}
    for k in keys:
        vals = np.array([f[k] for f in flats if k in f and np.isfinite(f[k])])
        if len(vals):
            std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            ci = float(student_t.ppf(0.975, len(vals) - 1) * std / np.sqrt(len(vals))) if len(vals) > 1 else None
            out[k] = {"mean": float(vals.mean()), "std": std, "ci95": ci, "n": len(vals)}
    return out


def load_table(path, label: str, modalities: list[str] | None = None) -> ModalTable:
    """Read a table for the benchmark; ``modalities`` selects columns (rows left empty are kept here:
    :func:`run_benchmark` drops and counts them)."""
    table = read_table(path)
    table.label(label)
    if modalities:
        missing = [m for m in modalities if m not in table.modalities]
        if missing:
            raise Prom3eError(f"{path}: no modality column(s) {', '.join(missing)} "
                              f"(have: {', '.join(table.modalities)})")
        table = table.select(modalities)
    return table


def run_benchmark(table: ModalTable, label: str, cfg: BenchConfig, log: Callable[[str], None] = print,
                  store=None) -> dict:
    """Every method × seed on ``table``; with a :class:`~prom3e.tasks.comparison.store.ResultStore`, each
    finished method × seed is saved (and skipped when resuming) and the report rewritten."""
    cfg.validate()
    codes, classes = encode_labels(table.label(label))
    keep = np.flatnonzero(codes >= 0)
    if len(keep) < 4 or len(classes) < 2:
        raise Prom3eError(f"label column '{label}': need ≥ 2 classes and ≥ 4 labelled rows")
    unlabelled = len(table) - len(keep)
    table, y = table.take(keep), codes[keep]
    split_labels = table.label(cfg.split_column) if cfg.split_column else None
    first = make_split(y, cfg.seeds[0], cfg.train_frac, cfg.val_frac, split_labels)
    leaks = leaking_modalities(table, y, first.train)  # on training rows only
    left_out = leaks if cfg.leak_policy == "drop" else []
    if left_out:
        if len(left_out) == len(table.modalities):
            raise Prom3eError(f"every modality ({', '.join(left_out)}) is one vector per class: nothing to classify "
                              "from (leak_policy='keep' to use them anyway)")
        table = table.select([m for m in table.modalities if m not in left_out])
        log(f"left out of every input (one vector per class = the label): {', '.join(left_out)}")
    if len(table.modalities) < 2:
        raise Prom3eError(f"the methods need ≥ 2 modalities; left: {', '.join(table.modalities)}")
    rows = nonempty_rows(table)
    n_empty = len(table) - len(rows)
    if n_empty:
        table, y = table.take(rows), y[rows]
        log(f"{n_empty} row(s) have none of the modalities {', '.join(table.modalities)}: dropped")
    results: dict = {"config": {**asdict(cfg), "label": label, "rows": len(table), "classes": len(classes),
                                "modalities": table.modalities, "dims": table.dims, "leaking_modalities": leaks,
                                "left_out": left_out, "rows_without_modality": n_empty,
                                "rows_unlabelled": unlabelled},
                     "methods": {}}
    kept = [m for m in (store.finished_methods() if store is not None else []) if m in METHODS
            and m not in cfg.methods]  # finished in the folder: reported as they are
    order = [m for m in METHODS if m in cfg.methods or m in kept] if kept else list(cfg.methods)
    results["methods"] = {m: {"per_seed": []} for m in order}
    if store is not None:
        store.start({k: v for k, v in results["config"].items() if k not in ("methods", "seeds")})
    t_start = time.perf_counter()
    for seed in cfg.seeds:
        data = None
        for name in order:
            if name in kept:
                rec = store.load(name, seed)
                if rec is not None:
                    results["methods"][name]["per_seed"].append(rec)
                continue
            rec = store.load(name, seed, refit=True) if store is not None else None
            if rec is None:
                if data is None:
                    data = prepare(table, y, cfg, seed, table.label(cfg.split_column) if cfg.split_column else None)
                    results["config"].setdefault("class_modality", table.modalities[data.class_mod]
                                                 if data.class_mod is not None else None)
                    log(f"seed {seed}: {len(data.split.train)} train / {len(data.split.val)} validation / "
                        f"{len(data.split.test)} test rows, {len(data.subsets)} visible sets")
                rec = run_method(name, data, cfg, seed, log)
                if store is not None:
                    store.save(name, seed, rec)
            results["methods"][name]["per_seed"].append(rec)
            if store is not None:
                _summarise_all(results)
                write_outputs(results, store.out, plot_png=False)
    results["methods"] = {m: r for m, r in results["methods"].items() if r["per_seed"]}
    _summarise_all(results)
    results["config"]["methods"] = list(results["methods"])
    results["config"]["total_seconds"] = time.perf_counter() - t_start
    return results


def _summarise_all(results: dict) -> None:
    for r in results["methods"].values():
        r["summary"] = summarise(r["per_seed"])


def write_outputs(results: dict, out_dir, plot_png: bool = True) -> list:
    """``results.json``, ``results.md`` and ``results.png`` (if matplotlib is installed)."""
    from prom3e.tasks.common import jsonable

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md"]
    text = json.dumps(jsonable(results), indent=1)
    atomic_write(paths[0], lambda tmp: Path(tmp).write_text(text))
    md = markdown(results)
    atomic_write(paths[1], lambda tmp: Path(tmp).write_text(md))
    png = plot(results, out / "results.png") if plot_png else None
    return paths + ([png] if png else [])
