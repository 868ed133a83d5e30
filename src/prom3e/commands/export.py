"""``prom3e export``: a trained run → a folder to share (model card, weights, heads)."""

from __future__ import annotations

from prom3e.commands.common import subparser

EXAMPLES = """\
  prom3e export --model runs/ucsc --out exports/ucsc-prom3e --license cc-by-4.0
  prom3e export --model runs/ucsc --aligner ALIGN --data features.parquet --eval eval/ \\
      --name my-lab/ucsc-prom3e --dataset ucsc-plants --license cc-by-4.0 --out exports/ucsc-prom3e
  hf upload my-lab/ucsc-prom3e exports/ucsc-prom3e .     # publish (huggingface-cli upload, older hubs)
  prom3e evaluate --model hf-hub:my-lab/ucsc-prom3e --data test.parquet --out eval/

The folder holds config.json, schema.json, model.safetensors, metrics.json, aligner/ (with
--aligner), evaluation.json (with --eval), encoders.json (with --data) and README.md, a
model card with YAML front matter. It loads as --model local-dir:OUT.
"""


def add_parser(sub) -> None:
    p = subparser(sub, "export", "Write a trained model as a self-contained folder to share "
                  "(Hugging Face Hub layout, with a model card).", EXAMPLES)
    p.add_argument("--model", required=True,
                   help="the run: a folder ('prom3e train'), local-dir:PATH or hf-hub:ORG/NAME[@REVISION]")
    p.add_argument("--out", required=True, help="the export folder to write")
    p.add_argument("--aligner", metavar="DIR", help="stage-1 heads to bundle ('prom3e align --model-out') "
                   "(default: none)")
    p.add_argument("--data", metavar="FEATURES",
                   help="the feature table 'prom3e embed' wrote: records which encoders feed each modality "
                   "(default: none, the encoders the run recorded)")
    p.add_argument("--eval", metavar="DIR", help="a 'prom3e evaluate --out' folder: its metrics go in the "
                   "card (default: none, the run's validation metrics only)")
    p.add_argument("--name", help="the repository name for the card, e.g. my-lab/ucsc-prom3e "
                   "(default: the folder name)")
    p.add_argument("--dataset", help="what it was trained on, e.g. a Hub dataset id (for the card) "
                   "(default: not stated)")
    p.add_argument("--license", default="other",
                   help="licence identifier for the card, e.g. apache-2.0, cc-by-4.0 (default: other)")
    p.add_argument("--which", choices=["best", "last"], default="best",
                   help="the run's best epoch or its last (default: best)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from prom3e.export import export_model

    out = export_model(args.model, args.out, aligner=args.aligner, features=args.data, evaluation=args.eval,
                       license=args.license, name=args.name, dataset=args.dataset, which=args.which,
                       overwrite=args.overwrite)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {', '.join(files)}")
    print(f"  load it with --model local-dir:{out}; publish it with: hf upload {args.name or 'ORG/NAME'} {out} .")
    return 0
