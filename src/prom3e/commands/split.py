"""``prom3e split``: a seeded train/test split of one table, stratified by a label column."""

from __future__ import annotations

import argparse

from prom3e.commands.common import add_overwrite, count, number, subparser

EXAMPLES = """\
  prom3e split --data synth.parquet --label species --train train.parquet --test test.parquet
  prom3e split --data aligned.parquet --label species --test-fraction 0.3 --seed 1 \\
      --train train.parquet --test test.parquet

Every column is kept. Each class puts round((1 − f)·n) of its n rows in --train and the rest
in --test, with at least one on each side when n ≥ 2 (a class of one row stays in --train);
rows without a label are split the same way as a class of their own. Same seed, same split.
Train on --train and evaluate on --test: the test rows are new observations of the same
species, so zero-shot, probes and retrieval measure what the model learned.
"""


def add_parser(sub) -> None:
    p = subparser(sub, "split", "Split a table into seeded, stratified train and test tables.", EXAMPLES)
    p.add_argument("--data", required=True, help="Parquet table to split (one file)")
    p.add_argument("--label", help="column to stratify by (default: none, a plain seeded random split)")
    p.add_argument("--train", required=True, metavar="T.parquet", help="Parquet file for the training rows")
    p.add_argument("--test", required=True, metavar="T.parquet", help="Parquet file for the held-out rows")
    p.add_argument("--test-fraction", type=number(0, 1, low_open=True, high_open=True), default=0.2,
                   help="share of each class held out")
    p.add_argument("--seed", type=count(0), default=0, help="random seed")
    add_overwrite(p, "--train / --test")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prom3e.data.dataset import is_dataset
    from prom3e.data.labels import encode_labels
    from prom3e.data.table import write_parquet
    from prom3e.errors import Prom3eError
    from prom3e.io import check_output_file
    from prom3e.tasks.common import stratified_split

    if is_dataset(args.data) or Path(args.data).is_dir():
        raise Prom3eError(f"--data {args.data}: split takes one Parquet file, not a folder of parts")
    if not Path(args.data).is_file():
        raise Prom3eError(f"--data {args.data}: no such file")
    if Path(args.train).resolve() == Path(args.test).resolve():
        raise Prom3eError(f"--train and --test are the same file ({args.train})")
    check_output_file(args.train, inputs=[args.data], overwrite=args.overwrite, what="--train")
    check_output_file(args.test, inputs=[args.data], overwrite=args.overwrite, what="--test")
    try:
        table = pq.read_table(args.data)
    except (pa.ArrowInvalid, OSError) as e:
        raise Prom3eError(f"{args.data}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    if table.num_rows < 2:
        raise Prom3eError(f"{args.data}: {table.num_rows} row(s); a split needs at least 2")
    if args.label is None:
        y, classes = np.zeros(table.num_rows, np.int64), []
    else:
        if args.label not in table.column_names:
            raise Prom3eError(f"{args.data}: no label column '{args.label}' (columns: {', '.join(table.column_names)})")
        column = table.column(args.label)
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            raise Prom3eError(f"{args.data}: --label '{args.label}' is a modality (a list column), not a label")
        y, classes = encode_labels(column.to_numpy(zero_copy_only=False))
    fit, test = stratified_split(y, 1.0 - args.test_fraction, args.seed)
    if not len(test):
        raise Prom3eError(f"{args.data}: no class of '{args.label}' has 2 rows: nothing to hold out")
    write_parquet(table.take(pa.array(fit)), args.train)
    write_parquet(table.take(pa.array(test)), args.test)
    how = (f"stratified by '{args.label}' ({len(classes)} classes"
           + (f", {int((y < 0).sum())} unlabelled rows" if (y < 0).any() else "") + ")"
           if args.label else "not stratified (no --label)")
    print(f"wrote {args.train} ({len(fit)} rows) and {args.test} ({len(test)} rows) from {args.data}: "
          f"{how}, seed {args.seed}")
    return 0
