"""The stage-2 study harness: train one configuration on a split table, evaluate it, and
measure it against the baselines of the same split (issue 11's targets).

Real tables (birdclef22, ucsc-plants) carry a ``split`` column (train / val / test):
stage 2 trains on ``train`` and keeps its best epoch by validation R@1 on ``val``
(``TrainConfig.split_column``); ``prom3e evaluate`` chooses δ on ``val`` and reports on
``test``; every linear probe — on the raw encoder features, the aligned features, μ and the
hidden tokens — is fitted on ``train`` with its C chosen on ``val`` from the same grid, and
scored on ``test``. The synthetic default follows ``prom3e demo`` (20 000 rows, 20 % held
out, evaluation caps and split as the demo), so its figures compare with docs/RESULTS.md.

Checks (``checks`` in the result):
- σ: mean over (visible, target) pairs of Spearman(‖σ‖₁, rank of the true target); the share
  of (set, added modality) cases whose mean ‖σ‖₁ drops; the share of logσ² within 0.5 of a
  clip (over test rows, every visible set of 1–2 modalities);
- fusion: per 2-modality set, max(μ, tokens) probe accuracy vs the raw-feature probe;
- zero-shot: 2-modality inversion top-1 vs the best single modality's;
- reconstruction vs plain cross-modal query, R@1, per single-modality pair.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

PROBE_C = (0.01, 0.1, 1.0)
PROBE_ITER = 100
CLIP_WITHIN = 0.5


def load_options(path: str | None) -> dict:
    if not path:
        return {}
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping of training options")
    return data


def _with_meta(table, **cols):
    from prom3e.data.table import ModalTable

    return ModalTable(list(table.modalities), table.features, table.present, {**table.meta, **cols}, table.source)


# --- probes ---------------------------------------------------------------------------------

def select_probe(xtr, ytr, xva, yva, xte, yte) -> dict:
    """C from PROBE_C by validation accuracy (ties: the smaller C), then the test scores."""
    from prom3e.tasks.probe import linear_probe

    best = None
    for c in PROBE_C:
        acc = linear_probe(xtr, ytr, xva, yva, C=c, max_iter=PROBE_ITER)["acc"]
        if acc is not None and (best is None or acc > best[1] + 1e-12):
            best = (c, acc)
    if best is None:
        return {"C": None, "val_acc": None, "acc": None, "macro_f1": None}
    r = linear_probe(xtr, ytr, xte, yte, C=best[0], max_iter=PROBE_ITER)
    return {"C": best[0], "val_acc": best[1], "acc": r["acc"], "macro_f1": r["macro_f1"], "n_test": len(yte)}


def _parts(table, split: np.ndarray, y: np.ndarray, s: tuple[str, ...],
           max_train: int | None = None) -> dict[str, np.ndarray]:
    from prom3e.tasks.common import stratified_subsample

    ok = table.present[:, [table.index(m) for m in s]].all(1) & (y >= 0)
    out = {p: np.flatnonzero(ok & (split == p)) for p in ("train", "val", "test")}
    out["train"] = stratified_subsample(out["train"], y, max_train, seed=0)
    return out


def baseline_probes(raw, aligned, y, split, sets, cache: Path, max_train: int | None = None) -> dict:
    """LR on the raw encoder features and on the aligned features, per visible set (cached)."""
    key = json.dumps({"sets": [list(s) for s in sets], "C": PROBE_C, "iter": PROBE_ITER, "max_train": max_train,
                      "n": len(y), "split": int(np.sum(split == "train")), "y": int(y.sum())})
    if cache.exists():
        c = json.loads(cache.read_text())
        if c.get("key") == key:
            return c["probes"]
    out = {}
    for s in sets:
        r = _parts(aligned, split, y, s, max_train)
        res = {}
        for name, t in (("raw", raw), ("aligned", aligned)):
            x = np.concatenate([t.feature(m) for m in s], 1)
            res[name] = select_probe(x[r["train"]], y[r["train"]], x[r["val"]], y[r["val"]],
                                     x[r["test"]], y[r["test"]])
        out["+".join(s)] = res
    cache.write_text(json.dumps({"key": key, "probes": out}, indent=1))
    return out


def model_probes(fuser, table, y, split, sets, kinds=("mu", "tokens"), max_train: int | None = None) -> dict:
    """μ, all-token and skip probes per visible set; the tokens (6·E-d) only for 2-modality sets.
    ``skip``: μ beside the visible modalities' aligned embeddings (the fused representation
    with a skip connection to its inputs)."""
    out = {}
    all_kinds = kinds
    for s in sets:
        kinds = all_kinds if len(s) > 1 else tuple(k for k in all_kinds if k != "tokens")
        r = _parts(table, split, y, s, max_train)
        rows = np.concatenate([r["train"], r["val"], r["test"]])
        post = fuser.encode(table.take(rows), visible=list(s), hidden="tokens" in kinds)
        feats = {"mu": post.mu.numpy()}
        if "tokens" in kinds:
            feats["tokens"] = post.hidden.flatten(1).numpy()
        if "skip" in kinds:
            feats["skip"] = np.concatenate([feats["mu"], *(table.feature(m)[rows] for m in s)], 1)
        n1, n2 = len(r["train"]), len(r["train"]) + len(r["val"])
        res = {}
        for k in kinds:
            x = feats[k]
            res[k] = select_probe(x[:n1], y[r["train"]], x[n1:n2], y[r["val"]], x[n2:], y[r["test"]])
        out["+".join(s)] = res
    return out


# --- checks ---------------------------------------------------------------------------------

def clip_shares(fuser, table, rows, sets) -> dict:
    """Share of logσ² within CLIP_WITHIN of ±clip, and mean ‖σ‖₁, per visible-set size."""
    from prom3e.tasks.uncertainty import rows_with

    clip = float(fuser.model.cfg.logvar_clip)
    at, total, sig = {}, {}, {}
    for s in sets:
        r = rows_with(table, rows, s)
        if not len(r):
            continue
        post = fuser.encode(table.take(r), visible=list(s))
        k = str(len(s))
        at[k] = at.get(k, 0) + int(((clip - post.logvar.abs()) < CLIP_WITHIN).sum())
        total[k] = total.get(k, 0) + post.logvar.numel()
        sig.setdefault(k, []).append(float(post.sigma_l1.mean()))
    share = sum(at.values()) / max(1, sum(total.values()))
    return {"clip_share": share, "clip_share_by_size": {k: at[k] / total[k] for k in at},
            "sigma_l1_by_size": {k: float(np.mean(v)) for k, v in sig.items()}}


def sigma_drops(fuser, table, rows, mods, max_size: int = 2) -> dict:
    """Share of (S, m) cases, |S| ≤ max_size, whose mean ‖σ‖₁ over the rows having S ∪ {m} drops
    when m is added (the 'actual reduction' of ``prom3e evaluate``'s uncertainty study)."""
    from prom3e.tasks.common import visible_sets
    from prom3e.tasks.uncertainty import sigma_by_subset

    sig = sigma_by_subset(fuser, table, rows, visible_sets(mods, max_size + 1))
    drops = []
    for s in visible_sets(mods, max_size):
        for m in mods:
            if m in s:
                continue
            key = tuple(n for n in mods if n in (*s, m))
            both = np.isfinite(sig[s]) & np.isfinite(sig[key])
            if both.any():
                drops.append(float(np.mean(sig[s][both] - sig[key][both])) > 0)
    return {"frac_sigma_drops": float(np.mean(drops)) if drops else None, "n_sigma_cases": len(drops)}


def checks(metrics: dict, probes: dict | None, base: dict | None, sigma: dict) -> dict:
    from prom3e.tasks.common import mean_or_none

    pairs = metrics["retrieval"]["pairs"]
    out: dict[str, Any] = {}
    sp = [p["spearman_sigma_rank"] for p in pairs]
    out["spearman_sigma_rank_mean"] = mean_or_none(sp)
    out["spearman_sigma_error_mean"] = mean_or_none([p["spearman_sigma_recon_error"] for p in pairs])
    claim = metrics["claims"].get("adding_modality_lowers_sigma")
    if claim is not None:
        out["frac_sigma_drops"] = claim.get("frac_mean_lower")
    out.update(sigma)
    singles = [p for p in pairs if len(p["visible"]) == 1 and p["r1_cross"] is not None]
    out["frac_recon_ge_cross"] = mean_or_none([p["r1_reconstruction"] >= p["r1_cross"] for p in singles])
    out["n_single_pairs"] = len(singles)
    s = metrics["retrieval"]["summary"]
    for k in ("r1_cross_mean", "r1_reconstruction_mean", "r1_inversion_mean"):
        out[k] = s[k]
    if "zeroshot" in metrics:
        z = metrics["claims"].get("two_visible_beat_one_zeroshot", {})
        out["frac_zs_pair_beats_single"] = z.get("frac_better_than_best_single")
        out["zs_top1_inversion_mean"] = metrics["zeroshot"]["summary"]["top1_inversion_mean"]
    if probes is not None and base is not None:
        rows = []
        for key, res in probes.items():
            # the model's probe: the kind with the best validation accuracy (never chosen on test)
            pick = max((v for v in res.values() if v["val_acc"] is not None), key=lambda v: v["val_acc"])
            b = base[key]
            rows.append({"visible": key, "ours": pick["acc"], **{k: v["acc"] for k, v in res.items()},
                         "raw": b["raw"]["acc"], "aligned": b["aligned"]["acc"]})
        out["probe"] = rows
        pairs2 = [r for r in rows if "+" in r["visible"]]
        out["frac_probe_pair_ge_raw"] = mean_or_none([r["ours"] >= r["raw"] for r in pairs2])
        out["probe_pair_gap_mean"] = mean_or_none([r["ours"] - r["raw"] for r in pairs2])
        out["frac_probe_mu_pair_ge_raw"] = mean_or_none([r["mu"] >= r["raw"] for r in pairs2])
        if all("skip" in r for r in pairs2):
            out["frac_probe_skip_pair_ge_raw"] = mean_or_none([r["skip"] >= r["raw"] for r in pairs2])
            out["probe_skip_gap_mean"] = mean_or_none([r["skip"] - r["raw"] for r in pairs2])
    elif "probe" in metrics:  # synthetic: evaluate's probes (C = 1 for every feature)
        ps = metrics["probe"]["sets"]
        p2 = [p for p in ps if len(p["visible"]) == 2]
        out["frac_probe_pair_ge_raw"] = mean_or_none(
            [max(p["acc_mu"], p["acc_tokens"] or 0) >= p["acc_raw"] for p in p2])
        out["probe_pair_gap_mean"] = mean_or_none([max(p["acc_mu"], p["acc_tokens"] or 0) - p["acc_raw"] for p in p2])
        out["probe_acc_raw_mean"] = metrics["probe"]["summary"]["acc_raw_mean"]
        out["probe_acc_mu_mean"] = metrics["probe"]["summary"]["acc_mu_mean"]
    return out


class SampledFuser:
    """A fuser whose reconstructions average ``n`` seeded posterior draws instead of decoding μ."""

    def __init__(self, fuser, n: int):
        self._f, self.n = fuser, n
        self.modalities, self.dims, self.model = fuser.modalities, fuser.dims, fuser.model
        self.aligner = None

    def encode(self, *a, **k):
        return self._f.encode(*a, **k)

    def reconstruct(self, batch, targets=None, visible=None, n_samples=0, seed=0, batch_size=1024, **k):
        return self._f.reconstruct(batch, targets, visible, n_samples=self.n, seed=seed, batch_size=batch_size, **k)


# --- runs -----------------------------------------------------------------------------------

def train_config(options: dict, seed: int, threads: int, label: str | None, split: bool):
    from prom3e.train.loop import TrainConfig

    opts = copy.deepcopy(options)
    opts.setdefault("seed", seed)
    opts.setdefault("threads", threads)
    if label is not None:
        opts.setdefault("label_column", label)
    if split:
        opts.setdefault("split_column", "split")
    return TrainConfig.from_dict(opts)


def run_study(aligned: Path, features: Path | None, out: Path, label: str, class_modality: str,
              options: dict, seed: int = 0, threads: int = 1, progress: bool = False, full: bool = True,
              decode_draws: int = 0) -> dict:
    """Train ``options`` on the table's train split, evaluate on test; return the result.

    ``full``: the whole evaluation (uncertainty study included) and probes on μ (and the tokens,
    for 2-modality sets) over every training row; otherwise (the ablation sweep) retrieval + zero-shot, ‖σ‖₁ drops from
    ``sigma_by_subset`` and μ probes of the 2-modality sets on ≤ 4000 training rows (the raw
    baselines then use the same rows)."""
    import torch

    from prom3e.api import Fuser
    from prom3e.data.labels import encode_labels
    from prom3e.data.table import read_table
    from prom3e.tasks.common import visible_sets
    from prom3e.tasks.evaluate import evaluate
    from prom3e.train.loop import train

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    table = read_table(aligned)
    split = np.asarray(table.meta["split"]).astype(str)
    y, _ = encode_labels(table.label(label))
    cfg = train_config(options, seed, threads, label, split=True)
    t0 = time.perf_counter()
    summary = train(table, out / "run", cfg, progress=progress)
    t_train = time.perf_counter() - t0
    fuser = Fuser.load(out / "run", device="cpu", precision="fp32")
    ev_fuser = SampledFuser(fuser, decode_draws) if decode_draws else fuser
    part = np.where(split == "train", "unused", split)  # δ on val, figures on test
    t0 = time.perf_counter()
    tasks = ("retrieval", "zeroshot", "uncertainty") if full else ("retrieval", "zeroshot")
    metrics = evaluate(ev_fuser, _with_meta(table, eval_part=part), label=label, out_dir=out / "eval",
                       split_column="eval_part", max_fit=None, max_test=None, class_modality=class_modality,
                       tasks=tasks, seed=seed, threads=threads, plots=full)
    test_rows = np.flatnonzero(split == "test")
    sigma = clip_shares(fuser, table, test_rows, visible_sets(list(table.modalities), 2))
    if not full:
        sigma.update(sigma_drops(fuser, table, test_rows, list(table.modalities)))
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    mods = [m for m in table.modalities if m != class_modality]
    sets = visible_sets(mods, 2) if full else [s for s in visible_sets(mods, 2) if len(s) == 2]
    kinds, cap = (("mu", "tokens", "skip"), None) if full else (("mu", "skip"), 4000)
    base = probes = None
    if features is not None and sets:
        raw = read_table(features)
        cache = out.parent / f"baseline_probes{'' if cap is None else f'_cap{cap}'}.json"
        base = baseline_probes(raw, table, y, split, sets, cache, cap)
        probes = model_probes(fuser, table, y, split, sets, kinds, cap)
    t_probe = time.perf_counter() - t0
    res = {"options": options, "seed": seed, "full": full,
           "train": {k: summary[k] for k in ("epochs", "best_val_r1_mean", "parameters")},
           "seconds": {"train": round(t_train, 1), "evaluate": round(t_eval, 1), "probes": round(t_probe, 1)},
           "summary": checks(metrics, probes, base, sigma)}
    (out / "result.json").write_text(json.dumps(res, indent=1))
    return res


def run_synthetic(out: Path, options: dict, seed: int = 0, threads: int = 1, n: int = 20000,
                  epochs: int = 15, decode_draws: int = 0, progress: bool = False, full: bool = True) -> dict:
    """``prom3e demo``'s protocol with ``options`` on top; evaluation as the demo (all tasks but
    gap; ``full=False``: retrieval, zero-shot and probes, ‖σ‖₁ drops from ``sigma_by_subset``)."""
    import torch

    from prom3e.api import Fuser
    from prom3e.data.synthetic import SynthConfig, generate_table
    from prom3e.tasks.common import visible_sets
    from prom3e.tasks.evaluate import evaluate
    from prom3e.train.loop import train

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    table = generate_table(SynthConfig(n=n, seed=seed))
    perm = np.random.default_rng(seed).permutation(len(table))
    n_test = int(len(table) * 0.2)
    test, fit = table.take(np.sort(perm[:n_test])), table.take(np.sort(perm[n_test:]))
    opts = {"epochs": epochs, **options}
    cfg = train_config(opts, seed, threads, None, split=False)
    t0 = time.perf_counter()
    summary = train(fit, out / "run", cfg, progress=progress)
    t_train = time.perf_counter() - t0
    fuser = Fuser.load(out / "run", device="cpu", precision="fp32")
    ev_fuser = SampledFuser(fuser, decode_draws) if decode_draws else fuser
    t0 = time.perf_counter()
    tasks = ("retrieval", "zeroshot", "probe") + (("uncertainty",) if full else ())
    metrics = evaluate(ev_fuser, test, label="species", out_dir=out / "eval", seed=seed, threads=threads,
                       tasks=tasks, plots=full)
    rows = np.arange(len(test))[:2000]
    sigma = clip_shares(fuser, test, rows, visible_sets(list(test.modalities), 2))
    if not full:
        sigma.update(sigma_drops(fuser, test, rows, list(test.modalities)))
    t_eval = time.perf_counter() - t0
    res = {"options": options, "seed": seed, "full": full,
           "train": {k: summary[k] for k in ("epochs", "best_val_r1_mean", "parameters")},
           "seconds": {"train": round(t_train, 1), "evaluate": round(t_eval, 1)},
           "summary": checks(metrics, None, None, sigma)}
    (out / "result.json").write_text(json.dumps(res, indent=1))
    return res
