"""The evaluation suite: one call runs every task on a table and writes the report.

>>> metrics = evaluate(fuser, table, label="species", out_dir="eval")

Protocol (see ``docs/EVALUATION.md``):

1. The table is matched to the model's schema, then split deterministically by ``seed``
   into a *fit* part (δ selection, probe training) and a *test* part (every reported
   number), stratified by the label when given (``fit_frac`` of each class to fit;
   singleton classes to fit). Each part is capped (``max_fit`` / ``max_test`` rows, a
   stratified deterministic subsample) so the suite stays fast on big tables.
2. For every visible set V: retrieval to every target t ∉ V (cross δ = 0, reconstruction
   δ = 1, inversion δ chosen on fit), zero-shot against the class prototypes, linear
   probes on raw / μ / tokens / reconstructions, ‖σ‖₁ for calibration.
3. Uncertainty per subset up to ``max_subset_size``, "which modality next", and the
   modality gap of raw inputs vs hidden states vs reconstructions.
4. ``metrics.json`` (atomic, stable keys, deterministic), ``report.md`` and PNG plots.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prom3e.data.table import ModalTable, read_table
from prom3e.errors import Prom3eError
from prom3e.tasks import gap as gap_mod
from prom3e.tasks import probe as probe_mod
from prom3e.tasks import uncertainty as unc
from prom3e.tasks import zeroshot as zs
from prom3e.tasks.common import (
    FuserLike,
    encode_labels,
    jsonable,
    l2n,
    mean_or_none,
    spearman,
    stratified_split,
    stratified_subsample,
    visible_sets,
)
from prom3e.tasks.retrieval import DELTA_GRID, PairData, dedup_gallery, evaluate_pair, query_mean

ALL_TASKS = ("retrieval", "zeroshot", "probe", "uncertainty", "gap")
SCHEMA_VERSION = 1
PROBE_FEATURES = ("raw", "mu", "tokens", "reconstruction")
FIT_VALUES = ("train", "fit", "val", "validation")  # split-column values of the fit part


@dataclass
class _Split:
    """Rows of one part of the split and its per-target galleries (built lazily)."""

    name: str
    rows: np.ndarray
    galleries: dict[str, tuple[torch.Tensor, np.ndarray]] = field(default_factory=dict)


@dataclass
class _Run:
    fuser: FuserLike
    table: ModalTable
    mods: list[str]
    y: np.ndarray  # int64 [N] codes, −1 = no label
    class_mod: str | None
    protos: torch.Tensor | None
    proto_classes: np.ndarray | None
    grid: tuple[float, ...]
    batch_size: int
    seed: int
    tasks: tuple[str, ...]
    calib: list[dict] = field(default_factory=list)  # pooled σ / error / rank per pair

    def raw(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self.table.features[self.table.index(name)][rows]

    def has(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self.table.present[rows, self.table.index(name)]

    def dim(self, name: str) -> int:
        return self.table.dims[self.table.index(name)]

    def gallery(self, split: _Split, t: str) -> tuple[torch.Tensor, np.ndarray]:
        """Distinct t-embeddings of the split's rows, and each table row's gallery index."""
        if t not in split.galleries:
            rows = split.rows[self.has(t, split.rows)]
            g, inv = dedup_gallery(self.raw(t, rows))
            where = np.full(len(self.table), -1, np.int64)
            where[rows] = inv.numpy()
            split.galleries[t] = (g, where)
        return split.galleries[t]


def _resolve_sets(sets: Sequence[Sequence[str]] | None, mods: list[str], known: list[str],
                  max_visible: int) -> list[tuple[str, ...]]:
    if sets is None:
        return visible_sets(mods, max_visible)
    out = []
    for s in sets:
        s = tuple(s)
        for n in s:
            if n not in known:
                raise Prom3eError(f"unknown modality '{n}' in visible set (the model knows: {', '.join(known)})")
        if not s or len(set(s)) != len(s):
            raise Prom3eError(f"visible set {'+'.join(s) or '(empty)'}: give distinct modality names")
        out.append(tuple(n for n in known if n in s))  # model order: stable keys
    return list(dict.fromkeys(out))


def _prototypes(table: ModalTable, y: np.ndarray, classes: list[str], class_mod: str,
                source: ModalTable | str | os.PathLike | None, label: str) -> tuple[torch.Tensor, np.ndarray, str]:
    """Class prototypes: from a file (label column + class-modality column) or the table."""
    if source is None:
        has = table.present[:, table.index(class_mod)] & (y >= 0)
        p, c = zs.class_prototypes(table.feature(class_mod)[has], y[has], len(classes))
        return p, c, "table"
    src = source if isinstance(source, ModalTable) else read_table(source)
    emb = src.feature(class_mod)
    names = np.asarray(src.label(label)).astype(str)
    lookup = {c: i for i, c in enumerate(classes)}
    extra = sorted(set(names) - set(lookup))  # classes unseen in the table: distractors
    lookup |= {c: len(classes) + i for i, c in enumerate(extra)}
    codes = np.array([lookup[n] for n in names], np.int64)  # one per class name: not per sample
    ok = src.present[:, src.index(class_mod)]
    p, c = zs.class_prototypes(emb[ok], codes[ok], len(lookup))
    return p, c, str(getattr(src, "source", "file"))


def evaluate(
    fuser: FuserLike,
    table: ModalTable | str | os.PathLike,
    label: str | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    modalities: Sequence[str] | None = None,
    visible: Sequence[Sequence[str]] | None = None,
    targets: Sequence[str] | None = None,
    max_visible: int = 2,
    class_modality: str | None = "auto",
    class_prototypes: ModalTable | str | os.PathLike | None = None,
    tasks: Sequence[str] = ALL_TASKS,
    seed: int = 0,
    fit_frac: float = 0.5,
    split_column: str | None = None,
    max_fit: int | None = 2000,
    max_test: int | None = 2000,
    max_subset_size: int = 3,
    delta_grid: Sequence[float] = DELTA_GRID,
    batch_size: int = 1024,
    threads: int | None = None,
    plots: bool = True,
    progress: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the evaluation suite; return the metrics (and write them when ``out_dir`` is set).

    ``modalities`` restricts the modalities used (default: all of the model's that occur in
    the table); ``visible`` the visible sets (default: every subset of ``modalities`` of
    1 to ``max_visible`` modalities); ``targets`` the retrieval targets (default: every
    modality). ``class_modality``: ``"auto"`` detects a modality holding one embedding per
    class, ``None`` turns zero-shot off. ``class_prototypes``: a table (or path) with the ``label`` column and the class
    modality, one row per class; default: the prototypes found in ``table``.
    ``split_column``: use a column of the table for the split (rows marked ``test`` are the
    test part, rows marked ``train``/``fit``/``val`` the fit part) instead of ``fit_frac``.
    ``threads``: torch CPU threads while evaluating (restored after; default: unchanged) —
    1 is much faster on an oversubscribed machine, where multi-threaded small ops stall.
    """
    params = dict(locals())  # the arguments above, passed on unchanged
    with _torch_threads(threads):
        return _evaluate(**params)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _evaluate(
    fuser: FuserLike, table: ModalTable | str | os.PathLike, label: str | None, out_dir, *, modalities,
    visible, targets, max_visible, class_modality, class_prototypes, tasks, seed, fit_frac, split_column,
    max_fit, max_test, max_subset_size, delta_grid, batch_size, threads, plots, progress, command,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in ALL_TASKS]
    if bad:
        raise Prom3eError(f"unknown task '{bad[0]}' (have: {', '.join(ALL_TASKS)})")
    if not 0 < fit_frac < 1:
        raise Prom3eError(f"fit_frac must be in (0, 1), got {fit_frac}")
    if isinstance(table, str | os.PathLike):
        table = read_table(table)
    stage1 = getattr(fuser, "aligner", None) is not None
    if stage1:
        # raw encoder features + the fuser's stage-1 heads: map the table once, then evaluate
        # everything (δ = 0 queries, galleries, probes) in the aligned space with the bare model
        table = fuser.aligner.transform(table)
        fuser = copy.copy(fuser)
        fuser.aligner = None
    table = table.check_schema(fuser.modalities, fuser.dims)
    known = list(fuser.modalities)
    in_table = [m for m in known if table.present[:, table.index(m)].any()]
    mods = list(modalities) if modalities is not None else in_table
    for m in mods:
        if m not in known:
            raise Prom3eError(f"unknown modality '{m}' (the model knows: {', '.join(known)})")
    mods = [m for m in known if m in mods]
    sets = _resolve_sets(visible, mods, known, max_visible)
    tgts = [t for t in known if t in (targets if targets is not None else mods)]
    for t in targets or []:
        if t not in known:
            raise Prom3eError(f"unknown target '{t}' (the model knows: {', '.join(known)})")

    # labels, class modality, split
    if label is not None:
        y, classes = encode_labels(table.label(label))
        if not (y >= 0).any():
            raise Prom3eError(f"label column '{label}' has no value")
    else:
        y, classes = np.full(len(table), -1, np.int64), []
    class_mod = None
    if label is not None and class_modality == "auto":
        class_mod = zs.detect_class_modality(table.features, table.present, table.modalities, y)
    elif class_modality not in (None, "auto", "none"):
        if class_modality not in known:
            raise Prom3eError(f"class modality '{class_modality}' is not a model modality ({', '.join(known)})")
        class_mod = class_modality
    if split_column is not None:
        part = np.asarray(table.label(split_column)).astype(str)
        fit_rows, test_rows = np.flatnonzero(np.isin(part, FIT_VALUES)), np.flatnonzero(part == "test")
        if not len(fit_rows) or not len(test_rows):
            raise Prom3eError(f"split column '{split_column}': need rows marked 'test' and rows marked "
                              f"{' / '.join(FIT_VALUES)}")
    else:
        fit_rows, test_rows = stratified_split(y, fit_frac, seed)
    fit_rows = stratified_subsample(fit_rows, y, max_fit, seed + 1)
    test_rows = stratified_subsample(test_rows, y, max_test, seed + 2)
    protos = proto_classes = None
    proto_source = None
    if class_mod is not None and label is not None and "zeroshot" in tasks:
        protos, proto_classes, proto_source = _prototypes(table, y, classes, class_mod, class_prototypes, label)

    run = _Run(fuser, table, mods, y, class_mod, protos, proto_classes, tuple(delta_grid),
               batch_size, seed, tasks)
    fit, test = _Split("fit", fit_rows), _Split("test", test_rows)
    unc_sets = visible_sets(mods, max_subset_size) if "uncertainty" in tasks else []
    next_sets = [s for s in unc_sets if len(s) < min(max_subset_size, len(mods))]
    total = len(sets) + len(unc_sets) + len(next_sets) + (len(mods) if "gap" in tasks else 0)
    bar = tqdm(total=total, desc="evaluate", disable=not progress, unit="step")

    per_set = []
    for s in sets:
        bar.set_postfix_str("+".join(s))
        per_set.append(_visible_set(run, s, tgts, fit, test))
        bar.update(1)

    metrics: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "settings": {
            "seed": seed, "label": label, "n_classes": len(classes), "class_modality": class_mod,
            "prototypes": proto_source, "modalities": mods, "model_modalities": known,
            "model_dims": list(fuser.dims), "stage1_heads": stage1,
            "visible_sets": [list(s) for s in sets], "targets": tgts, "tasks": list(tasks),
            "n_rows": len(table), "fit_frac": fit_frac, "max_fit": max_fit, "max_test": max_test,
            "split_column": split_column, "n_fit": len(fit_rows), "n_test": len(test_rows),
            "max_subset_size": max_subset_size, "delta_grid": list(run.grid),
        },
    }
    extra: dict[str, Any] = {}
    if "retrieval" in tasks:
        metrics["retrieval"] = _retrieval_summary([p for r in per_set for p in r["retrieval"]])
    if "zeroshot" in tasks:
        metrics["zeroshot"] = _zeroshot_summary(run, [r["zeroshot"] for r in per_set if r["zeroshot"]])
    if "probe" in tasks:
        metrics["probe"] = _probe_summary([r["probe"] for r in per_set if r["probe"]], label)
    if "uncertainty" in tasks:
        metrics["uncertainty"], extra["uncertainty"] = _uncertainty(run, test, unc_sets, next_sets, bar)
    if "gap" in tasks:
        metrics["gap"], extra["gap"] = _gap(run, test, bar)
    bar.close()
    metrics["claims"] = _claims(metrics)
    metrics = jsonable(metrics)
    if out_dir is not None:
        from prom3e.viz.report import write_outputs, write_text

        write_outputs(Path(out_dir), metrics, run_extras={**extra, "calibration": run.calib},
                      plots=plots, command=command)
        write_text(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


# --- per visible set ----------------------------------------------------------------------

def _encode(run: _Run, rows: np.ndarray, s: tuple[str, ...], targets: list[str], hidden: bool):
    if len(rows) == 0:
        return None, {}
    batch = run.table.take(rows)
    post = run.fuser.encode(batch, visible=list(s), hidden=hidden, batch_size=run.batch_size)
    rec = run.fuser.reconstruct(batch, targets=targets, visible=list(s), batch_size=run.batch_size) \
        if targets else {}
    return post, {k: l2n(v) for k, v in rec.items()}


def _visible_set(run: _Run, s: tuple[str, ...], targets: list[str], fit: _Split, test: _Split) -> dict:
    """Retrieval, zero-shot and probe results (plus calibration data) of one visible set."""
    c = run.class_mod
    r_tgts = [t for t in targets if t not in s] if "retrieval" in run.tasks else []
    do_zs = run.protos is not None and c not in s
    do_probe = "probe" in run.tasks and (run.y >= 0).any() and c not in s
    probe_tgts = [m for m in run.mods if m != c] if do_probe else []
    need = list(dict.fromkeys(r_tgts + ([c] if do_zs else []) + probe_tgts))
    rows = {sp.name: unc.rows_with(run.table, sp.rows, s) for sp in (fit, test)}
    enc = {sp.name: _encode(run, rows[sp.name], s, need, hidden=do_probe) for sp in (fit, test)}
    out: dict = {"retrieval": [], "zeroshot": None, "probe": None}
    sigma_test = unc.sigma_l1(enc["test"][0]) if enc["test"][0] is not None else np.zeros(0)

    for t in r_tgts:
        data = {}
        for sp in (fit, test):
            r = rows[sp.name]
            have = run.has(t, r)
            g, where = run.gallery(sp, t)
            q = None
            if all(run.dim(v) == run.dim(t) for v in s):
                q = query_mean([run.raw(v, r[have]) for v in s])
            rec = enc[sp.name][1][t][torch.from_numpy(have)] if len(r) else torch.zeros(0, run.dim(t))
            data[sp.name] = (PairData(q, rec, torch.from_numpy(where[r[have]]), g), have)
        m, ranks = evaluate_pair(data["fit"][0], data["test"][0], run.grid)
        have = data["test"][1]
        rec = data["test"][0].recon
        err = 1 - (rec * l2n(run.raw(t, rows["test"][have]))).sum(-1).numpy()
        sig = sigma_test[have]
        m["spearman_sigma_rank"] = spearman(sig, ranks.numpy())
        m["spearman_sigma_recon_error"] = spearman(sig, err)
        out["retrieval"].append({"visible": list(s), "target": t, **m})
        run.calib.append({"visible": s, "target": t, "sigma": sig, "error": err, "rank": ranks.numpy()})

    if do_zs:
        res = {}
        for sp in (fit, test):
            r = rows[sp.name]
            lab = run.y[r] >= 0
            q = None
            if all(run.dim(v) == run.dim(c) for v in s) and lab.any():
                q = query_mean([run.raw(v, r[lab]) for v in s])
            rec = enc[sp.name][1][c][torch.from_numpy(lab)] if len(r) else torch.zeros(0, run.dim(c))
            res[sp.name] = (q, rec, run.y[r[lab]])
        out["zeroshot"] = {"visible": list(s), **zs.evaluate_set(
            *res["fit"], *res["test"], run.protos, run.proto_classes, run.grid)}

    if do_probe:
        feats, ys = {}, {}
        for sp in (fit, test):
            r = rows[sp.name]
            lab = run.y[r] >= 0
            post, rec = enc[sp.name]
            ys[sp.name] = run.y[r[lab]]
            if post is None:
                feats[sp.name] = dict.fromkeys(PROBE_FEATURES, np.zeros((0, 1), np.float32))
                continue
            lt = torch.from_numpy(lab)
            feats[sp.name] = {
                "raw": np.concatenate([run.raw(v, r[lab]) for v in s], 1),
                "mu": post.mu[lt].numpy(),
                "tokens": post.hidden[lt].flatten(1).numpy() if post.hidden is not None else None,
                "reconstruction": torch.cat([rec[m][lt] for m in probe_tgts], 1).numpy(),
            }
        res: dict[str, Any] = {"visible": list(s), "n_train": len(ys["fit"]), "n_test": len(ys["test"])}
        for f in PROBE_FEATURES:
            a, b = feats["fit"][f], feats["test"][f]
            if a is None or b is None or len(ys["fit"]) == 0:
                p = {"acc": None, "macro_f1": None}
            else:
                p = probe_mod.linear_probe(a, ys["fit"], b, ys["test"])
            res[f"acc_{f}"], res[f"f1_{f}"] = p["acc"], p["macro_f1"]
        out["probe"] = res
    return out


# --- summaries ----------------------------------------------------------------------------

_KINDS = ("cross", "reconstruction", "inversion")


def _means(items: list[dict], keys: Sequence[str]) -> dict[str, float | None]:
    return {f"{k}_mean": mean_or_none([it[k] for it in items]) for k in keys}


def _by_size(items: list[dict], keys: Sequence[str]) -> dict[str, dict]:
    sizes = sorted({len(it["visible"]) for it in items})
    return {str(k): {"n": sum(len(it["visible"]) == k for it in items),
                     **_means([it for it in items if len(it["visible"]) == k], keys)} for k in sizes}


def _retrieval_summary(pairs: list[dict]) -> dict:
    keys = [f"r{k}_{kind}" for k in (1, 5, 10) for kind in _KINDS] + ["delta"]
    return {"pairs": pairs, "summary": {"n_pairs": len(pairs), **_means(pairs, keys),
                                        "by_visible_size": _by_size(pairs, keys)}}


def _zeroshot_summary(run: _Run, sets: list[dict]) -> dict:
    keys = [f"{m}_{kind}" for m in ("top1", "top5", "macro") for kind in _KINDS] + ["delta"]
    return {
        "class_modality": run.class_mod,
        "n_prototypes": int(len(run.proto_classes)) if run.proto_classes is not None else 0,
        "sets": sets,
        "summary": {"n_sets": len(sets), **_means(sets, keys), "by_visible_size": _by_size(sets, keys)},
    }


def _probe_summary(sets: list[dict], label: str | None) -> dict:
    keys = [f"{m}_{f}" for m in ("acc", "f1") for f in PROBE_FEATURES]
    return {"label": label, "sets": sets,
            "summary": {"n_sets": len(sets), **_means(sets, keys), "by_visible_size": _by_size(sets, keys)}}


def _uncertainty(run: _Run, test: _Split, subsets, next_sets, bar) -> tuple[dict, dict]:
    sig = unc.sigma_by_subset(run.fuser, run.table, test.rows, subsets, run.batch_size, bar)
    nxt = []
    for s in next_sets:
        bar.set_postfix_str("next " + "+".join(s))
        nxt.append(unc.next_modality(run.fuser, run.table, test.rows, s, run.mods, sig, run.batch_size))
        bar.update(1)
    # pooled calibration over every retrieval pair
    pooled = {}
    if run.calib:
        cat = {k: np.concatenate([c[k] for c in run.calib]) for k in ("sigma", "error", "rank")}
        pooled = unc.calibration(cat["sigma"], cat["error"], cat["rank"])
    # mean ‖σ‖₁ by subset size on the rows that have every subset of that size... kept simple:
    by_size = {}
    for k in sorted({len(s) for s in subsets}):
        vals = [np.nanmean(v) for s, v in sig.items() if len(s) == k and np.isfinite(v).any()]
        by_size[str(k)] = float(np.mean(vals)) if vals else None
    clip = getattr(getattr(getattr(run.fuser, "model", None), "cfg", None), "logvar_clip", None)
    shares = []
    if clip is not None:  # logσ² of every single-modality posterior on the test rows
        for m in run.mods:
            r = unc.rows_with(run.table, test.rows, (m,))
            if len(r):
                shares.append(unc.clip_share(run.fuser.encode(run.table.take(r), visible=[m],
                                                              batch_size=run.batch_size).logvar, clip))
    red = [r["actual_reduction"] > 0 for n in nxt for r in n["ranking"] if r["actual_reduction"] is not None]
    per_pair = [spearman(c["sigma"], c["rank"]) for c in run.calib]
    metrics = {
        "check": unc.sigma_check(float(np.mean(shares)) if shares else None, mean_or_none(red),
                                 mean_or_none(per_pair)),
        "subsets": unc.summarize_subsets(sig),
        "mean_sigma_l1_by_size": by_size,
        "next": [{k: v for k, v in n.items() if not k.startswith("_")} for n in nxt],
        "calibration": {
            "pooled_spearman_recon_error": pooled.get("spearman_recon_error"),
            "pooled_spearman_rank": pooled.get("spearman_rank"),
            "n": int(sum(len(c["sigma"]) for c in run.calib)),
        },
    }
    return metrics, {"sigma": sig, "next": nxt}


def _gap(run: _Run, test: _Split, bar) -> tuple[dict, dict]:
    """Gap of raw vs hidden vs reconstruction clouds on up to 1000 test rows (paired rows)."""
    rows = stratified_subsample(test.rows, run.y, 1000, run.seed + 3)
    n, mods = len(rows), run.mods
    mu: dict[str, np.ndarray] = {}
    rec: dict[tuple[str, str], np.ndarray] = {}
    pres = {m: run.has(m, rows) for m in mods}
    for a in mods:
        bar.set_postfix_str("gap " + a)
        r = rows[pres[a]]
        post, out = _encode(run, r, (a,), [t for t in mods if t != a], hidden=False)
        if post is not None:
            mu[a] = np.full((n, post.mu.shape[1]), np.nan, np.float32)
            mu[a][pres[a]] = post.mu.numpy()
            for t, v in out.items():
                rec[(a, t)] = np.full((n, v.shape[1]), np.nan, np.float32)
                rec[(a, t)][pres[a]] = v.numpy()
        bar.update(1)
    raw_pairs, hid_pairs, rec_pairs = [], [], []
    for i, a in enumerate(mods):
        for b in mods[i + 1:]:
            both = pres[a] & pres[b]
            fa, fb = run.raw(a, rows[both]), run.raw(b, rows[both])
            raw_pairs.append({"a": a, "b": b, "n": int(both.sum()), **gap_mod.compare(fa, fb, run.seed)})
            if a in mu and b in mu:
                hid_pairs.append({"a": a, "b": b, "n": int(both.sum()),
                                  **gap_mod.compare(mu[a][both], mu[b][both], run.seed)})
            for src, dst, fd in ((a, b, fb), (b, a, fa)):
                if (src, dst) in rec:
                    rec_pairs.append({"from": src, "to": dst, "n": int(both.sum()),
                                      **gap_mod.compare(rec[(src, dst)][both], fd, run.seed)})
    metrics = {
        "n_rows": n,
        "raw": gap_mod.summarize(raw_pairs),
        "hidden": gap_mod.summarize(hid_pairs),
        "reconstruction": gap_mod.summarize(rec_pairs),
    }
    clouds = {
        "raw": {m: run.raw(m, rows[pres[m]]) for m in mods},
        "hidden": {m: mu[m][pres[m]] for m in mu},
        "reconstruction": {t: np.concatenate([rec[(a, t)][pres[a] & pres[t]] for a in mods if (a, t) in rec])
                           for t in mods if any((a, t) in rec for a in mods)},
    }
    return metrics, clouds


def _claims(m: dict) -> dict:
    """The paper's central claims, checked on these numbers (``holds`` = majority agrees)."""
    out: dict[str, Any] = {}
    if "retrieval" in m:
        pairs = [p for p in m["retrieval"]["pairs"] if p["r1_cross"] is not None and p["r1_inversion"] is not None]
        better = [p["r1_inversion"] > p["r1_cross"] for p in pairs]
        out["inversion_beats_cross_r1"] = {
            "n": len(pairs), "frac_better": mean_or_none(better),
            "frac_not_worse": mean_or_none([p["r1_inversion"] >= p["r1_cross"] for p in pairs]),
            "holds": bool(pairs) and float(np.mean(better)) > 0.5,
        }
    if "zeroshot" in m:
        sets = {tuple(s["visible"]): s for s in m["zeroshot"]["sets"]}
        cmp = []
        for s, v in sets.items():
            if len(s) == 2 and (s[0],) in sets and (s[1],) in sets and v["top1_inversion"] is not None:
                single = max(sets[(s[0],)]["top1_inversion"] or 0, sets[(s[1],)]["top1_inversion"] or 0)
                cmp.append(v["top1_inversion"] > single)
        out["two_visible_beat_one_zeroshot"] = {
            "n": len(cmp), "frac_better_than_best_single": mean_or_none(cmp),
            "holds": bool(cmp) and float(np.mean(cmp)) > 0.5,
        }
    if "probe" in m:
        sets = [s for s in m["probe"]["sets"] if s["acc_reconstruction"] is not None and s["acc_mu"] is not None]
        best_hidden = [max(s["acc_mu"], s["acc_tokens"] if s["acc_tokens"] is not None else 0) for s in sets]
        cmp = [h > s["acc_reconstruction"] for h, s in zip(best_hidden, sets, strict=True)]
        out["hidden_probe_beats_reconstructed"] = {
            "n": len(cmp), "frac_better": mean_or_none(cmp),
            "frac_mu_better": mean_or_none([s["acc_mu"] > s["acc_reconstruction"] for s in sets]),
            "holds": bool(cmp) and float(np.mean(cmp)) > 0.5,
        }
    if "uncertainty" in m:
        red = [r for n in m["uncertainty"]["next"] for r in n["ranking"] if r["actual_reduction"] is not None]
        lower = [r["actual_reduction"] > 0 for r in red]
        out["adding_modality_lowers_sigma"] = {
            "n": len(red), "frac_mean_lower": mean_or_none(lower),
            "mean_frac_rows_lower": mean_or_none([r["frac_actual_lower"] for r in red]),
            "holds": bool(red) and float(np.mean(lower)) > 0.5,
        }
    return out
