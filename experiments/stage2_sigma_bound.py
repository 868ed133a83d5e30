"""How far could any per-row uncertainty go? A reference for Spearman(‖σ‖₁, rank).

For a trained run and each (visible set V, target t) pair, the rank of the true target among
the test gallery (the model's inversion query at the evaluated δ, as ``prom3e evaluate`` ranks
it) is predicted from V's aligned inputs alone by a k-nearest-neighbour regression of log-rank
fitted on the other half of the test rows (2-fold, seeded). Its Spearman with the rank
estimates how much of the retrieval difficulty is predictable from the inputs at all — a
reference for what a per-row ‖σ‖₁ could express (σ is shared by every target of V, so it
can reach less than a per-pair predictor).

A second reference is a ceiling, not a predictor: the *oracle* score of a row is the mean over
V's targets of its true rank's percentile (it reads the test outcome). No per-row score shared
by every target of V can follow each target's rank much better, so its mean Spearman bounds
what ‖σ‖₁ can reach on this data and model.

    .venv/bin/python experiments/stage2_sigma_bound.py experiments/out/stage2/birdclef22/RUN [--table T]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def knn_predict(x_fit: np.ndarray, y_fit: np.ndarray, x: np.ndarray, k: int = 25) -> np.ndarray:
    import torch

    d = torch.cdist(torch.from_numpy(x).float(), torch.from_numpy(x_fit).float())
    idx = d.topk(min(k, len(x_fit)), largest=False).indices
    return torch.from_numpy(y_fit)[idx].float().mean(1).numpy()


def bound(run: Path, aligned: Path, seed: int = 0) -> dict:
    import torch
    from scipy.stats import rankdata

    from prom3e.api import Fuser
    from prom3e.data.table import read_table
    from prom3e.metrics import dedup_gallery, l2n, spearman
    from prom3e.tasks.common import mean_or_none
    from prom3e.tasks.retrieval import query_mean, ranks_for_deltas
    from prom3e.tasks.uncertainty import rows_with

    torch.set_num_threads(1)
    table = read_table(aligned)
    split = np.asarray(table.meta["split"]).astype(str)
    fuser = Fuser.load(run / "run", precision="fp32")
    pairs = json.loads((run / "eval" / "metrics.json").read_text())["retrieval"]["pairs"]
    test = np.flatnonzero(split == "test")
    galleries = {}
    for t in table.modalities:
        r = test[table.present[test, table.index(t)]]
        g, inv = dedup_gallery(table.feature(t)[r])
        where = np.full(len(table), -1, np.int64)
        where[r] = inv.numpy()
        galleries[t] = (g, where)
    out, kept, oracle = [], [], {}
    for p in pairs:
        s, t = tuple(p["visible"]), p["target"]
        rows = rows_with(table, test, s)
        rows = rows[table.present[rows, table.index(t)]]
        if len(rows) < 40:
            continue
        batch = table.take(rows)
        recon = l2n(fuser.reconstruct(batch, targets=[t], visible=list(s))[t])
        sigma = fuser.encode(batch, visible=list(s)).sigma_l1.numpy()
        query = query_mean([table.feature(v)[rows] for v in s])
        g, where = galleries[t]
        rank = ranks_for_deltas(query, recon, g, torch.from_numpy(where[rows]), (p["delta"],))[0].numpy()
        x = np.concatenate([table.feature(v)[rows] for v in s], 1)
        half = np.random.default_rng(seed).random(len(rows)) < 0.5
        pred = np.empty(len(rows))
        y = np.log(rank.astype(np.float64))
        for a in (half, ~half):
            pred[~a] = knn_predict(x[a], y[a], x[~a])
        out.append({"visible": "+".join(s), "target": t, "n": len(rows), "rho_sigma": spearman(sigma, rank),
                    "rho_knn": spearman(pred, rank)})
        pct = rankdata(rank) / len(rank)
        for i, r in enumerate(rows):
            oracle.setdefault(out[-1]["visible"], {}).setdefault(int(r), []).append(pct[i])
        kept.append((out[-1], rows, rank))
    for o, rows, rank in kept:
        score = oracle[o["visible"]]
        o["rho_oracle"] = spearman(np.array([np.mean(score[int(r)]) for r in rows]), rank)
    return {"pairs": out, "rho_sigma_mean": mean_or_none([o["rho_sigma"] for o in out]),
            "rho_knn_mean": mean_or_none([o["rho_knn"] for o in out]),
            "rho_oracle_mean": mean_or_none([o["rho_oracle"] for o in out])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a stage2_study output folder (run/, eval/)")
    ap.add_argument("--table", type=Path, default=HERE / "out" / "birdclef22" / "aligned.parquet")
    ap.add_argument("--publish", action="store_true",
                    help="write the means to experiments/results/stage2_sigma_bound.json (docs/STAGE2.md)")
    args = ap.parse_args(argv)
    res = bound(args.run, args.table)
    (args.run / "sigma_bound.json").write_text(json.dumps(res, indent=1))
    if args.publish:
        from docgen import save_result

        keys = ("rho_sigma_mean", "rho_knn_mean", "rho_oracle_mean")
        save_result("stage2_sigma_bound", {"run": args.run.name, "table": args.table.name, "n_pairs": len(res["pairs"]),
                                           **{k: res[k] for k in keys}})
    for o in res["pairs"]:
        print(f"{o['visible']:>24s} → {o['target']:<12s} n {o['n']:5d}  ρ(σ) {o['rho_sigma'] or 0:+.3f}  "
              f"ρ(kNN of inputs) {o['rho_knn'] or 0:+.3f}  ρ(oracle) {o['rho_oracle'] or 0:+.3f}")
    print(f"mean ρ(σ, rank) {res['rho_sigma_mean']:.3f}; mean ρ(kNN prediction, rank) {res['rho_knn_mean']:.3f}; "
          f"mean ρ(oracle shared score, rank) {res['rho_oracle_mean']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
