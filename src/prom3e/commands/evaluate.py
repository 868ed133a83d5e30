"""``prom3e evaluate``: retrieval, zero-shot, probing, uncertainty and gap of a trained run."""

from __future__ import annotations

import shlex
from pathlib import Path

from prom3e.commands.common import add_common, add_overwrite, add_quiet, count, number, subparser
from prom3e.io import check_output_dir

EXAMPLES = """\
  prom3e evaluate --model runs/synth --data test.parquet --label species --out eval/
  prom3e evaluate --model runs/synth --data test.parquet --label species --out eval/ \\
      --visible image --visible image+loc --targets text,sat --tasks retrieval,zeroshot
  prom3e evaluate --model runs/synth --data test.parquet --out eval/ --tasks retrieval,gap
  prom3e evaluate --model runs/ucsc --data ucsc.parquet --label species --out eval/ \\
      --class-modality text --class-prototypes class_texts.parquet

writes OUT/metrics.json (keys: docs/EVALUATION.md), OUT/report.md and PNG figures.
"""


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def add_parser(sub) -> None:
    p = subparser(sub, "evaluate", "Evaluate a trained model: retrieval (modality inversion), zero-shot, "
                  "linear probes, uncertainty, modality gap.", EXAMPLES)
    p.add_argument("--model", required=True, help="the trained model: a run folder ('prom3e train'), an "
                   "exported folder ('prom3e export'), local-dir:PATH or hf-hub:ORG/NAME[@REVISION]")
    p.add_argument("--data", required=True, help="Parquet table to evaluate on (held-out rows), or a folder or "
                   "glob of Parquet parts (only the capped fit/test rows are read)")
    p.add_argument("--aligner", metavar="DIR",
                   help="stage-1 heads ('prom3e align --model-out', local-dir:PATH, hf-hub:ORG/NAME, or "
                   "'bundled': those exported with --model): --data then holds raw encoder features (default: none, "
                   "--data is already aligned)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--label", help="label column (zero-shot, probes, stratified split) (default: none: retrieval, "
                   "uncertainty and gap only, split unstratified)")
    p.add_argument("--modalities", help="comma-separated modality columns of --data to read and use; the "
                   "others are ignored (e.g. one the model does not know) and rows with none of them "
                   "are left out (default: every modality column)")
    p.add_argument("--visible", action="append", metavar="A+B",
                   help="a visible set, modalities joined by '+'; repeat for several "
                        "(default: every set of 1..--max-visible modalities)")
    p.add_argument("--max-visible", type=count(1), default=2, help="largest default visible set (default: 2)")
    p.add_argument("--targets", help="comma-separated retrieval targets (default: every modality)")
    p.add_argument("--class-modality", default="auto",
                   help="modality holding one embedding per class for zero-shot: a name, 'auto' "
                        "(detect; default) or 'none'")
    p.add_argument("--class-prototypes", metavar="FILE",
                   help="Parquet with the label column and the class modality, one row per class "
                        "(default: the prototypes found in --data)")
    p.add_argument("--tasks", default="retrieval,zeroshot,probe,uncertainty,gap",
                   help="comma-separated tasks to run (default: all)")
    p.add_argument("--fit-frac", type=number(0, 1, low_open=True, high_open=True), default=0.5,
                   help="share of each class used to choose δ and fit probes (default: 0.5)")
    p.add_argument("--split-column", metavar="COL",
                   help="split by this column instead: rows 'test' are evaluated, rows 'train'/'fit'/'val' "
                        "choose δ and fit the probes (default: none, the seeded --fit-frac split)")
    p.add_argument("--max-fit", type=count(0), default=2000, help="cap on fit rows (default: 2000; 0 = none)")
    p.add_argument("--max-test", type=count(0), default=2000, help="cap on test rows (default: 2000; 0 = none)")
    p.add_argument("--max-subset-size", type=count(1), default=3,
                   help="largest visible subset in the uncertainty study (default: 3)")
    p.add_argument("--batch-size", type=count(1), default=1024, help="model batch size (default: 1024)")
    p.add_argument("--threads", type=count(1),
                   help="CPU threads for torch (default: torch's choice; 1 is fastest on a busy machine)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    add_quiet(p, "progress bar")
    add_overwrite(p, "evaluation in OUT")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from prom3e.api import Fuser
    from prom3e.data.dataset import is_dataset
    from prom3e.tasks.evaluate import OUTPUTS, evaluate

    check_output_dir(args.out, products=OUTPUTS, overwrite=args.overwrite,
                     inputs=[args.model, args.data, args.aligner, args.class_prototypes])
    fuser = Fuser.load(args.model, device=args.device, aligner=args.aligner)
    visible = [[v for v in s.split("+") if v] for s in args.visible] if args.visible else None
    cm = None if args.class_modality == "none" else args.class_modality
    if is_dataset(args.data):  # a folder of parts: only the capped fit/test rows are read
        from prom3e.data.dataset import Dataset
        from prom3e.tasks.evaluate_dataset import evaluate_dataset

        table, evaluate = Dataset(args.data, _csv(args.modalities)), evaluate_dataset
    else:
        table = _read(args.data, _csv(args.modalities), cm)
    command = _command_line(args)
    metrics = evaluate(
        fuser, table, label=args.label, out_dir=args.out, modalities=_csv(args.modalities),
        visible=visible, targets=_csv(args.targets), max_visible=args.max_visible,
        class_modality=cm, class_prototypes=args.class_prototypes, tasks=_csv(args.tasks) or [],
        seed=args.seed, fit_frac=args.fit_frac, split_column=args.split_column, max_fit=args.max_fit or None,
        max_test=args.max_test or None, max_subset_size=args.max_subset_size,
        batch_size=args.batch_size, threads=args.threads, plots=not args.no_plots, progress=not args.quiet,
        command=command,
    )
    out = Path(args.out)
    print(f"wrote {out / 'metrics.json'} and {out / 'report.md'}")
    for line in headline(metrics):
        print("  " + line)
    return 0


def _read(path: str, modalities: list[str] | None, class_modality: str | None):
    """The --data table: with --modalities, only those columns (+ a named class modality)."""
    from prom3e.data.table import read_table

    if modalities is None:
        return read_table(path)
    cols = list(dict.fromkeys([*modalities, *([class_modality] if class_modality not in (None, "auto") else [])]))
    table = read_table(path, cols, drop_empty=True)
    if not path.endswith(".npy"):
        import pyarrow.parquet as pq

        left = pq.read_metadata(path).num_rows - len(table)
        if left:
            print(f"{path}: {left} row(s) have none of {', '.join(cols)}; left out")
    return table


def _command_line(args) -> str:
    """The command as given (canonical order, non-default options only), for the report."""
    parts = ["prom3e", "evaluate", "--model", args.model, "--data", args.data, "--out", args.out]
    defaults = {"max_visible": 2, "class_modality": "auto", "fit_frac": 0.5, "max_fit": 2000,
                "max_test": 2000, "max_subset_size": 3, "batch_size": 1024, "seed": 0, "device": "auto",
                "tasks": "retrieval,zeroshot,probe,uncertainty,gap"}
    for name in ("aligner", "label", "modalities", "targets", "max_visible", "class_modality", "class_prototypes",
                 "tasks", "fit_frac", "split_column", "max_fit", "max_test", "max_subset_size", "batch_size",
                 "threads", "seed", "device"):
        v = getattr(args, name)
        if v is not None and v != defaults.get(name):
            parts += [f"--{name.replace('_', '-')}", str(v)]
    for v in args.visible or []:
        parts += ["--visible", v]
    parts += [f for f, on in (("--no-plots", args.no_plots), ("--quiet", args.quiet)) if on]
    return " ".join(shlex.quote(p) for p in parts)


def headline(metrics: dict) -> list[str]:
    """The numbers worth a line on the terminal (``prom3e evaluate`` and ``prom3e demo``)."""
    from prom3e.tasks.claims import verdict

    lines = []
    r = metrics.get("retrieval", {}).get("summary")
    if r and r.get("r1_inversion_mean") is not None:
        lines.append(f"retrieval mean R@1 over {r['n_pairs']} pairs: cross {_f(r['r1_cross_mean'])}, "
                     f"reconstruction {_f(r['r1_reconstruction_mean'])}, inversion {_f(r['r1_inversion_mean'])}")
    z = metrics.get("zeroshot", {}).get("summary")
    if z and z.get("top1_inversion_mean") is not None:
        lines.append(f"zero-shot mean top-1 over {z['n_sets']} visible sets: cross {_f(z['top1_cross_mean'])}, "
                     f"inversion {_f(z['top1_inversion_mean'])}")
    p = metrics.get("probe", {}).get("summary")
    if p and p.get("acc_mu_mean") is not None:
        lines.append(f"probe mean accuracy: raw {_f(p['acc_raw_mean'])}, μ {_f(p['acc_mu_mean'])}, "
                     f"tokens {_f(p['acc_tokens_mean'])}, reconstructions {_f(p['acc_reconstruction_mean'])}")
    for name, c in metrics.get("claims", {}).items():
        lines.append(f"claim {name}: {verdict(c)}")
    nonfinite = (r or {}).get("n_nonfinite")
    if nonfinite:
        lines.append(f"warning: {nonfinite} reconstruction(s) held NaN/inf (each scored as a miss)")
    warning = (metrics.get("uncertainty", {}).get("check") or {}).get("warning")
    if warning:
        lines.append(warning)
    return lines


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"
