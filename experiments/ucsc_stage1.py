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

    .venv/bin/python experiments/ucsc_stage1.py                  # defaults: lr 1e-4, ≤100 epochs
    .venv/bin/python experiments/ucsc_stage1.py --lr 1e-3 --epochs 40 --tag lr1e-3

Figures go to ``experiments/out/ucsc_stage1_metrics[_TAG].json`` and stdout.
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


def build_features(data: Path, out: Path, seed: int, tag: str = "") -> Path:
    """Embed text and date, add the image features and the split; return the table path."""
    from sklearn.model_selection import train_test_split

    from prom3e.data.table import vectors_to_arrow
    from prom3e.encoders.embed import embed
    from prom3e.encoders.spec import parse_spec
    from prom3e.io import atomic_write

    td_path = out / "ucsc_text_date.parquet"
    s = embed(data / "observations.csv", parse_spec(SPEC, "ucsc_stage1.SPEC"), td_path)
    print("\n".join(s.lines()))
    t = pq.read_table(td_path)
    img = np.load(data / "image_effnet_lite0_f16.npy").astype(np.float32)
    rows = t.column("obs_row").to_numpy()
    if len(img) != s.rows:
        raise SystemExit(f"{data}: {len(img)} image rows but {s.rows} observations")
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
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

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
        res[name] = {"acc": float((p == y[test]).mean()),
                     "balanced_acc": float(balanced_accuracy_score(y[test], p)),
                     "macro_f1": float(f1_score(y[test], p, average="macro"))}

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--anchor-proj", default="pca")
    ap.add_argument("--dim", type=int, default=None, help="D (default: 512)")
    ap.add_argument("--head", default="mlp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix for the aligned table and metrics")
    args = ap.parse_args(argv)
    if not (args.data / "observations.csv").exists():
        print(f"{args.data}: ucsc-plants not found (see ../shared/data/README.md)",
              file=sys.stderr)
        return 1
    import torch

    from prom3e.align.trainer import AlignConfig, align_file

    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tag = f"_{args.tag}" if args.tag else ""
    features = build_features(args.data, args.out, args.seed, tag)
    t_embed = time.time() - t0
    aligned = args.out / f"ucsc_aligned{tag}.parquet"
    cfg = AlignConfig(dim=args.dim, epochs=args.epochs, lr=args.lr,
                      anchor_proj=args.anchor_proj, head=args.head, seed=args.seed)
    t0 = time.time()
    al = align_file(features, "image", aligned, args.out / f"ucsc_align{tag}", LABEL, cfg,
                    "split=train")
    t_align = time.time() - t0
    res = evaluate(features, aligned, args.seed)
    res["config"] = {k: getattr(cfg, k) for k in ("dim", "epochs", "lr", "anchor_proj", "head",
                                                  "hidden", "batch_size", "seed")}
    res["dim"] = al.dim
    res["align"] = {m: {k: r[k] for k in ("pairs", "best_epoch", "epochs_run", "val_top1")
                        if k in r} for m, r in al.record["modalities"].items() if "pairs" in r}
    res["seconds"] = {"embed": round(t_embed, 1), "align": round(t_align, 1)}
    path = args.out / f"ucsc_stage1_metrics{tag}.json"
    path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    zs, lp = res["zeroshot_image_to_text"], res["probe_raw_image"]
    print(f"\nzero-shot image→text: acc {zs['acc']:.3f} (balanced {zs['balanced_acc']:.3f}, "
          f"top-5 {zs['top5']:.3f}) vs linear probe on raw image {lp['acc']:.3f} "
          f"(balanced {lp['balanced_acc']:.3f}); image+date probe "
          f"{res['probe_raw_image_date']['acc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
