"""The benchmark: every method, the same splits, seeds and budget, three missingness protocols.

Per seed: a stratified split (``train_frac`` of each class to train); every method is fitted
on the training rows and scored on the test rows under

- ``eta<η>`` (MAPs/AOEPT): a fixed, seeded missingness table — each test row is incomplete
  with probability η and then loses k ~ U{1, …, n_present − 1} of its present modalities
  (for two modalities this is MAPs' "both" setting: half lose one, half the other);
  ``train_missing="eta"`` applies the same kind of table (η = the first one) to training;
- ``subsets``: every non-empty visible set S, on the test rows that have all of S
  (at most ``subset_cap`` rows per set, stratified);
- ``natural``: the table's own missingness.

Metrics (:mod:`prom3e.metrics`): accuracy, macro-F1 (over classes in the test rows), AUROC
(one-vs-rest, macro over test classes with positives and negatives). Reconstruction under
``eta<η>``: for each target t, the test rows that have t but do not see it query the
gallery of all test rows that have t, by cosine between the method's estimate and the
real t in the method's space; R@1 (:mod:`prom3e.metrics`: identical real embeddings are one
gallery item, a tie with another item is a miss, NaN is a miss). **NM²I**:
the true embeddings are discretised by K-means (k = 16) fitted on the training split's t
embeddings, the estimates by K-means (k = 16) fitted on the estimates; NM²I = sklearn's
``normalized_mutual_info_score`` (arithmetic mean) of the two cluster ids. Wall time:
``time.perf_counter``; memory: peak resident-set increase over the phase, sampled every
5 ms from ``/proc/self/statm`` (+ ``torch.cuda.max_memory_allocated`` on CUDA).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from prom3e import metrics
from prom3e.config import Options
from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError
from prom3e.methods import METHODS, create
from prom3e.methods.base import FitConfig, Method

NM2I_CLUSTERS = 16


@dataclass
class BenchConfig(Options):
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0])
    etas: list[float] = field(default_factory=lambda: [0.7, 0.9])
    train_frac: float = 0.7
    train_missing: Literal["natural", "eta"] = "natural"
    subset_cap: int = 1000
    max_subset_modalities: int = 8  # protocol (b) enumerates 2^M − 1 sets; refuse beyond this
    fit: FitConfig = field(default_factory=FitConfig)
    method_options: dict[str, dict] = field(default_factory=dict)

    WHAT: ClassVar[str] = "benchmark option"
    BOUNDS: ClassVar[dict[str, str]] = {"seeds": ">= 0", "etas": "[0, 1)", "train_frac": "(0, 1)",
                                        "subset_cap": ">= 1", "max_subset_modalities": ">= 1"}

    def check(self) -> None:
        unknown = [m for m in [*self.methods, *self.method_options] if m not in METHODS]
        if unknown:
            self.fail("methods", f"unknown method(s) {', '.join(unknown)} (have: {', '.join(METHODS)})")
        if not self.methods or not self.seeds:
            self.fail("methods" if not self.methods else "seeds", "give at least one")


# --- masks -----------------------------------------------------------------------------------
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


# --- metrics ---------------------------------------------------------------------------------
def classification_metrics(proba: np.ndarray, y: np.ndarray) -> dict[str, float | int | None]:
    """Accuracy, macro-F1 and one-vs-rest AUROC (:mod:`prom3e.metrics`: a tied or NaN row is a miss)."""
    if len(y) == 0:
        return {"n": 0, "acc": None, "macro_f1": None, "auroc": None}
    pred = metrics.predict(proba)
    return {"n": len(y), "acc": metrics.accuracy(y, pred), "macro_f1": metrics.macro_f1(y, pred),
            "auroc": metrics.auroc(proba, y)}


def recall_at_1(est: np.ndarray, real: np.ndarray, queries: np.ndarray) -> float:
    """R@1 of each query row's estimate among the gallery rows' real embeddings (cosine).

    Identical real embeddings are one gallery item; ranks, ties and NaN follow
    :mod:`prom3e.metrics` (chunked: no queries × gallery matrix).
    """
    if len(queries) == 0:
        return float("nan")
    gallery, inv = metrics.dedup_gallery(real)
    ranks = metrics.retrieval_ranks(metrics.l2n(np.asarray(est, np.float32)[queries]), gallery,
                                    inv[np.asarray(queries)])
    return float(metrics.recall_at_k(ranks, 1))


def nm2i(est: np.ndarray, true: np.ndarray, train_true: np.ndarray, seed: int) -> float:
    """Normalised mutual information of K-means ids of estimates and of true embeddings."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    k_true = min(NM2I_CLUSTERS, len(np.unique(train_true, axis=0)))
    k_est = min(NM2I_CLUSTERS, len(np.unique(np.round(est, 6), axis=0)))
    if k_true < 2 or k_est < 2:
        return 0.0
    t_ids = KMeans(k_true, n_init=1, random_state=seed).fit(train_true).predict(true)
    e_ids = KMeans(k_est, n_init=1, random_state=seed).fit_predict(est)
    return float(normalized_mutual_info_score(t_ids, e_ids))


