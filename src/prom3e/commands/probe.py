"""``prom3e probe``: fit a linear probe on a model's fused μ and save it (for ``serve --probe``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from prom3e.commands.common import add_common, add_overwrite, count, number, subparser
from prom3e.io import check_output_file

EXAMPLES = """\
  prom3e probe --model runs/synth --data train.parquet --label species --out species.probe.safetensors
  prom3e serve --model runs/synth --probe species.probe.safetensors   # /classify answers with it

Each labelled row is seen with all its modalities and with --views random subsets of them,
so the probe classifies rows that carry any subset. Accuracy is measured on a stratified
--holdout share (printed per number of visible modalities), then the probe is refitted on
every row. The file is safetensors and names the model it was fitted on.
"""


def add_parser(sub) -> None:
    p = subparser(sub, "probe", "Fit and save a linear probe on the fused posterior mean.", EXAMPLES)
    p.add_argument("--model", required=True, help="the trained model: a run folder, an exported folder, "
                   "local-dir:PATH or hf-hub:ORG/NAME[@REVISION]")
    p.add_argument("--data", required=True, help="labelled Parquet table with the model's modalities")
    p.add_argument("--label", default="species", help="label column (default: species)")
    p.add_argument("--out", required=True, help="probe file to write (.safetensors)")
    p.add_argument("--C", type=number(0, low_open=True), default=1.0,
                   help="inverse L2 strength, as scikit-learn's LogisticRegression (default: 1.0)")
    p.add_argument("--views", type=count(0), default=2, help="random visible subsets per row (default: 2)")
    p.add_argument("--holdout", type=number(0, 1, high_open=True), default=0.2,
                   help="share of each class held out to measure accuracy (default: 0.2; 0: none)")
    p.add_argument("--batch-size", type=count(1), default=1024, help="rows per model batch (default: 1024)")
    add_overwrite(p)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from prom3e.api import Fuser
    from prom3e.data.table import read_table
    from prom3e.tasks.saved_probe import fit_probe

    run_files = [Path(args.model) / n for n in ("config.json", "schema.json", "model.safetensors")]
    check_output_file(args.out, inputs=[args.data, *run_files], overwrite=args.overwrite)
    torch.manual_seed(args.seed)
    fuser = Fuser.load(args.model, device=args.device, precision="fp32")
    table = read_table(args.data).check_schema(fuser.modalities, fuser.dims)
    probe = fit_probe(fuser, table, args.label, C=args.C, views=args.views, holdout=args.holdout, seed=args.seed,
                      batch_size=args.batch_size)
    probe.save(args.out)
    acc = probe.info["accuracy_by_visible"]
    held = ", ".join(f"{k} visible {v:.3f}" for k, v in acc.items() if v is not None) or "no held-out rows"
    print(f"wrote {args.out}: {len(probe.labels)} classes of '{args.label}' on {probe.info['rows']} rows; "
          f"held-out accuracy {held} (majority class {probe.info['chance']:.3f})")
    return 0
