"""The missing-modality benchmark on one dataset, reproducibly: every method, 3 seeds, one grid.

    .venv/bin/python experiments/benchmark.py --dataset synthetic     # ≈ see docs/BENCHMARK_RESULTS.md
    .venv/bin/python experiments/benchmark.py --dataset ucsc
    .venv/bin/python experiments/benchmark.py --dataset birdclef22    # needs experiments/out/birdclef22/aligned.parquet

Runs ``prom3e benchmark`` with the dataset's profile (below) into ``experiments/out/bench_<dataset>/``
(``--resume`` continues a killed run there; ``--overwrite`` starts afresh; ``--resume --rerun --methods
prom3e`` fits ProM3E again, e.g. after a change of the library's defaults, and keeps every other
method's results), then writes the summary
``experiments/results/benchmark_<dataset>.json`` and re-renders the docs' generated blocks
(``experiments/benchmark_docs.py``). One thread, as every figure in the docs.

Profiles (docs/BENCHMARK_RESULTS.md says why these sizes; one thread, shared 2-core machine):

- ``synthetic``: ``prom3e synth`` defaults (20 000 rows, 100 species, 6 modalities), a stratified
  4 000-row subsample, 10 epochs, grid lr {1e-3, 3e-3} × width {64, 128}; ``text`` (one vector
  per species) is detected as a label leak and left out.
- ``ucsc``: ucsc-plants, image (PCA-64 of EfficientNet-Lite0) + date, a stratified 3 000 of the
  6 021 rows, 8 epochs, grid lr {1e-3, 3e-3} × width 64 (``experiments/ucsc_benchmark.py`` builds
  the table; text is not in it: one vector per species).
- ``birdclef22``: the 5-modality table ``experiments/out/birdclef22/aligned.parquet`` (built by
  ``experiments/birdclef22.py``), label ``primary_label``, its ``split`` column fixes the split,
  a stratified 2 500 of the 14 894 rows, 6 epochs, grid lr {1e-3, 3e-3} × width 64;
  ``taxonomy`` (the alignment anchor: a taxonomic text per species) is a label leak, left out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

OUT = HERE / "out"
COMMON = ["--seeds", "0,1,2", "--etas", "0.7,0.9", "--lrs", "1e-3,3e-3", "--widths", "64,128", "--batch-size", "128",
          "--threads", "1"]
PROFILES: dict[str, dict] = {
    "synthetic": {"label": "species", "args": ["--max-rows", "4000", "--epochs", "10"]},
    # the real tables: one width (64) in the grid, so that both fit one evening on the shared machine
    "ucsc": {"label": "scientific_name", "args": ["--max-rows", "3000", "--epochs", "8", "--widths", "64"]},
    "birdclef22": {"label": "primary_label",
                   "args": ["--max-rows", "2500", "--epochs", "6", "--widths", "64", "--split-column", "split"]},
}
QUICK = ["--seeds", "0", "--epochs", "1", "--lrs", "1e-3", "--widths", "16", "--subset-cap", "50",
         "--option", "moe-retriever.tokens=2", "--option", "aoept.n_prototypes=8", "--option", "aoept.prompt_len=2",
         "--option", "aoept-prom3e.n_prototypes=8"]


def merged(*arg_lists: list[str]) -> list[str]:
    """``--flag value`` lists joined, a later list's value replacing an earlier one's (in place)."""
    out: dict[tuple[str, str], str] = {}
    for args in arg_lists:
        for flag, value in zip(args[::2], args[1::2], strict=True):
            out[(flag, value if flag == "--option" else "")] = value  # --option repeats
    return [x for (flag, _), value in out.items() for x in (flag, value)]


def dataset_table(name: str, data: str | None) -> Path:
    """The Parquet table of a dataset (built when it is missing and can be built)."""
    if data:
        return Path(data)
    if name == "synthetic":
        path = OUT / "synth20k.parquet"
        if not path.exists():
            from prom3e.cli import main as cli

            cli(["synth", "--out", str(path)])
        return path
    if name == "ucsc":
        from ucsc_benchmark import build_table

        from prom3e.data.table import write_parquet

        path = OUT / "ucsc_plants_table.parquet"
        if not path.exists():
            write_parquet(build_table(), path)
        return path
    path = OUT / "birdclef22" / "aligned.parquet"
    if not path.exists():
        raise SystemExit(f"{path}: missing; build it with experiments/birdclef22.py first")
    return path


def summary(results: dict, command: list[str], wall: float) -> dict:
    """The small result file the docs render: config, per method the summary figures."""
    keep = ("protocols/", "reconstruction/", "fit_seconds", "fit_cpu_seconds", "tuning_seconds",
            "tuning_cpu_seconds", "fit_peak_mib", "best_epoch", "val_acc", "zeroshot/", "acc_by_visible_count/",
            "seconds", "cpu_seconds")
    cfg = results["config"]
    methods = {}
    for name, r in results["methods"].items():
        s = {k: v for k, v in r["summary"].items() if k.startswith(keep)}  # not the per-set "subsets/…"
        s = {k: v for k, v in s.items() if not k.startswith("reconstruction/") or "/mean/" in k}
        methods[name] = {"summary": s, "seeds": [p["seed"] for p in r["per_seed"]],
                         "selected": [p["tuning"]["selected"] for p in r["per_seed"]],
                         "estimate_space": next((p.get("estimate_space") for p in r["per_seed"]), None)}
    keys = ("label", "rows", "classes", "modalities", "left_out", "leaking_modalities", "rows_without_modality",
            "seeds", "etas", "train_frac", "val_frac", "train_missing", "grid", "split_column", "class_modality")
    return {"config": {k: cfg.get(k) for k in keys} | {"epochs": cfg["fit"]["epochs"],
                                                        "batch_size": cfg["fit"]["batch_size"]},
            "methods": methods, "order": list(results["methods"]), "command": " ".join(command),
            "wall_seconds_last_invocation": round(wall),
            "method_seed_seconds": round(sum(p.get("seconds", 0) for r in results["methods"].values()
                                             for p in r["per_seed"])),
            "fit_cpu_seconds_total": round(sum(p["tuning_cpu_seconds"] for r in results["methods"].values()
                                               for p in r["per_seed"]))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=sorted(PROFILES))
    p.add_argument("--data", help="use this table instead of the dataset's default")
    p.add_argument("--label", help="label column (default: the dataset's)")
    p.add_argument("--out", help="benchmark folder (default: experiments/out/bench_<dataset>)")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    p.add_argument("--rerun", action="store_true",
                   help="with --resume and --methods: fit those methods again, keep every other method's results")
    p.add_argument("--methods", help="comma-separated subset of methods (default: all)")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (1 seed, 1 epoch); no result file")
    p.add_argument("--no-save", action="store_true", help="do not write experiments/results/ nor the docs")
    p.add_argument("--summarise-only", action="store_true",
                   help="no run: rewrite the result file and the docs from --out's finished results.json")
    args = p.parse_args(argv)
    from prom3e.cli import main as cli

    prof = PROFILES[args.dataset]
    out = Path(args.out) if args.out else OUT / f"bench_{args.dataset}"
    table = dataset_table(args.dataset, args.data)
    cmd = ["benchmark", "--data", str(table), "--label", args.label or prof["label"], "--out", str(out),
           *merged(COMMON, prof["args"], QUICK if args.quick else [])]
    full = list(cmd)  # the command the result file names: a --rerun of some methods completes it
    if args.methods:
        cmd += ["--methods", args.methods]
    cmd += ["--resume"] if args.resume else ["--overwrite"] if args.overwrite else []
    cmd += ["--rerun"] if args.rerun else []
    t0 = time.perf_counter()
    rc = 0 if args.summarise_only else cli(cmd)
    if rc != 0:
        return rc
    if args.quick or args.no_save:
        return 0
    import docgen
    import render_docs

    results = json.loads((out / "results.json").read_text())
    shown = [c.replace(str(HERE.parent) + "/", "") for c in (full if args.rerun else cmd)
             if c not in ("--resume", "--overwrite", "--rerun")]
    docgen.save_result(f"benchmark_{args.dataset}", summary(results, ["prom3e", *shown], time.perf_counter() - t0))
    return render_docs.main([])


if __name__ == "__main__":
    sys.exit(main())
