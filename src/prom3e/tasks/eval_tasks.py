"""The five evaluation tasks, each with one shape: ``Task(ctx, config)``, then per visible set
``needs(s)`` → :class:`~prom3e.tasks.eval_context.Need` (or None) and ``score(encoded set)``,
then ``result()`` → :class:`TaskResult`.

The per-visible-set tasks (retrieval, zero-shot, probe) share one encoding of each visible set
(:func:`prom3e.tasks.evaluate.run_tasks` merges their needs: one ``encode`` and one
``reconstruct`` call per set and split, one set in memory at a time); uncertainty and gap need
no shared encoding and do their work in ``result()``. The numerics live in the modules
``retrieval``, ``zeroshot``, ``probe``, ``uncertainty`` and ``gap``; this module feeds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from prom3e.metrics import l2n, spearman
from prom3e.tasks import gap as gap_mod
from prom3e.tasks import probe as probe_mod
from prom3e.tasks import uncertainty as unc
from prom3e.tasks import zeroshot as zs
from prom3e.tasks.common import mean_or_none, stratified_subsample, visible_sets
from prom3e.tasks.eval_config import EvalConfig
from prom3e.tasks.eval_context import EncodedSet, EvalContext, Need
from prom3e.tasks.retrieval import PairData, evaluate_pair, query_mean

PROBE_FEATURES = ("raw", "mu", "tokens", "reconstruction")
_KINDS = ("cross", "reconstruction", "inversion")


@dataclass
class TaskResult:
    metrics: dict[str, Any]  # → metrics.json under the task's name
    extras: dict[str, Any] = field(default_factory=dict)  # arrays for the figures and CSV (not in metrics.json)


class Task:
    """One task of the suite (see the module docstring); the defaults do nothing."""

    name: ClassVar[str]

    def __init__(self, ctx: EvalContext, config: EvalConfig):
        self.ctx, self.config = ctx, config
        self.items: list[dict] = []  # one result per scored visible set (or pair), in order

    def steps(self) -> int:
        """Progress-bar steps of :meth:`result` (the per-set steps are counted by the caller)."""
        return 0

    def needs(self, s: tuple[str, ...]) -> Need | None:
        return None

    def score(self, enc: EncodedSet) -> None:
        """Score one visible set (called once per set whose :meth:`needs` was not None)."""

    def result(self) -> TaskResult:
        raise NotImplementedError


def _means(items: list[dict], keys: Sequence[str]) -> dict[str, float | None]:
    return {f"{k}_mean": mean_or_none([it[k] for it in items]) for k in keys}


def _by_size(items: list[dict], keys: Sequence[str]) -> dict[str, dict]:
    sizes = sorted({len(it["visible"]) for it in items})
    return {str(k): {"n": sum(len(it["visible"]) == k for it in items),
                     **_means([it for it in items if len(it["visible"]) == k], keys)} for k in sizes}


def _summary(items: list[dict], keys: Sequence[str], count: str) -> dict:
    return {count: len(items), **_means(items, keys), "by_visible_size": _by_size(items, keys)}


class Retrieval(Task):
    """Every (visible set, target ∉ set): cross (δ = 0), reconstruction (δ = 1), inversion (δ on fit)."""

    name = "retrieval"

    def needs(self, s: tuple[str, ...]) -> Need | None:
        targets = [t for t in self.ctx.targets if t not in s]
        return Need(targets, posterior=True) if targets else None

    def score(self, enc: EncodedSet) -> None:
        ctx, s = self.ctx, enc.visible
        test_post = enc.test.post
        sigma_test = unc.sigma_l1(test_post) if test_post is not None else np.zeros(0)
        for t in self.needs(s).targets:
            data = {}
            for sp in ctx.splits:
                e = enc.split(sp.name)
                have = ctx.has(t, e.rows)
                g, where = ctx.gallery(sp, t)
                q = None
                if all(ctx.dim(v) == ctx.dim(t) for v in s):
                    q = query_mean([ctx.raw(v, e.rows[have]) for v in s])
                rec = e.recon[t][torch.from_numpy(have)] if len(e.rows) else torch.zeros(0, ctx.dim(t))
                data[sp.name] = (PairData(q, rec, torch.from_numpy(where[e.rows[have]]), g), have)
            m, ranks = evaluate_pair(data["fit"][0], data["test"][0], self.config.delta_grid)
            have = data["test"][1]
            rec = data["test"][0].recon
            err = 1 - (rec * l2n(ctx.raw(t, enc.test.rows[have]))).sum(-1).numpy()
            sig = sigma_test[have]
            m["spearman_sigma_rank"] = spearman(sig, ranks.numpy())
            m["spearman_sigma_recon_error"] = spearman(sig, err)
            self.items.append({"visible": list(s), "target": t, **m})
            ctx.calibration.append({"visible": s, "target": t, "sigma": sig, "error": err, "rank": ranks.numpy()})

    def result(self) -> TaskResult:
        keys = [f"r{k}_{kind}" for k in (1, 5, 10) for kind in _KINDS] + ["delta"]
        pairs = self.items
        summary = {"n_pairs": len(pairs), "n_nonfinite": sum(p["n_nonfinite"] for p in pairs),
                   **_means(pairs, keys), "by_visible_size": _by_size(pairs, keys)}
        return TaskResult({"pairs": self.items, "summary": summary}, {"calibration": self.ctx.calibration})


class ZeroShot(Task):
    """Classify each test row against the class prototypes from every visible set without the class modality."""

    name = "zeroshot"

    def needs(self, s: tuple[str, ...]) -> Need | None:
        c = self.ctx.class_mod
        return Need([c]) if self.ctx.protos is not None and c not in s else None

    def score(self, enc: EncodedSet) -> None:
        ctx, s, c = self.ctx, enc.visible, self.ctx.class_mod
        res = {}
        for sp in ctx.splits:
            r = enc.split(sp.name).rows
            lab = ctx.y[r] >= 0
            q = None
            if all(ctx.dim(v) == ctx.dim(c) for v in s) and lab.any():
                q = query_mean([ctx.raw(v, r[lab]) for v in s])
            rec = enc.split(sp.name).recon[c][torch.from_numpy(lab)] if len(r) else torch.zeros(0, ctx.dim(c))
            res[sp.name] = (q, rec, ctx.y[r[lab]])
        self.items.append({"visible": list(s), **zs.evaluate_set(
            *res["fit"], *res["test"], ctx.protos, ctx.proto_classes, self.config.delta_grid)})

    def result(self) -> TaskResult:
        keys = [f"{m}_{kind}" for m in ("top1", "top5", "macro") for kind in _KINDS] + ["delta"]
        ctx = self.ctx
        return TaskResult({
            "class_modality": ctx.class_mod,
            "n_prototypes": int(len(ctx.proto_classes)) if ctx.proto_classes is not None else 0,
            "sets": self.items, "summary": _summary(self.items, keys, "n_sets")})


class Probe(Task):
    """Logistic-regression probes of the label on raw inputs, μ, all tokens and reconstructions."""

    name = "probe"

    def _targets(self) -> list[str]:
        return [m for m in self.ctx.mods if m != self.ctx.class_mod]

    def needs(self, s: tuple[str, ...]) -> Need | None:
        if not (self.ctx.y >= 0).any() or self.ctx.class_mod in s:
            return None
        return Need(self._targets(), posterior=True, hidden=True)

    def score(self, enc: EncodedSet) -> None:
        ctx, s = self.ctx, enc.visible
        feats, ys = {}, {}
        for sp in ctx.splits:
            e = enc.split(sp.name)
            r = e.rows
            lab = ctx.y[r] >= 0
            ys[sp.name] = ctx.y[r[lab]]
            if e.post is None:
                feats[sp.name] = dict.fromkeys(PROBE_FEATURES, np.zeros((0, 1), np.float32))
                continue
            lt = torch.from_numpy(lab)
            feats[sp.name] = {
                "raw": np.concatenate([ctx.raw(v, r[lab]) for v in s], 1),
                "mu": e.post.mu[lt].numpy(),
                "tokens": e.post.hidden[lt].flatten(1).numpy() if e.post.hidden is not None else None,
                "reconstruction": torch.cat([e.recon[m][lt] for m in self._targets()], 1).numpy(),
            }
        res: dict[str, Any] = {"visible": list(s), "n_train": len(ys["fit"]), "n_test": len(ys["test"])}
        for f in PROBE_FEATURES:
            a, b = feats["fit"][f], feats["test"][f]
            if a is None or b is None or len(ys["fit"]) == 0:
                p = {"acc": None, "macro_f1": None}
            else:
                p = probe_mod.linear_probe(a, ys["fit"], b, ys["test"])
            res[f"acc_{f}"], res[f"f1_{f}"] = p["acc"], p["macro_f1"]
        self.items.append(res)

    def result(self) -> TaskResult:
        keys = [f"{m}_{f}" for m in ("acc", "f1") for f in PROBE_FEATURES]
        return TaskResult({"label": self.config.label, "sets": self.items,
                           "summary": _summary(self.items, keys, "n_sets")})


class Uncertainty(Task):
    """‖σ‖₁ per visible subset, which modality to add next, and σ's calibration (pooled over retrieval)."""

    name = "uncertainty"

    def __init__(self, ctx: EvalContext, config: EvalConfig):
        super().__init__(ctx, config)
        self.subsets = visible_sets(ctx.mods, config.max_subset_size)
        self.next_sets = [s for s in self.subsets if len(s) < min(config.max_subset_size, len(ctx.mods))]

    def steps(self) -> int:
        return len(self.subsets) + len(self.next_sets)

    def result(self) -> TaskResult:
        ctx, rows, bs = self.ctx, self.ctx.test.rows, self.config.batch_size
        sig = unc.sigma_by_subset(ctx.fuser, ctx.table, rows, self.subsets, bs, ctx.progress)
        nxt = []
        for s in self.next_sets:
            nxt.append(unc.next_modality(ctx.fuser, ctx.table, rows, s, ctx.mods, sig, bs))
            ctx.step("next " + "+".join(s))
        pooled = {}
        if ctx.calibration:  # pooled over every retrieval pair
            cat = {k: np.concatenate([c[k] for c in ctx.calibration]) for k in ("sigma", "error", "rank")}
            pooled = unc.calibration(cat["sigma"], cat["error"], cat["rank"])
        by_size = {}  # mean over the subsets of each size of their mean ‖σ‖₁
        for k in sorted({len(s) for s in self.subsets}):
            vals = [np.nanmean(v) for s, v in sig.items() if len(s) == k and np.isfinite(v).any()]
            by_size[str(k)] = float(np.mean(vals)) if vals else None
        metrics = {
            "check": self._check(nxt),
            "subsets": unc.summarize_subsets(sig),
            "mean_sigma_l1_by_size": by_size,
            "next": [{k: v for k, v in n.items() if not k.startswith("_")} for n in nxt],
            "calibration": {
                "pooled_spearman_recon_error": pooled.get("spearman_recon_error"),
                "pooled_spearman_rank": pooled.get("spearman_rank"),
                "n": int(sum(len(c["sigma"]) for c in ctx.calibration)),
            },
        }
        return TaskResult(metrics, {"sigma": sig, "next": nxt, "floor": unc.sigma_l1_floor(ctx.fuser)})


    def _check(self, nxt: list[dict]) -> dict:
        """σ's own checks (:func:`prom3e.tasks.uncertainty.sigma_check`): the share of logσ² at the
        clip over every single-modality posterior of the test rows, how often adding a modality
        lowers mean ‖σ‖₁, and the mean over retrieval pairs of Spearman(‖σ‖₁, rank)."""
        ctx, bs = self.ctx, self.config.batch_size
        clip = getattr(getattr(getattr(ctx.fuser, "model", None), "cfg", None), "logvar_clip", None)
        shares = []
        if clip is not None:
            for m in ctx.mods:
                r = unc.rows_with(ctx.table, ctx.test.rows, (m,))
                if len(r):
                    shares.append(unc.clip_share(ctx.fuser.encode(ctx.table.take(r), visible=[m],
                                                                  batch_size=bs).logvar, clip))
        red = [r["actual_reduction"] > 0 for n in nxt for r in n["ranking"] if r["actual_reduction"] is not None]
        per_pair = [spearman(c["sigma"], c["rank"]) for c in ctx.calibration]
        return unc.sigma_check(float(np.mean(shares)) if shares else None, mean_or_none(red),
                               mean_or_none(per_pair))


