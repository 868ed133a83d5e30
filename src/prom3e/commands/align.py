"""``prom3e align``: train per-modality heads against the frozen anchor (stage 1)."""

from __future__ import annotations

import argparse

from prom3e.commands.common import add_common, add_overwrite, add_quiet, count, number, subparser

EXAMPLES = """\
  prom3e align --data features.parquet --anchor image --out aligned.parquet --model-out ALIGN
  prom3e align --data features.parquet --anchor image --label species \\
      --fit-where split=train --out aligned.parquet --model-out ALIGN
  prom3e align --data features/ --anchor image --out aligned/ --model-out ALIGN   # folders of parts

Writes the aligned table (every modality D-dim, unit norm; missing stays missing) and
ALIGN/config.json + ALIGN/model.safetensors (load with prom3e.align.load_aligner). From a
folder of parts, the heads are fitted on a seeded subsample of --max-fit-rows rows and the
aligned table is written as a folder of parts (docs/SCALE.md).
"""


def add_parser(sub) -> None:
    p = subparser(sub, "align", "align every modality to the anchor modality (stage 1)",
                  EXAMPLES)
    p.add_argument("--data", required=True, help="feature table (Parquet, from prom3e embed), or a folder "
                   "or glob of Parquet parts")
    p.add_argument("--anchor", required=True, help="the frozen anchor modality (e.g. image)")
    p.add_argument("--out", required=True, help="aligned table to write (Parquet)")
    p.add_argument("--model-out", required=True, help="folder for the heads")
    p.add_argument("--label", help="metadata column: same-label rows are positives (SupCon) (default: none, "
                   "only a row's own pair is positive)")
    p.add_argument("--fit-where", metavar="COL=VALUE",
                   help="fit on these rows only (e.g. split=train); all rows are transformed "
                   "(default: fit on all rows)")
    p.add_argument("--modalities", help="comma-separated modalities to use (default: all)")
    p.add_argument("--dim", type=count(1), help="D, the shared dim (default: min(512, anchor dim))")
    p.add_argument("--anchor-proj", default="pca", choices=["pca", "pca_whiten", "center"],
                   help="the anchor's fixed projection to D (default: pca)")
    p.add_argument("--head", default="mlp", choices=["mlp", "linear"],
                   help="head type for frozen encoders' features (default: mlp)")
    p.add_argument("--hidden", type=count(1), default=1024, help="MLP head width (default: 1024)")
    p.add_argument("--epochs", type=count(1), default=100, help="max epochs per modality (default: 100)")
    p.add_argument("--batch-size", type=count(2), default=256, help="pairs per batch (default: 256)")
    p.add_argument("--lr", type=number(0, low_open=True), default=1e-4, help="AdamW learning rate (default: 1e-4)")
    p.add_argument("--weight-decay", type=number(0), default=0.01, help="AdamW weight decay (default: 0.01)")
    p.add_argument("--val-frac", type=number(0, 1, high_open=True), default=0.1,
                   help="pairs held out for early stopping (default: 0.1)")
    p.add_argument("--patience", type=count(0), default=10, help="early-stopping patience (default: 10)")
    p.add_argument("--parts", action="store_true",
                   help="write OUT as a folder of parts (automatic when --data is a folder or glob of parts)")
    p.add_argument("--max-fit-rows", type=count(2), default=500_000,
                   help="with parts: fit on a seeded subsample of at most this many rows (default: 500000)")
    p.add_argument("--part-rows", type=count(), default=65536, help="with parts: rows per output part (default: 65536)")
    add_quiet(p, "progress bar")
    add_overwrite(p, "--out / --model-out")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prom3e.align.trainer import AlignConfig, align_file
    from prom3e.data.dataset import is_dataset

    cfg = AlignConfig(dim=args.dim, anchor_proj=args.anchor_proj, head=args.head,
                      hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, weight_decay=args.weight_decay, val_frac=args.val_frac,
                      patience=args.patience, seed=args.seed, device=args.device)
    mods = [m.strip() for m in args.modalities.split(",")] if args.modalities else None
    if args.parts or is_dataset(args.data):
        from prom3e.align.dataset import align_dataset

        aligner = align_dataset(args.data, args.anchor, args.out, args.model_out, args.label, cfg, args.fit_where,
                                mods, not args.quiet, args.max_fit_rows, args.part_rows, args.overwrite)
    else:
        aligner = align_file(args.data, args.anchor, args.out, args.model_out, args.label, cfg,
                             args.fit_where, mods, progress=not args.quiet, overwrite=args.overwrite)
    print(f"aligned {len(aligner.modalities)} modalities to '{args.anchor}' in "
          f"{aligner.dim}-d → {args.out}; heads → {args.model_out}")
    for name, rec in aligner.record["modalities"].items():
        if name == args.anchor:
            print(f"  {name}: anchor, fixed {rec['projection']} projection ({rec['rows']} rows)")
            continue
        val = (f", val loss {rec['val_loss_best']:.3f}, val top-1 {rec['val_top1']:.3f}"
               if "val_top1" in rec else "")
        print(f"  {name}: {rec['head']} head, {rec['pairs']} pairs, best epoch "
              f"{rec['best_epoch']}/{rec['epochs_run']}{val}")
    return 0