class PeakMemory:
    """Peak resident-set increase (MiB) over a ``with`` block, sampled every 5 ms."""

    def __init__(self):
        import os

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak_mib = 0.0

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self.page
        except OSError:  # not Linux: ru_maxrss only grows, so the increase is a lower bound
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self) -> PeakMemory:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.start = self._rss()
        self.top = self.start
        self.stop = threading.Event()

        def watch() -> None:
            while not self.stop.wait(0.005):
                self.top = max(self.top, self._rss())

        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        self.stop.set()
        self.thread.join()
        self.top = max(self.top, self._rss())
        self.peak_mib = (self.top - self.start) / 2**20
        self.cuda_mib = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


# --- one seed ----------------------------------------------------------------------------------
@dataclass
class _Data:
    table: ModalTable
    y: np.ndarray
    n_classes: int
    train: np.ndarray
    test: np.ndarray
    masks: dict[str, np.ndarray]  # protocol → visible mask of the test rows
    subsets: dict[str, tuple[np.ndarray, np.ndarray]]  # name → (test-row positions, visible mask)
    class_mod: int | None


def prepare(table: ModalTable, y: np.ndarray, cfg: BenchConfig, seed: int) -> _Data:
    from prom3e.tasks.common import stratified_split, stratified_subsample
    from prom3e.tasks.zeroshot import detect_class_modality

    train, test = stratified_split(y, fit_frac=cfg.train_frac, seed=seed)
    if len(test) == 0:
        raise Prom3eError("no test rows: every class has a single row")
    pres = table.present[test]
    masks = {f"eta{e:g}": eta_mask(pres, e, seed) for e in cfg.etas}
    masks["natural"] = pres.copy()
    m = len(table.modalities)
    subsets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if m <= cfg.max_subset_modalities:
        for k in range(1, m + 1):
            for s in combinations(range(m), k):
                cols = np.zeros(m, bool)
                cols[list(s)] = True
                rows = np.flatnonzero(pres[:, cols].all(1))
                rows = stratified_subsample(rows, y[test], cfg.subset_cap, seed)
                if len(rows):
                    name = "+".join(table.modalities[j] for j in s)
                    subsets[name] = (rows, np.broadcast_to(cols, (len(rows), m)).copy())
    cm = detect_class_modality([f[train] for f in table.features], table.present[train], table.modalities, y[train])
    return _Data(table, y, int(y.max()) + 1, train, test, masks, subsets,
                 table.modalities.index(cm) if cm else None)


def run_method(name: str, data: _Data, cfg: BenchConfig, seed: int, log: Callable[[str], None] = print) -> dict:
    """Fit one method on one seed's split and score it under every protocol."""
    import dataclasses

    fit_cfg = dataclasses.replace(cfg.fit, seed=seed)
    method: Method = create(name, fit_cfg, **cfg.method_options.get(name, {}))
    t = data.table
    train_t = t.take(data.train)
    if cfg.train_missing == "eta":
        train_t = hide(train_t, eta_mask(train_t.present, cfg.etas[0], seed + 1))
    test_t = t.take(data.test)
    y_test = data.y[data.test]
    out: dict = {"seed": seed}
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        method.fit(train_t, data.y[data.train], data.n_classes)
        out["fit_seconds"] = time.perf_counter() - t0
    out["fit_peak_mib"] = mem.peak_mib
    protocols: dict = {}
    for proto, vis in data.masks.items():
        if proto == "natural":
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                proba = method.predict_proba(test_t, vis)
                out["predict_seconds"] = time.perf_counter() - t0
            out["predict_peak_mib"] = mem.peak_mib
            out["predict_rows"] = len(vis)
        else:
            proba = method.predict_proba(test_t, vis)
        protocols[proto] = classification_metrics(proba, y_test)
    subsets = {}
    for sname, (rows, vis) in data.subsets.items():
        subsets[sname] = classification_metrics(method.predict_proba(test_t.take(rows), vis), y_test[rows])
    if subsets:
        protocols["subsets"] = {k: float(np.mean([s[k] for s in subsets.values() if s[k] is not None]))
                                for k in ("acc", "macro_f1", "auroc")}
        by_size: dict[int, list[float]] = {}
        for sname, s in subsets.items():
            by_size.setdefault(sname.count("+") + 1, []).append(s["acc"])
        out["acc_by_visible_count"] = {str(k): float(np.mean(v)) for k, v in sorted(by_size.items())}
    out["protocols"], out["subsets"] = protocols, subsets
    out["reconstruction"] = _reconstruction(method, data, test_t, train_t, seed)
    if data.class_mod is not None and hasattr(method, "zero_shot_proba"):
        out["zeroshot"] = _zero_shot(method, data, test_t, train_t)
    log(f"  {name} seed {seed}: fit {out['fit_seconds']:.1f}s, natural acc "
        f"{protocols['natural']['acc']:.3f}" + (f", subsets acc {protocols['subsets']['acc']:.3f}" if subsets else ""))
    return out


