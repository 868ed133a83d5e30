"""Stage 1 on real data: ucsc-plants (../shared/data/ucsc-plants; see its README).

1. ``prom3e embed`` (library call) of the observations: taxonomic text
   ``"{family} {scientific_name} ({common_name})"`` through MiniLM (384-d) and the date
   (cyclic day-of-year + year, 3-d);
2. the feature table ``experiments/out/ucsc_features.parquet``: those plus the shipped 1280-d
   EfficientNet-Lite0 image features and a ``split`` column (stratified 25 % hold-out);
3. ``prom3e align`` (library call) to the image anchor, with species as the SupCon label,
   fitted on ``split=train`` only → ``experiments/out/ucsc_aligned.parquet`` and
   ``experiments/out/ucsc_align/`` (heads);
4. zero-shot species accuracy on the hold-out: aligned image → nearest species text
   prototype, against a logistic-regression probe on the raw image features (the README's
   ≈0.66 reference); also image+date vs image probes (a stage-1 proxy for "does the date
   help"; the fused answer comes from stage 2 on the aligned table).

    .venv/bin/python experiments/ucsc_stage1.py                  # seeds 0, 1, 2; lr 1e-4, ≤100 epochs
    .venv/bin/python experiments/ucsc_stage1.py --seeds 0 --lr 1e-3 --epochs 40 --tag lr1e-3

Seed 0's aligned table is ``experiments/out/ucsc_aligned.parquet`` (the input of
``experiments/ucsc_eval.py``). The default run writes its summary to
``experiments/results/ucsc_stage1.json`` (rendered into docs/STAGE1.md and docs/RESULTS.md);
a ``--tag``ged variant writes ``experiments/out/ucsc_stage1_metrics_TAG.json`` only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from docgen import load_result, renderer, save_result

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ucsc-plants"
OUT = ROOT / "experiments" / "out"
LABEL = "scientific_name"

SPEC = {
    "batch_size": 512,
    "id_column": "inat_id",
    "modalities": {
        "text": {"encoder": "minilm", "template": "{family} {scientific_name} ({common_name})"},
        "date": {"encoder": "date", "column": "observed_on", "options": {"year": True}},
    },
}


def embed_text_date(data: Path, out: Path) -> tuple[pa.Table, float, int]:
    """Embed the taxonomic text and the date of every observation (once for all seeds; rows
    embedded by an earlier run of this script are reused): the table, seconds, rows embedded now."""
    from prom3e.encoders.embed import embed
    from prom3e.encoders.spec import parse_spec

    t0 = time.time()
    td_path = out / "ucsc_text_date.parquet"
    s = embed(data / "observations.csv", parse_spec(SPEC, "ucsc_stage1.SPEC"), td_path)
    print("\n".join(s.lines()))
    return pq.read_table(td_path), time.time() - t0, s.embedded


def build_features(data: Path, out: Path, t: pa.Table, seed: int, tag: str = "") -> Path:
    """The text/date table plus the image features and the seed's split; return the table path."""
    from sklearn.model_selection import train_test_split

    from prom3e.data.table import vectors_to_arrow
    from prom3e.io import atomic_write

    img = np.load(data / "image_effnet_lite0_f16.npy").astype(np.float32)
    rows = t.column("obs_row").to_numpy()
    if len(img) != t.num_rows:
        raise SystemExit(f"{data}: {len(img)} image rows but {t.num_rows} observations")
    labels = np.asarray(t.column(LABEL).to_pylist(), dtype=object)
    idx = np.arange(len(rows))
    _, test = train_test_split(idx, test_size=0.25, stratify=labels, random_state=seed)
    split = np.full(len(rows), "train", dtype=object)
    split[test] = "test"
    meta = t.select([c for c in t.column_names if c not in ("text", "date")])
    meta = meta.append_column("split", pa.array(split.tolist(), pa.string()))
    image_meta = {b"prom3e.encoder": json.dumps({
        "encoder": "efficientnet_lite0", "dim": 1280, "input_kind": "image", "trainable": False,
        "options": {"source": "image_effnet_lite0_f16.npy"}}).encode()}
    table = meta.append_column(pa.field("image", pa.list_(pa.float32()), metadata=image_meta),
                               vectors_to_arrow(img[rows]))
    for m in ("text", "date"):
        table = table.append_column(t.schema.field(m), t.column(m))
    path = out / f"ucsc_features{tag}.parquet"
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def evaluate(features: Path, aligned: Path, seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from prom3e import metrics
    from prom3e.data.table import read_table

    raw, z = read_table(features), read_table(aligned)
    y = np.asarray(z.meta[LABEL], dtype=object).astype(str)
    test = np.asarray(z.meta["split"], dtype=object) == "test"
    train = ~test
    classes, first = np.unique(y[train], return_index=True)
    proto = z.feature("text")[np.flatnonzero(train)[first]]  # one text per species
    sim = z.feature("image")[test] @ proto.T
    order = np.argsort(-sim, 1)
    pred = classes[order[:, 0]]
    res: dict = {"n_train": int(train.sum()), "n_test": int(test.sum()),
                 "n_classes": int(len(classes))}

    def scores(name: str, p: np.ndarray) -> None:
        res[name] = {"acc": metrics.accuracy(y[test], p), "balanced_acc": metrics.balanced_accuracy(y[test], p),
                     "macro_f1": metrics.macro_f1(y[test], p)}

    scores("zeroshot_image_to_text", pred)
    res["zeroshot_image_to_text"]["top5"] = float(
        np.mean([y[test][i] in classes[order[i, :5]] for i in range(len(order))]))

    def probe(x: np.ndarray) -> np.ndarray:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, random_state=seed))
        return clf.fit(x[train], y[train]).predict(x[test])

    img, date = raw.feature("image"), raw.feature("date")
    t0 = time.time()
    scores("probe_raw_image", probe(img))
    scores("probe_raw_image_date", probe(np.hstack([img, date])))
    scores("probe_aligned_image", probe(z.feature("image")))
    scores("probe_date_only", probe(date))
    res["probe_seconds"] = round(time.time() - t0, 1)
    return res


