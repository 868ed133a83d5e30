"""Score fitted methods on one seed's test rows: every protocol, the estimate metrics, zero-shot.

- ``natural`` and ``subsets`` are scored with the natural-regime model, each ``eta<η>``
  with the model trained at that η (or the natural one with ``train_missing="natural"``).
- **Estimate of a hidden modality** (under each ``eta<η>``, per target t): the test rows that
  have t but do not see it query the gallery of all test rows that have t, by cosine
  between the method's estimate and the real t — **R@1** (a tie with the true row counts
  as a hit). The estimate lives in the method's ``estimate_space``: ``raw`` (the table's
  embedding space: comparable across those methods) or ``own`` (an internal space: the
  figure is comparable only within that method). **NM²I**: the true embeddings are
  discretised by K-means (k = 16) fitted on the training split's t embeddings, the
  estimates by K-means (k = 16) fitted on the estimates; NM²I = scikit-learn's
  ``normalized_mutual_info_score`` (arithmetic mean). Prompt methods (``estimate_layers``)
  also get NM²I per prompted layer.
"""

from __future__ import annotations

import time

import numpy as np

from prom3e import metrics
from prom3e.data.table import ModalTable
from prom3e.methods.base import Method
from prom3e.tasks.comparison.cost import PeakMemory

NM2I_CLUSTERS = 16


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


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def model_for(models: dict[str, Method], data, proto: str) -> Method | None:
    """The model that scores ``proto``: its own regime's (None if that fit failed), else the natural one."""
    return models.get(proto) if proto in data.train_masks else models["natural"]


def score(models: dict[str, Method], data, seed: int) -> dict:
    """Every protocol's metrics for one method on one seed (``data``: ``SeedData``)."""

    t = data.table
    test_t, train_t = t.take(data.split.test), t.take(data.split.train)
    y_test = data.y[data.split.test]
    natural = models["natural"]
    out: dict = {}
    protocols: dict = {}
    for proto, vis in data.test_masks.items():
        method = model_for(models, data, proto)
        if method is None:  # its training diverged: not scored (never silently another model)
            protocols[proto] = {"n": len(vis), "acc": None, "macro_f1": None, "auroc": None, "failed": True}
            continue
        if proto == "natural":
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                proba = method.predict_proba(test_t, vis)
                out["predict_seconds"] = time.perf_counter() - t0
            out["predict_peak_mib"], out["predict_rows"] = mem.peak_mib, len(vis)
        else:
            proba = method.predict_proba(test_t, vis)
        protocols[proto] = classification_metrics(proba, y_test)
    subsets = {s: classification_metrics(natural.predict_proba(test_t.take(rows), vis), y_test[rows])
               for s, (rows, vis) in data.subsets.items()}
    if subsets:
        protocols["subsets"] = {k: _mean([s[k] for s in subsets.values()]) for k in ("acc", "macro_f1", "auroc")}
        by_size: dict[int, list[float]] = {}
        for name, s in subsets.items():
            by_size.setdefault(name.count("+") + 1, []).append(s["acc"])
        out["acc_by_visible_count"] = {str(k): float(np.mean(v)) for k, v in sorted(by_size.items())}
    out["protocols"], out["subsets"] = protocols, subsets
    out["reconstruction"] = {proto: reconstruction(model_for(models, data, proto), test_t, train_t, vis, seed)
                             for proto, vis in data.test_masks.items()
                             if proto.startswith("eta") and model_for(models, data, proto) is not None}
    out["reconstruction"] = {k: v for k, v in out["reconstruction"].items() if v}
    out["estimate_space"] = natural.estimate_space if out["reconstruction"] else None
    if data.class_mod is not None and hasattr(natural, "zero_shot_proba"):
        out["zeroshot"] = zero_shot(models, data, test_t, train_t)
    return out


def reconstruction(method: Method, test_t: ModalTable, train_t: ModalTable, vis: np.ndarray, seed: int) -> dict:
    """Per target modality: R@1 and NM²I (per layer for prompt methods) of the estimate under ``vis``."""

    per: dict = {}
    for tgt, name in enumerate(test_t.modalities):
        gallery = np.flatnonzero(test_t.present[:, tgt])
        queries = np.flatnonzero(~vis[gallery, tgt])  # positions within the gallery
        if len(queries) < 2:
            continue
        sub = test_t.take(gallery)
        got = method.estimate(sub, vis[gallery], tgt)
        if got is None:
            return {}
        est, real = got
        train_true = train_t.features[tgt][train_t.present[:, tgt]]
        true = test_t.features[tgt][gallery[queries]]
        ok = len(train_true) >= 2
        per[name] = {"n": len(queries), "r1": recall_at_1(est, real, queries),
                     "nm2i": nm2i(est[queries], true, train_true, seed) if ok else None}
        if hasattr(method, "estimate_layers") and ok:
            layers = method.estimate_layers(sub, vis[gallery], tgt)
            per[name]["nm2i_layer"] = {str(i): nm2i(e[queries], true, train_true, seed) for i, e in enumerate(layers)}
    if per:
        per["mean"] = {k: _mean([v[k] for v in per.values()]) for k in ("r1", "nm2i")}
        layer_keys = sorted({k for v in per.values() for k in v.get("nm2i_layer", {})}, key=int)
        if layer_keys:
            per["mean"]["nm2i_layer"] = {k: _mean([v["nm2i_layer"].get(k) for v in per.values()
                                                   if "nm2i_layer" in v]) for k in layer_keys}
    return per


def zero_shot(models: dict[str, Method], data, test_t: ModalTable, train_t: ModalTable) -> dict:
    """Accuracy of the reconstructed class modality vs class prototypes, with it hidden."""

    c = data.class_mod
    ytr = data.y[data.split.train]
    protos = np.zeros((data.n_classes, train_t.dims[c]), np.float32)
    has = train_t.present[:, c]
    np.add.at(protos, ytr[has], train_t.features[c][has])
    out: dict = {"class_modality": train_t.modalities[c]}
    for proto, vis in data.test_masks.items():
        v = vis.copy()
        v[:, c] = False
        rows = np.flatnonzero(v.any(1))
        method = model_for(models, data, proto)
        if method is None:
            continue
        proba = method.zero_shot_proba(test_t.take(rows), v[rows], c, protos)
        out[proto] = classification_metrics(proba, data.y[data.split.test][rows])
    return out