def _reconstruction(method: Method, data: _Data, test_t: ModalTable, train_t: ModalTable, seed: int) -> dict:
    res: dict = {}
    for proto, vis in data.masks.items():
        if not proto.startswith("eta"):
            continue
        per: dict = {}
        for tgt, name in enumerate(test_t.modalities):
            gallery = np.flatnonzero(test_t.present[:, tgt])
            queries = np.flatnonzero(~vis[gallery, tgt])  # positions within the gallery
            if len(queries) < 2:
                continue
            got = method.estimate(test_t.take(gallery), vis[gallery], tgt)
            if got is None:
                return {}
            est, real = got
            train_true = train_t.features[tgt][train_t.present[:, tgt]]
            true = test_t.features[tgt][gallery[queries]]
            per[name] = {"n": len(queries), "r1": recall_at_1(est, real, queries),
                         "nm2i": nm2i(est[queries], true, train_true, seed) if len(train_true) >= 2 else None}
        if per:
            per["mean"] = {k: float(np.mean([v[k] for v in per.values() if v[k] is not None]))
                           for k in ("r1", "nm2i")}
        res[proto] = per
    return res


def _zero_shot(method, data: _Data, test_t: ModalTable, train_t: ModalTable) -> dict:
    c = data.class_mod
    ytr = data.y[data.train]
    protos = np.zeros((data.n_classes, train_t.dims[c]), np.float32)
    has = train_t.present[:, c]
    np.add.at(protos, ytr[has], train_t.features[c][has])
    out = {"class_modality": train_t.modalities[c]}
    for proto, vis in data.masks.items():
        v = vis.copy()
        v[:, c] = False
        rows = np.flatnonzero(v.any(1))
        proba = method.zero_shot_proba(test_t.take(rows), v[rows], c, protos)
        out[proto] = classification_metrics(proba, data.y[data.test][rows])
    return out


# --- the whole benchmark ---------------------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "/"))
        elif isinstance(v, int | float) and not isinstance(v, bool) and v is not None and k not in ("seed", "n"):
            flat[key] = float(v)
    return flat


def summarise(per_seed: Sequence[dict]) -> dict[str, dict[str, float]]:
    """``path → {mean, std, n}`` over seeds (population std; 0 for one seed)."""
    flats = [_flatten(r) for r in per_seed]
    keys = sorted(set().union(*flats))
    out = {}
    for k in keys:
        vals = np.array([f[k] for f in flats if k in f and np.isfinite(f[k])])
        if len(vals):
            out[k] = {"mean": float(vals.mean()), "std": float(vals.std()), "n": len(vals)}
    return out


def run_benchmark(table: ModalTable, label: str, cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    from prom3e.tasks.common import encode_labels

    cfg.validate()
    codes, classes = encode_labels(table.label(label))
    keep = np.flatnonzero(codes >= 0)
    if len(keep) < 4 or len(classes) < 2:
        raise Prom3eError(f"label column '{label}': need ≥ 2 classes and ≥ 4 labelled rows")
    table, y = table.take(keep), codes[keep]
    results: dict = {"config": {**asdict(cfg), "label": label, "rows": len(table), "classes": len(classes),
                                "modalities": table.modalities, "dims": table.dims},
                     "methods": {m: {"per_seed": []} for m in cfg.methods}}
    t_start = time.perf_counter()
    for seed in cfg.seeds:
        data = prepare(table, y, cfg, seed)
        results["config"].setdefault("class_modality", table.modalities[data.class_mod]
                                     if data.class_mod is not None else None)
        log(f"seed {seed}: {len(data.train)} train / {len(data.test)} test rows, {len(data.subsets)} visible sets")
        for name in cfg.methods:
            results["methods"][name]["per_seed"].append(run_method(name, data, cfg, seed, log))
    for name in cfg.methods:
        results["methods"][name]["summary"] = summarise(results["methods"][name]["per_seed"])
    results["config"]["total_seconds"] = time.perf_counter() - t_start
    return results


def write_outputs(results: dict, out_dir: str | Path) -> list[Path]:
    """``results.json``, ``results.md`` and ``results.png`` (if matplotlib is installed)."""
    import json

    from prom3e.io import atomic_write
    from prom3e.methods.report import markdown, plot
    from prom3e.tasks.common import jsonable

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md"]
    text = json.dumps(jsonable(results), indent=1)
    atomic_write(paths[0], lambda tmp: Path(tmp).write_text(text))
    md = markdown(results)
    atomic_write(paths[1], lambda tmp: Path(tmp).write_text(md))
    png = plot(results, out / "results.png")
    return paths + ([png] if png else [])