def run_seed(args: argparse.Namespace, td: pa.Table, seed: int, tag: str) -> dict:
    """Split, align on the training rows, evaluate on the hold-out: one seed."""
    import torch

    from prom3e.align.trainer import AlignConfig, align_file

    torch.manual_seed(seed)
    features = build_features(args.data, args.out, td, seed, tag)
    aligned = args.out / f"ucsc_aligned{tag}.parquet"
    cfg = AlignConfig(dim=args.dim, epochs=args.epochs, lr=args.lr,
                      anchor_proj=args.anchor_proj, head=args.head, seed=seed)
    t0 = time.time()
    al = align_file(features, "image", aligned, args.out / f"ucsc_align{tag}", LABEL, cfg, "split=train",
                    overwrite=True)
    t_align = time.time() - t0
    res = evaluate(features, aligned, seed)
    res["config"] = {k: getattr(cfg, k) for k in ("dim", "epochs", "lr", "anchor_proj", "head",
                                                  "hidden", "batch_size", "seed")}
    res["dim"] = al.dim
    res["align"] = {m: {k: r[k] for k in ("pairs", "best_epoch", "epochs_run", "val_top1")
                        if k in r} for m, r in al.record["modalities"].items() if "pairs" in r}
    res["seconds"] = {"align": round(t_align, 1)}
    zs, lp = res["zeroshot_image_to_text"], res["probe_raw_image"]
    print(f"seed {seed}: zero-shot image→text: acc {zs['acc']:.3f} (balanced {zs['balanced_acc']:.3f}, "
          f"top-5 {zs['top5']:.3f}) vs linear probe on raw image {lp['acc']:.3f} "
          f"(balanced {lp['balanced_acc']:.3f}); image+date probe {res['probe_raw_image_date']['acc']:.3f}")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--anchor-proj", default="pca")
    ap.add_argument("--dim", type=int, default=None, help="D (default: 512)")
    ap.add_argument("--head", default="mlp")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    ap.add_argument("--tag", default="", help="a variant: suffix of its outputs; no result file is written")
    args = ap.parse_args(argv)
    if not (args.data / "observations.csv").exists():
        print(f"{args.data}: ucsc-plants not found (see ../shared/data/README.md)", file=sys.stderr)
        return 1
    seeds = [int(v) for v in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    td, t_embed, n_embedded = embed_text_date(args.data, args.out)
    per_seed = {}
    for seed in seeds:
        suffix = f"_{args.tag}" if args.tag else ("" if seed == 0 else f"_seed{seed}")
        per_seed[str(seed)] = run_seed(args, td, seed, suffix)
    result = {"command": "python experiments/ucsc_stage1.py" + (f" --seeds {args.seeds}" if args.seeds != "0,1,2"
                                                                else ""),
              "embed_seconds": round(t_embed, 1), "embedded_rows": n_embedded, "seeds": per_seed}
    if args.tag:
        path = args.out / f"ucsc_stage1_metrics_{args.tag}.json"
        path.write_text(json.dumps(result, indent=1))
    else:
        path = save_result(NAME, result)
    print(f"wrote {path}")
    return 0


NAME = "ucsc_stage1"
ROWS = (("zero-shot image → text, top-1", "zeroshot_image_to_text", "acc"),
        ("zero-shot, balanced (macro recall)", "zeroshot_image_to_text", "balanced_acc"),
        ("zero-shot, top-5", "zeroshot_image_to_text", "top5"),
        ("linear probe, raw image, top-1", "probe_raw_image", "acc"),
        ("linear probe, raw image, balanced", "probe_raw_image", "balanced_acc"),
        ("linear probe, raw image + date, top-1", "probe_raw_image_date", "acc"),
        ("linear probe, date alone, top-1", "probe_date_only", "acc"))


def _mean(r: dict, group: str, key: str) -> float:
    return float(np.mean([s[group][key] for s in r["seeds"].values()]))


@renderer("ucsc-stage1")
def _table() -> str:
    r = load_result(NAME)
    seeds = list(r["seeds"])
    first = r["seeds"][seeds[0]]
    lines = [f"| hold-out ({first['n_test']:,} of {first['n_train'] + first['n_test']:,} rows, "
             f"{first['n_classes']} species) | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---" * (len(seeds) + 2) + "|"]
    for label, group, key in ROWS:
        vals = [r["seeds"][s][group][key] for s in seeds]
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | **{np.mean(vals):.3f}** |")
    stops = "; ".join(f"seed {s}: text head best epoch {r['seeds'][s]['align']['text']['best_epoch']} of "
                      f"{r['seeds'][s]['align']['text']['epochs_run']} run" for s in seeds
                      if "text" in r["seeds"][s]["align"])
    cfg = first["config"]
    n_emb = r.get("embedded_rows")
    embed = (f"embedding the text and date of {n_emb:,} rows {r['embed_seconds']:.0f} s" if n_emb
             else "text and date embeddings reused from an earlier run")
    align = ", ".join(f"{r['seeds'][s]['seconds']['align']:.0f}" for s in seeds)
    probes = ", ".join(f"{r['seeds'][s]['probe_seconds']:.0f}" for s in seeds)
    return "\n".join(lines) + (
        f"\n\n`{r['command']}`: lr {cfg['lr']:g}, ≤ {cfg['epochs']} epochs, D = {first['dim']}, anchor projection "
        f"`{cfg['anchor_proj']}`, `{cfg['head']}` heads ({stops}). Times at 1 thread on 2 shared cores: {embed}, "
        f"alignment {align} s, probes {probes} s.")


@renderer("ucsc-stage1-summary")
def _summary() -> str:
    r = load_result(NAME)
    m = lambda g, k: _mean(r, g, k)  # noqa: E731
    return (f"Zero-shot species accuracy from image alone through the aligned text space (25 % stratified "
            f"hold-out, alignment trained on the other 75 %, seeds {', '.join(r['seeds'])}): "
            f"**{m('zeroshot_image_to_text', 'acc'):.3f}** top-1 (balanced "
            f"{m('zeroshot_image_to_text', 'balanced_acc'):.3f}, top-5 {m('zeroshot_image_to_text', 'top5'):.3f}), "
            f"vs a linear probe on the raw 1280-d image features {m('probe_raw_image', 'acc'):.3f} (balanced "
            f"{m('probe_raw_image', 'balanced_acc'):.3f}). Image + date in a probe: "
            f"{m('probe_raw_image_date', 'acc'):.3f} vs image {m('probe_raw_image', 'acc'):.3f}; date alone "
            f"{m('probe_date_only', 'acc'):.3f}.")


if __name__ == "__main__":
    sys.exit(main())