class Gap(Task):
    """Modality gap of raw inputs vs hidden μ vs reconstructions on up to 1000 (paired) test rows."""

    name = "gap"

    def steps(self) -> int:
        return len(self.ctx.mods)

    def result(self) -> TaskResult:
        ctx = self.ctx
        rows = stratified_subsample(ctx.test.rows, ctx.y, 1000, self.config.seed + 3)
        n, mods, seed = len(rows), ctx.mods, self.config.seed
        mu: dict[str, np.ndarray] = {}
        rec: dict[tuple[str, str], np.ndarray] = {}
        pres = {m: ctx.has(m, rows) for m in mods}
        for a in mods:
            enc = ctx.encode(rows[pres[a]], (a,), Need([t for t in mods if t != a], posterior=True))
            if enc.post is not None:
                mu[a] = np.full((n, enc.post.mu.shape[1]), np.nan, np.float32)
                mu[a][pres[a]] = enc.post.mu.numpy()
                for t, v in enc.recon.items():
                    rec[(a, t)] = np.full((n, v.shape[1]), np.nan, np.float32)
                    rec[(a, t)][pres[a]] = v.numpy()
            ctx.step("gap " + a)
        raw_pairs, hid_pairs, rec_pairs = [], [], []
        for i, a in enumerate(mods):
            for b in mods[i + 1:]:
                both = pres[a] & pres[b]
                fa, fb = ctx.raw(a, rows[both]), ctx.raw(b, rows[both])
                raw_pairs.append({"a": a, "b": b, "n": int(both.sum()), **gap_mod.compare(fa, fb, seed)})
                if a in mu and b in mu:
                    hid_pairs.append({"a": a, "b": b, "n": int(both.sum()),
                                      **gap_mod.compare(mu[a][both], mu[b][both], seed)})
                for src, dst, fd in ((a, b, fb), (b, a, fa)):
                    if (src, dst) in rec:
                        rec_pairs.append({"from": src, "to": dst, "n": int(both.sum()),
                                          **gap_mod.compare(rec[(src, dst)][both], fd, seed)})
        metrics = {"n_rows": n, "raw": gap_mod.summarize(raw_pairs), "hidden": gap_mod.summarize(hid_pairs),
                   "reconstruction": gap_mod.summarize(rec_pairs)}
        clouds = {
            "raw": {m: ctx.raw(m, rows[pres[m]]) for m in mods},
            "hidden": {m: mu[m][pres[m]] for m in mu},
            "reconstruction": {t: np.concatenate([rec[(a, t)][pres[a] & pres[t]] for a in mods if (a, t) in rec])
                               for t in mods if any((a, t) in rec for a in mods)},
        }
        return TaskResult(metrics, {"projection": gap_mod.projections(clouds)})


TASKS: dict[str, type[Task]] = {t.name: t for t in (Retrieval, ZeroShot, Probe, Uncertainty, Gap)}
