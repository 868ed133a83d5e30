"""Stage-2 evaluation on real data: ucsc-plants (../shared/data/ucsc-plants; see its README).

1. The table, one of:
   - ``aligned`` (preferred): stage 1's ``experiments/out/ucsc_aligned.parquet`` from
     ``experiments/ucsc_stage1.py`` — image (EfficientNet-Lite0), taxonomic text (MiniLM) and date,
     each aligned to the image anchor — with its ``split`` column (stratified 25 % hold-out);
   - ``projection`` (fallback while stage 1 has not run; ``--table projection`` forces it),
     written to ``experiments/out/ucsc_projection.parquet``:
     * ``image``: the 1280-d features, PCA to 64 dims (basis fitted on the training rows),
       L2-normalised;
     * ``text``: a *taxonomy-structured random code*, not a language model: one 64-d vector
       per species, normalise(0.55·R_family + 0.6·R_genus + 0.6·R_species) with fixed seeded
       Gaussian vectors R, so genus- and family-mates are closer than strangers;
     * ``date``: [sin, cos] of the day of year and the year scaled to [−1, 1] (3 dims);
     * ``split``: stratified 25 % hold-out by species (seeded).
     Image and text are *not* aligned here, so plain cross-modal retrieval (δ = 0) between
     them is at chance by construction: only the model's reconstructions bridge them.
2. ``prom3e train`` on the ``split=train`` rows (label ``scientific_name``: same-species rows
   are not negatives) → ``experiments/out/ucsc_run_<table>/``.
3. ``prom3e evaluate`` on the whole table with ``--split-column split``: every number is on
   the hold-out rows; δ and the probes are fitted on the training rows (README: a linear
   probe on the raw 1280-d image features reaches ≈ 0.66 on such a hold-out).
   → ``experiments/out/ucsc_eval_<table>/`` (metrics.json, report.md, figures).

    .venv/bin/python experiments/ucsc_eval.py                      # aligned if present, else projection
    .venv/bin/python experiments/ucsc_eval.py --table projection --epochs 40 --model base

On the aligned table (the published run: base, 40 epochs, seed 0) the summary goes to
``experiments/results/ucsc_eval.json``, rendered into docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from docgen import load_result, renderer, save_result

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ucsc-plants"
OUT = ROOT / "experiments" / "out"
LABEL = "scientific_name"


def _code(names: np.ndarray, dim: int, salt: str) -> np.ndarray:
    """A fixed Gaussian vector per distinct name (seeded by the name: order-independent)."""
    uniq, inv = np.unique(names.astype(str), return_inverse=True)
    vecs = np.stack([np.random.default_rng(zlib.crc32(f"{salt}:{u}".encode())).normal(size=dim)
                     for u in uniq])  # one per distinct name (53 species), not per row
    return (vecs / np.sqrt(dim))[inv.reshape(-1)]


def build_projection(data: Path, out: Path, dim: int = 64, seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from prom3e.data.labels import encode_labels
    from prom3e.data.table import vectors_to_arrow
    from prom3e.io import atomic_write
    from prom3e.tasks.common import stratified_split

    obs = pcsv.read_csv(data / "observations.csv")
    img = np.load(data / "image_effnet_lite0_f16.npy").astype(np.float32)
    if len(img) != obs.num_rows:
        raise SystemExit(f"{data}: {len(img)} image rows but {obs.num_rows} observations")
    y, _ = encode_labels(obs[LABEL].to_numpy(zero_copy_only=False))
    train, _ = stratified_split(y, 0.75, seed)
    split = np.full(len(img), "test", dtype=object)
    split[train] = "train"
    mean = img[train].mean(0)
    _, _, vt = np.linalg.svd(img[train] - mean, full_matrices=False)
    z = (img - mean) @ vt[:dim].T
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    col = {c: obs[c].to_numpy(zero_copy_only=False) for c in ("family", "genus", LABEL)}
    text = (0.55 * _code(col["family"], dim, "family") + 0.6 * _code(col["genus"], dim, "genus")
            + 0.6 * _code(col[LABEL], dim, "species"))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    day = pc.day_of_year(obs["observed_on"]).to_numpy(zero_copy_only=False).astype(np.float32)
    year = pc.year(obs["observed_on"]).to_numpy(zero_copy_only=False).astype(np.float32)
    span = max(float(year.max() - year.min()), 1.0)
    date = np.stack([np.sin(2 * np.pi * day / 365.25), np.cos(2 * np.pi * day / 365.25),
                     2 * (year - year.min()) / span - 1], 1)
    table = pa.table({
        **{c: obs[c] for c in ("row", "inat_id", LABEL, "genus", "family", "observed_on")},
        "split": pa.array(split.tolist(), pa.string()),
        "image": vectors_to_arrow(z), "text": vectors_to_arrow(text), "date": vectors_to_arrow(date),
    })
    path = out / "ucsc_projection.parquet"
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def main(argv: list[str] | None = None) -> int:
    from prom3e.cli import main as cli

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", choices=["auto", "aligned", "projection"], default="auto")
    ap.add_argument("--model", default="base", choices=["tiny", "base", "paper"])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest on a busy machine)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"skip: {DATA} not found", file=sys.stderr)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    aligned = args.out / "ucsc_aligned.parquet"
    kind = args.table if args.table != "auto" else ("aligned" if aligned.exists() else "projection")
    if kind == "aligned" and not aligned.exists():
        raise SystemExit(f"{aligned} not found: run experiments/ucsc_stage1.py first")
    table = aligned if kind == "aligned" else build_projection(DATA, args.out, seed=args.seed)
    run, ev = args.out / f"ucsc_run_{kind}", args.out / f"ucsc_eval_{kind}"

    # train on the training rows only
    from prom3e.data.table import read_table, write_parquet

    t = read_table(table)
    train_rows = np.flatnonzero(np.asarray(t.meta["split"]).astype(str) == "train")
    train_path = args.out / f"ucsc_{kind}_train.parquet"
    write_parquet(t.take(train_rows), train_path)
    t0 = time.perf_counter()
    rc = cli(["train", "--data", str(train_path), "--out", str(run), "--model", args.model,
              "--epochs", str(args.epochs), "--label", LABEL, "--seed", str(args.seed), "--threads", str(args.threads),
              "--quiet", "--overwrite"])
    if rc:
        return rc
    t1 = time.perf_counter()
    rc = cli(["evaluate", "--model", str(run), "--data", str(table), "--label", LABEL, "--out", str(ev),
              "--split-column", "split", "--max-fit", "0", "--max-test", "0", "--seed", str(args.seed),
              "--threads", str(args.threads), "--quiet", "--overwrite"])
    t2 = time.perf_counter()
    print(f"{kind} table: trained in {t1 - t0:.0f}s, evaluated in {t2 - t1:.0f}s → {ev}")
    if rc == 0 and kind == "aligned":
        command = "python experiments/ucsc_eval.py --table aligned" + "".join(
            f" --{k} {getattr(args, k)}" for k, d in (("model", "base"), ("epochs", 40), ("seed", 0))
            if getattr(args, k) != d)
        print(f"wrote {save_result(NAME, summarise(run, ev, command, t1 - t0, t2 - t1))}")
    return rc


NAME = "ucsc_eval"


def summarise(run: Path, ev: Path, command: str, train_s: float, eval_s: float) -> dict:
    import json

    m = json.loads((ev / "metrics.json").read_text())
    r = json.loads((run / "metrics.json").read_text())
    keep = ("visible", "target", "n_query", "n_gallery", "delta", "r1_cross", "r1_reconstruction", "r1_inversion",
            "r5_cross", "r5_inversion")
    return {"command": command, "train_seconds": round(train_s), "eval_seconds": round(eval_s),
            "run": {"model": json.loads((run / "config.json").read_text())["train"]["model"], "epochs": r["epochs"],
                    "train_rows": r["train_rows"], "val_rows": r["val_rows"], "best_val_r1": r["best_val_r1_mean"]},
            "eval": {k: m["settings"][k] for k in ("n_rows", "n_fit", "n_test", "n_classes", "class_modality")},
            "retrieval": {"summary": {k: v for k, v in m["retrieval"]["summary"].items() if k != "by_visible_size"},
                          "pairs": [{k: p[k] for k in keep} for p in m["retrieval"]["pairs"]]},
            "zeroshot": [{k: z[k] for k in ("visible", "n", "delta", "top1_cross", "top1_reconstruction",
                                            "top1_inversion", "top5_inversion", "macro_inversion")}
                         for z in m["zeroshot"]["sets"]],
            "probe": [{k: p[k] for k in ("visible", "n_train", "n_test", "acc_raw", "acc_mu", "acc_tokens",
                                         "acc_reconstruction")} for p in m["probe"]["sets"]],
            "sigma": {"+".join(s["visible"]): s["sigma_l1_mean"] for s in m["uncertainty"]["subsets"]},
            "claims": m["claims"]}


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


@renderer("ucsc-eval")
def _tables() -> str:
    r = load_result(NAME)
    run, e = r["run"], r["eval"]
    n_train = run["train_rows"] + run["val_rows"]
    head = (f"`{r['command']}`: {run['model']} model, {run['epochs']} epochs on the {n_train:,} "
            f"training rows (best validation R@1 {_f(run['best_val_r1'])}; {r['train_seconds']} s), evaluation of "
            f"the {e['n_test']:,} hold-out rows with δ and the probes fitted on {e['n_fit']:,} training rows "
            f"({r['eval_seconds']} s).\n\n")
    pairs = ["| visible → target | gallery | δ | R@1 cross | R@1 recon | R@1 inversion | R@5 cross "
             "| R@5 inversion |", "|---|---|---|---|---|---|---|---|"]
    pairs += [f"| {'+'.join(p['visible'])} → {p['target']} | {p['n_gallery']:,} | {p['delta']:.1f} | "
              f"{_f(p['r1_cross'])} | {_f(p['r1_reconstruction'])} | {_f(p['r1_inversion'])} | {_f(p['r5_cross'])} | "
              f"{_f(p['r5_inversion'])} |" for p in r["retrieval"]["pairs"]]
    zs = ["| visible | zero-shot top-1 cross | recon | inversion | probe raw | probe μ | probe tokens | probe recon |",
          "|---|---|---|---|---|---|---|---|"]
    probes = {"+".join(p["visible"]): p for p in r["probe"]}
    for z in r["zeroshot"]:
        v = "+".join(z["visible"])
        p = probes.get(v, {})
        zs.append(f"| {v} | {_f(z['top1_cross'])} | {_f(z['top1_reconstruction'])} | {_f(z['top1_inversion'])} | "
                  f"{_f(p.get('acc_raw'))} | {_f(p.get('acc_mu'))} | {_f(p.get('acc_tokens'))} | "
                  f"{_f(p.get('acc_reconstruction'))} |")
    sig = ", ".join(f"{k} {v:.1f}" for k, v in r["sigma"].items() if v is not None)
    return head + "\n".join(pairs) + "\n\n" + "\n".join(zs) + f"\n\nMean ‖σ‖₁ per visible subset: {sig}."


if __name__ == "__main__":
    sys.exit(main())
