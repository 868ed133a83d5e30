"""birdclef22 end to end: ``observations.csv`` → stage 1 → stage 2 → evaluation + baselines.

Data: ``../shared/data/birdclef22`` (14,894 xeno-canto recordings' metadata, 152 species;
see its README). Five modalities, each through ``prom3e embed`` (library call):

- ``location``: GeoCLIP (512-d; ``-`` coordinates → missing);
- ``time_of_day``: cyclic HH:MM (``time_of_day``, 2 harmonics; ``?``, ``pm``, … → missing);
- ``call_type``: the ``type`` tags through MiniLM (``minilm_list``: mean of the items; ``[]`` → missing);
- ``cooccurring``: the ``secondary_labels`` species codes, multi-hot over the 152 species codes
  (+ one bucket for others; ``[]`` → missing, ≈ 90 % of rows);
- ``taxonomy``: ``"{order} {family} {scientific_name} ({common_name})"`` through MiniLM — the anchor.

Split: per species, seeded, 70/10/20 train/val/test (a species with one recording goes to
train; ``split`` column). ``prom3e align`` (library call) fits the heads on ``split=train``
only (SupCon, same species = positive) and maps every row → ``OUT/aligned.parquet`` (384-d).
Stage 1 is cached: embeddings are reused by ``embed`` (same spec) and the aligned table is
rebuilt only when the spec, split or alignment settings change.

Stage 2 and its evaluation go through ``experiments/stage2_study.py`` (train on ``train``,
checkpoint on ``val``, every figure on ``test``; baselines from the same split).

    .venv/bin/python experiments/birdclef22.py --stage1-only     # the aligned table only
    .venv/bin/python experiments/birdclef22.py                   # + stage 2 (default config), evaluation
    .venv/bin/python experiments/birdclef22.py --subsample 1500 --epochs 3 --fast --out /tmp/b22  # a quick check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "birdclef22"
OUT = ROOT / "experiments" / "out" / "birdclef22"
LABEL = "primary_label"
ANCHOR = "taxonomy"
MODALITIES = ("location", "time_of_day", "call_type", "cooccurring", "taxonomy")
KEEP = ["row", LABEL, "scientific_name", "common_name", "family", "order", "rating"]
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


def embed_spec(species: list[str]) -> dict:
    return {
        "batch_size": 4096,
        "id_column": "row",
        "keep": KEEP,
        "modalities": {
            "location": {"encoder": "geoclip", "columns": ["latitude", "longitude"]},
            "time_of_day": {"encoder": "time_of_day", "column": "time", "options": {"harmonics": 2}},
            "call_type": {"encoder": "minilm_list", "column": "type", "options": {"combine": "mean"}},
            "cooccurring": {"encoder": "multi_hot", "column": "secondary_labels",
                            "options": {"vocabulary": species}},
            "taxonomy": {"encoder": "minilm", "template": "{order} {family} {scientific_name} ({common_name})"},
        },
    }


def species_split(labels: np.ndarray, seed: int, fractions=SPLIT_FRACTIONS) -> np.ndarray:
    """Per class, seeded: ``round(f·n)`` rows to train (≥ 1), ``round(f·n)`` to val, the rest to
    test (≥ 1 when n ≥ 2); a class with one row goes to train. → ``str[N]`` train/val/test."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx)
        n_tr = max(1, int(round(fractions[0] * n)))
        n_va = int(round(fractions[1] * n))
        if n >= 2:
            n_tr = min(n_tr, n - 1)
            n_va = min(n_va, n - n_tr - 1)
        out[idx[:n_tr]] = "train"
        out[idx[n_tr:n_tr + n_va]] = "val"
        out[idx[n_tr + n_va:]] = "test"
    return out


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_stage1(data: Path, out: Path, seed: int = 0, subsample: int | None = None,
                 align_epochs: int = 100, progress: bool = True) -> dict:
    """Embed, split and align; return a record (paths, timings, counts). Cached."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from prom3e.align.trainer import AlignConfig, align_file
    from prom3e.data.table import atomic_write
    from prom3e.encoders.embed import embed
    from prom3e.encoders.spec import parse_spec

    out.mkdir(parents=True, exist_ok=True)
    obs_path = data / "observations.csv"
    obs = pcsv.read_csv(obs_path, convert_options=pcsv.ConvertOptions(
        column_types={"latitude": pa.string(), "longitude": pa.string(), "time": pa.string()}))
    if subsample:
        keep = np.sort(np.random.default_rng(seed).choice(obs.num_rows, min(subsample, obs.num_rows),
                                                          replace=False))
        obs = obs.take(pa.array(keep))
        obs_path = out / "observations_subsample.csv"
        atomic_write(obs_path, lambda tmp: pcsv.write_csv(obs, tmp))
    species = sorted(set(obs.column(LABEL).to_pylist()))
    spec = embed_spec(species)
    cfg = AlignConfig(epochs=align_epochs, seed=seed)
    key = _fingerprint({"spec": spec, "seed": seed, "subsample": subsample, "split": SPLIT_FRACTIONS,
                        "align": cfg.__dict__, "rows": obs.num_rows})
    record_path = out / "stage1.json"
    aligned = out / "aligned.parquet"
    if aligned.exists() and record_path.exists():
        rec = json.loads(record_path.read_text())
        if rec.get("fingerprint") == key:
            rec["cached"] = True
            return rec

    t0 = time.perf_counter()
    embedded = out / "embedded.parquet"
    s = embed(obs_path, parse_spec(spec, "birdclef22.embed_spec"), embedded, progress=progress)
    t_embed = time.perf_counter() - t0
    t = pq.read_table(embedded)
    split = species_split(np.asarray(t.column(LABEL).to_pylist(), dtype=object), seed)
    features = out / "features.parquet"
    idx = t.schema.get_field_index(MODALITIES[0])
    t = t.add_column(idx, "split", pa.array(split.tolist(), pa.string()))
    atomic_write(features, lambda tmp: pq.write_table(t, tmp))

    t0 = time.perf_counter()
    al = align_file(features, ANCHOR, aligned, out / "align", LABEL, cfg, "split=train", progress=progress)
    t_align = time.perf_counter() - t0
    counts = {k: int((split == k).sum()) for k in ("train", "val", "test")}
    rec = {
        "fingerprint": key, "cached": False, "rows": s.written, "species": len(species),
        "split": counts, "embed_counts": s.counts, "dim": al.dim,
        "align": {m: {k: r[k] for k in ("pairs", "best_epoch", "epochs_run", "val_top1") if k in r}
                  for m, r in al.record["modalities"].items() if "pairs" in r},
        "seconds": {"embed": round(t_embed, 1), "align": round(t_align, 1)},
        "paths": {"features": str(features), "aligned": str(aligned), "align": str(out / "align")},
    }
    atomic_write(record_path, lambda tmp: Path(tmp).write_text(json.dumps(rec, indent=1)))
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subsample", type=int, help="use this many random rows (a quick check)")
    ap.add_argument("--align-epochs", type=int, default=100)
    ap.add_argument("--stage1-only", action="store_true", help="stop after the aligned table")
    ap.add_argument("--config", help="stage-2 training options (YAML/JSON, TrainConfig fields)")
    ap.add_argument("--epochs", type=int, help="stage-2 epochs (overrides --config)")
    ap.add_argument("--model", default="base", help="stage-2 named architecture")
    ap.add_argument("--fast", action="store_true",
                    help="the ablation sweep's checks (no uncertainty study, μ probes of pairs on ≤ 4000 rows)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if not (args.data / "observations.csv").exists():
        print(f"{args.data}: birdclef22 not found (see ../shared/data/README.md)", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(args.threads)
    rec = build_stage1(args.data, args.out, args.seed, args.subsample, args.align_epochs,
                       progress=not args.quiet)
    print(f"stage 1: {rec['rows']} rows, split {rec['split']}, "
          f"{'cached' if rec['cached'] else 'built'} → {rec['paths']['aligned']} "
          f"(embed {rec['seconds']['embed']} s, align {rec['seconds']['align']} s)")
    if args.stage1_only:
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import stage2_study

    options = stage2_study.load_options(args.config)
    if args.epochs:
        options["epochs"] = args.epochs
    options.setdefault("model", args.model)
    res = stage2_study.run_study(
        Path(rec["paths"]["aligned"]), Path(rec["paths"]["features"]), args.out / "stage2",
        label=LABEL, class_modality=ANCHOR, options=options, seed=args.seed, threads=args.threads,
        progress=not args.quiet, full=not args.fast)
    print(json.dumps(res["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
