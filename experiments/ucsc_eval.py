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
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np

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

    from prom3e.data.table import vectors_to_arrow
    from prom3e.io import atomic_write
    from prom3e.tasks.common import encode_labels, stratified_split

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
              "--quiet"])
    if rc:
        return rc
    t1 = time.perf_counter()
    rc = cli(["evaluate", "--model", str(run), "--data", str(table), "--label", LABEL, "--out", str(ev),
              "--split-column", "split", "--max-fit", "0", "--max-test", "0", "--seed", str(args.seed),
              "--threads", str(args.threads), "--quiet"])
    print(f"{kind} table: trained in {t1 - t0:.0f}s, evaluated in {time.perf_counter() - t1:.0f}s → {ev}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
