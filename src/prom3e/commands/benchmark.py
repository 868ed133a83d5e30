"""``prom3e benchmark``: every missing-modality method on one table, same splits and budget."""

from __future__ import annotations

from prom3e.commands.common import add_common, add_overwrite, count, int_list, number, number_list, subparser

EXAMPLES = """\
  prom3e synth --out synth.parquet
  prom3e benchmark --data synth.parquet --label species --out bench/synth --epochs 20
  prom3e benchmark --data synth.parquet --label species --methods prom3e,cmpt,zero-fill --seeds 0,1,2 --out b
  prom3e benchmark --data t.parquet --label genus --etas 0.7,0.9 --out b --lrs 1e-3,3e-3 --widths 64,128
  prom3e benchmark --data t.parquet --label species --out b --resume     # continue a killed run
  prom3e benchmark --data t.parquet --label species --out b --resume --rerun --methods prom3e   # refit ProM3E only
  prom3e benchmark --data t.parquet --label species --option moe-retriever.mode=weighted_mean --out b
"""


OUTPUTS = ("results*",)  # results.json, results.md, results.png (and partial results)


def add_parser(sub) -> None:
    from prom3e.methods import METHODS

    p = subparser(sub, "benchmark", "Compare ProM3E, CMPT, AOEPT, MoE-Retriever and baselines on a table.",
                  EXAMPLES)
    p.add_argument("--data", required=True, help="Parquet table (the data contract)")
    p.add_argument("--label", required=True, help="metadata column to classify")
    p.add_argument("--out", required=True, help="folder for results.json, results.md, results.png")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default: all: {','.join(METHODS)})")
    p.add_argument("--modalities", help="comma-separated subset of modality columns to use (default: all; rows "
                   "left with none are dropped and counted)")
    p.add_argument("--epochs", type=count(1), default=20, help="training epochs of every method (default: 20)")
    p.add_argument("--batch-size", type=count(2), default=256)
    p.add_argument("--lr", type=number(0, low_open=True), default=1e-3)
    p.add_argument("--width", type=count(4), default=64, help="hidden width of every method (default: 64)")
    p.add_argument("--lrs", type=number_list(0), help="tuning grid: comma-separated learning rates (default: --lr)")
    p.add_argument("--widths", type=int_list(4), help="tuning grid: comma-separated widths (default: --width)")
    p.add_argument("--val-frac", type=number(0, 1, low_open=True, high_open=True), default=0.15,
                   help="share of the training rows held out for validation (every choice is made on it)")
    p.add_argument("--seeds", type=int_list(0), default="0", help="comma-separated seeds: split + init (default: 0)")
    p.add_argument("--etas", type=number_list(0, 1, high_open=True), default="0.7,0.9",
                   help="missing rates of the fixed-table protocol")
    p.add_argument("--train-missing", choices=["natural", "eta"], default="eta",
                   help="eta (default): each η protocol trains at that η; natural: one model, natural missingness")
    p.add_argument("--keep-leaking", action="store_true",
                   help="keep one-vector-per-class modalities (label leaks) as inputs (default: left out)")
    p.add_argument("--split-column", help="metadata column of train/val/test values that fixes the split "
                   "(default: none: a stratified split per seed)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (same settings; the report "
                   "keeps every method finished there, e.g. --resume --methods prom3e adds or completes ProM3E)")
    p.add_argument("--rerun", action="store_true", help="with --resume: fit --methods again where they had "
                   "finished and replace their results (the other methods' stay as they were)")
    p.add_argument("--subset-cap", type=count(1), default=1000, help="test rows per visible set (default: 1000)")
    p.add_argument("--max-rows", type=count(4), help="use a stratified subsample of this many rows (default: all rows)")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method option, e.g. moe-retriever.mode=weighted_mean, aoept.prompt_len=8")
    p.add_argument("--threads", type=count(1), help="CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no per-method progress lines; results and warnings "
                   "still print")
    add_overwrite(p, "results in OUT")
    add_common(p, seed=False)
    p.set_defaults(func=run)


def parse_options(items: list[str]) -> dict[str, dict]:
    import yaml

    from prom3e.errors import Prom3eError

    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise Prom3eError(f"--option '{item}': expected METHOD.KEY=VALUE")
        out.setdefault(method, {})[name] = yaml.safe_load(value)
    return out


def run(args) -> int:
    import numpy as np
    import torch

    from prom3e.data.labels import encode_labels
    from prom3e.errors import Prom3eError
    from prom3e.io import check_output_dir
    from prom3e.methods import METHODS, FitConfig
    from prom3e.runtime import resolve_device
    from prom3e.tasks.common import stratified_subsample
    from prom3e.tasks.comparison.benchmark import BenchConfig, load_table, run_benchmark, write_outputs
    from prom3e.tasks.comparison.store import ResultStore
    from prom3e.tasks.comparison.tuning import Grid

    resolve_device(args.device)  # fail early on --device cuda without CUDA
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    options = parse_options(args.option)
    bad = [m for m in options if m not in METHODS]
    if bad:
        raise Prom3eError(f"--option for unknown method '{bad[0]}' (have: {', '.join(METHODS)})")
    grid = Grid(args.lrs or [args.lr], args.widths or [args.width])
    cfg = BenchConfig(methods=methods, seeds=args.seeds, etas=args.etas, train_missing=args.train_missing,
                      subset_cap=args.subset_cap, method_options=options, grid=grid, val_frac=args.val_frac,
                      leak_policy="keep" if args.keep_leaking else "drop", split_column=args.split_column,
                      fit=FitConfig(epochs=args.epochs, batch_size=args.batch_size, lr=grid.lrs[0],
                                    width=grid.widths[0], device=args.device, progress=False))
    check_output_dir(args.out, products=OUTPUTS, inputs=[args.data], overwrite=True)  # inputs, file, writable
    store = ResultStore(args.out, resume=args.resume, overwrite=args.overwrite,
                        rerun=args.rerun)  # held results: before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    table = load_table(args.data, args.label, args.modalities.split(",") if args.modalities else None)
    if args.max_rows and args.max_rows < len(table):
        codes, _ = encode_labels(table.label(args.label))
        table = table.take(stratified_subsample(np.arange(len(table)), codes, args.max_rows, 0))
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    results = run_benchmark(table, args.label, cfg, log, store=store)
    paths = write_outputs(results, args.out)
    if not args.quiet:
        print(f"done in {results['config']['total_seconds']:.0f}s → " + ", ".join(str(p) for p in paths))
    return 0
