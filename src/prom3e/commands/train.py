"""``prom3e train``: fit the fusion model on a table that follows the data contract."""

from __future__ import annotations

import os
from pathlib import Path

from prom3e.commands.common import add_common, add_overwrite, add_quiet, count, number, subparser
from prom3e.config import load_mapping

EXAMPLES = """\
  prom3e synth --out synth.parquet
  prom3e train --data synth.parquet --out runs/synth --epochs 30
  prom3e train --data aligned.parquet --out runs/paper --model paper --label species
  prom3e train --data synth.parquet --out runs/synth --resume --epochs 60
  prom3e train --data synth.parquet --out runs/synth --config train.yaml --overwrite
  torchrun --nproc-per-node 4 -m prom3e.cli train --data big.parquet --out runs/big
  prom3e train --data parts/ --out runs/big --model tiny    # a folder of parts, streamed (docs/SCALE.md)

Settings come from the defaults, then --config, then the flags given. With --resume they
start from the run's own settings; a flag that changes the split or the schedule (seed,
lr, batch size, …) or another table is refused unless --allow-changes.
"""


# TrainConfig's defaults, shown in --help without importing torch (a test keeps them equal)
SHOWN_DEFAULTS = {"model": "base", "epochs": 30, "batch_size": 256, "lr": 1e-3, "kl_weight": 1e-4,
                  "precision": "auto"}


def add_parser(sub) -> None:
    p = subparser(sub, "train", "Train ProM3E on a Parquet table (any modalities, any missingness).",
                  EXAMPLES)
    p.add_argument("--data", required=True, help="Parquet table (see docs/DATA.md), or a folder or glob of "
                   "Parquet parts: streamed, memory bounded by the shuffle buffer (docs/SCALE.md)")
    p.add_argument("--out", required=True, help="run folder to write")
    d = SHOWN_DEFAULTS
    p.add_argument("--config", help="YAML/JSON file of training options; the flags below override it "
                   "(default: none, the built-in defaults shown here)")
    p.add_argument("--model", choices=["tiny", "base", "paper", "large"], help=f"architecture (default: {d['model']})")
    p.add_argument("--modalities", help="comma-separated subset of modality columns to use (default: all)")
    p.add_argument("--epochs", type=count(1), help=f"training epochs (default: {d['epochs']})")
    p.add_argument("--batch-size", type=count(2), help=f"rows per batch (default: {d['batch_size']})")
    p.add_argument("--lr", type=number(0, low_open=True), help=f"peak AdamW learning rate (default: {d['lr']:g})")
    p.add_argument("--kl-weight", type=number(0), help=f"λ, the weight of the KL term (default: {d['kl_weight']:g})")
    p.add_argument("--label", help="label column: same-label rows are not contrastive negatives "
                   "(default: none)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help=f"auto = bf16 where the hardware runs it fast, else fp32 (default: {d['precision']})")
    p.add_argument("--threads", type=count(1), help="CPU threads (default: torch's choice)")
    p.add_argument("--stream", action="store_true",
                   help="stream --data from disk even when it is one file (folders and globs always are)")
    p.add_argument("--shuffle-buffer", type=count(1), default=65536,
                   help="rows in the shuffle buffer when streaming (default: 65536)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: continue even though settings or the table differ from the run's")
    add_overwrite(p, "run in OUT")
    add_quiet(p, "progress bar")
    add_common(p, from_config=True)
    p.set_defaults(func=run)


def load_options(path: str | None) -> dict:
    return load_mapping(path, "training options") if path else {}


def run(args) -> int:
    from prom3e.data.dataset import Dataset, is_dataset
    from prom3e.data.table import read_table
    from prom3e.train import checkpoint as ckpt
    from prom3e.train.data import StreamingSource
    from prom3e.train.loop import TrainConfig, train

    options = load_options(args.config)
    flags = {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
             "lr": args.lr, "kl_weight": args.kl_weight, "label_column": args.label,
             "precision": args.precision, "threads": args.threads, "seed": args.seed,
             "device": args.device}
    options.update({k: v for k, v in flags.items() if v is not None})
    TrainConfig.from_dict(options)  # bad options: one line, before anything else
    if args.resume and (Path(args.out) / "config.json").is_file():
        saved = ckpt.read_json(Path(args.out) / "config.json").get("train", {})
        known = {k: v for k, v in saved.items() if k in TrainConfig.field_names()}
        options = {**known, **options}  # the run's settings, then what was given now
    cfg = TrainConfig.from_dict(options)
    if int(os.environ.get("RANK", "0")) == 0:  # a check before the work (rank 0 alone writes the run)
        ckpt.prepare_run(args.out, args.resume, args.overwrite, [args.data], clean=False)
    mods = args.modalities.split(",") if args.modalities else None
    if args.stream or is_dataset(args.data):
        cfg.validate()
        table = StreamingSource(Dataset(args.data, mods), cfg.val_fraction, cfg.val_cap, cfg.seed,
                                cfg.label_column, args.shuffle_buffer)
    else:
        table = read_table(args.data, mods)
        if cfg.label_column:
            table.label(cfg.label_column)  # fail early, naming the column
    summary = train(table, args.out, cfg, resume=args.resume, progress=not args.quiet,
                    overwrite=args.overwrite, allow_changes=args.allow_changes)
    if summary.get("rank", 0) != 0:
        return 0
    record_encoders(args.data, args.out, table.modalities)
    print(f"done: best validation R@1 {summary['best_val_r1_mean']:.4f} after {summary['epochs']} "
          f"epochs → {Path(args.out) / 'model.safetensors'}")
    return 0


def record_encoders(data: str, run: str, modalities: list[str]) -> None:
    """``RUN/encoders.json``: the encoder configs ``prom3e embed`` recorded in the training
    table's columns (a model trained straight on embed features; ``prom3e serve`` rebuilds
    them for raw inputs). Nothing is written for tables without them (e.g. aligned ones)."""
    from prom3e.encoders.embed import encoder_configs
    from prom3e.train.checkpoint import write_json

    found = {m: c for m, c in encoder_configs(data).items() if m in modalities}
    if found:
        write_json(Path(run) / "encoders.json", found)
