"""``prom3e perf``: speed benchmarks, ours vs the reference structure, measured in one run."""

from __future__ import annotations

from prom3e.commands.common import add_overwrite, count, int_list, subparser

EXAMPLES = """\
  prom3e perf train --config paper --batch 1024 --threads 2
  prom3e perf encode --config paper --batch 1024
  prom3e perf retrieval --sizes 100000,1000000
  prom3e perf e2e --out /tmp/demo
The last line printed is one JSON object; see docs/PERFORMANCE.md.
"""


def add_parser(sub) -> None:
    p = subparser(sub, "perf", "Speed benchmarks (training, encode/reconstruct, retrieval, end to end).",
                  EXAMPLES, aliases=["bench"])
    p.add_argument("what", choices=["train", "encode", "reconstruct", "retrieval", "e2e"])
    p.add_argument("--config", default="paper", choices=["tiny", "base", "paper", "large"])
    p.add_argument("--batch", type=count(1), default=1024)
    p.add_argument("--threads", type=count(1), default=2, help="torch threads (default: 2)")
    p.add_argument("--repeats", type=count(1), default=5, help="timed rounds per variant (medians reported)")
    p.add_argument("--precision", default="both", choices=["both", "fp32", "bf16"],
                   help="our model's precision(s) to time (train/encode); the reference is fp32")
    p.add_argument("--no-reference", action="store_true", help="train: skip the reference re-implementation")
    p.add_argument("--sizes", type=int_list(1), default=[100000, 1000000], help="retrieval: gallery sizes")
    p.add_argument("--out", default="bench-demo", help="e2e: demo output folder")
    add_overwrite(p, "e2e demo output in --out")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys

    if getattr(args, "command", None) == "bench":
        print("prom3e: 'prom3e bench' is deprecated; use 'prom3e perf' (same options)", file=sys.stderr)

    import torch

    torch.set_num_threads(args.threads)
    precisions = ("bf16", "fp32") if args.precision == "both" else (args.precision,)
    if args.what == "train":
        from prom3e.perf.train import bench_train

        r = bench_train(args.config, args.batch, precisions, () if args.no_reference else ("fp32",), args.repeats)
        ref = r.get("speedup_vs_reference_fp32", {})
        summary = (f"train {args.config} batch {args.batch} threads {r['threads']} {r['precision']}: "
                   f"{r['samples_per_s']:.0f} samples/s, {r['fraction_of_matmul']:.0%} of the "
                   f"{r['matmul_gflops_main']:.0f} GFLOP/s matmul rate"
                   + "".join(f"; {k} {v:.2f}x reference fp32" for k, v in ref.items() if k.startswith("ours")))
    elif args.what in ("encode", "reconstruct"):
        from prom3e.perf.infer import bench_infer

        r = bench_infer(args.config, args.batch, args.repeats, precisions=tuple(reversed(precisions)))
        summary = (f"encode {args.config} batch {args.batch} threads {r['threads']} {r['precision']}: "
                   f"{r['samples_per_s']:.0f} samples/s (1 visible), {r['encode_x_reference']:.2f}x reference "
                   f"fp32; slowest case {r['min_x_reference']:.2f}x ({r['min_x_reference_case']})")
    elif args.what == "retrieval":
        from prom3e.perf.retrieval import bench_retrieval

        r = bench_retrieval(tuple(args.sizes))
        summary = (f"retrieval dim {r['dim']}, {r['queries']} queries in one batch, threads {r['threads']}: "
                   + "; ".join(f"{k}: {v['queries_per_s']:.0f} q/s, R@10 {v['recall_at_10']:.3f}"
                               for k, v in r["results"].items()))
    else:
        from prom3e.perf.e2e import bench_e2e

        r = bench_e2e(args.out, ["--overwrite"] if args.overwrite else [], threads=args.threads)
        ttq = r.get("time_to_quality", {})
        summary = (f"prom3e demo ({r.get('model')} config, batch {r.get('batch_size')}, precision "
                   f"{r.get('precision')}), threads {r['threads']}: {r['wall_s']:.0f}s wall (exit {r['returncode']}), "
                   f"time-to-quality {ttq.get('seconds', float('nan')) / 60:.1f} min (epoch {ttq.get('epoch')})")
    print(summary, flush=True)
    print(json.dumps(r), flush=True)
    return 0
