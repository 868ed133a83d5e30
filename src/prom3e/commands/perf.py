"""``prom3e perf``: speed benchmarks, ours vs the reference structure, measured in one run."""

from __future__ import annotations

from prom3e.commands.common import add_overwrite, count, int_list, number, subparser

EXAMPLES = """\
  prom3e perf train --config paper --batch 1024 --threads 2
  prom3e perf encode --config paper --batch 1024
  prom3e perf retrieval --sizes 100000,1000000
  prom3e perf e2e --out /tmp/demo
  prom3e perf serve --config base --requests 5000 --concurrency 16 --rows 1,64
  prom3e perf scale --data parts/ --config tiny --batch 1024 --threads 1 [--nproc 2]
The last line printed is one JSON object; see docs/PERFORMANCE.md.
"""


def add_parser(sub) -> None:
    p = subparser(sub, "perf", "Speed benchmarks (training, encode/reconstruct, retrieval, end to end).",
                  EXAMPLES, aliases=["bench"])
    p.add_argument("what", choices=["train", "encode", "reconstruct", "retrieval", "e2e", "serve", "scale"])
    p.add_argument("--config", default=None, choices=["tiny", "base", "paper", "large"],
                   help="model config (default: paper; serve: base, the demo's; scale: tiny)")
    p.add_argument("--batch", type=count(1), default=1024)
    p.add_argument("--threads", type=count(1), default=2, help="torch threads (default: 2)")
    p.add_argument("--repeats", type=count(1), default=5, help="timed rounds per variant (medians reported)")
    p.add_argument("--precision", default="both", choices=["both", "fp32", "bf16"],
                   help="our model's precision(s) to time (train/encode); the reference is fp32")
    p.add_argument("--no-reference", action="store_true", help="train: skip the reference re-implementation")
    p.add_argument("--sizes", type=int_list(1), default="100000,1000000", help="retrieval: gallery sizes")
    p.add_argument("--out", default="bench-demo", help="e2e: demo output folder; scale: run folder")
    p.add_argument("--requests", type=count(1), default=5000, help="serve: requests per batch size (default 5000)")
    p.add_argument("--concurrency", type=count(1), default=16, help="serve: concurrent clients (default 16)")
    p.add_argument("--rows", default="1,64", help="serve: rows per request, comma-separated (default 1,64)")
    p.add_argument("--dim", type=count(1), default=64, help="serve: dim of each of the 6 modalities (default 64)")
    p.add_argument("--workers", type=count(1), default=1, help="serve: server worker processes (default 1)")
    p.add_argument("--endpoint", default="/encode", choices=["/encode", "/reconstruct", "/next-modality"],
                   help="serve: the endpoint to load (default /encode)")
    p.add_argument("--time-limit", type=number(0, low_open=True), default=300.0,
                   help="serve: seconds per batch size at most (default 300)")
    p.add_argument("--data", help="scale: a folder of Parquet parts (e.g. from 'prom3e synth --parts'; "
                   "required by scale)")
    p.add_argument("--nproc", type=count(1), default=1, help="scale: processes (torchrun) (default: 1)")
    p.add_argument("--shuffle-buffer", type=count(1), default=65536, help="scale: rows in the shuffle buffer")
    add_overwrite(p, "e2e demo output in --out")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys

    if getattr(args, "command", None) == "bench":
        print("prom3e: 'prom3e bench' is deprecated; use 'prom3e perf' (same options)", file=sys.stderr)

    import torch

    from prom3e.errors import Prom3eError

    if args.config is None:
        args.config = {"serve": "base", "scale": "tiny"}.get(args.what, "paper")
    torch.set_num_threads(args.threads)
    if args.what == "scale":
        from prom3e.perf.scale import bench_scale

        if not args.data:
            raise Prom3eError("perf scale needs --data (a folder of parts: prom3e synth --out DIR --parts)")
        r = bench_scale(args.data, args.out, args.config, args.batch, args.threads, args.nproc,
                        args.shuffle_buffer)
        if r["returncode"] != 0:
            raise Prom3eError(f"perf scale: training failed: {r.get('error')}")
        print(f"scale: {r['rows']:,} rows in {r['parts']} parts, {r['model']} model, batch {r['batch_size']}, "
              f"{r['processes']} process(es) x {r['threads']} thread(s): {r['samples_per_s']:.0f} samples/s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB per process", flush=True)
        print(json.dumps(r), flush=True)
        return 0
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
    elif args.what == "serve":
        from prom3e.perf.serve import bench_serve

        try:
            rows = tuple(int(r) for r in args.rows.split(","))
        except ValueError:
            raise Prom3eError(f"--rows wants comma-separated integers, got '{args.rows}'") from None
        for name, v in (("requests", args.requests), ("concurrency", args.concurrency), ("workers", args.workers),
                        ("dim", args.dim), ("rows", min(rows))):
            if v < 1:
                raise Prom3eError(f"--{name} must be ≥ 1, got {v}")
        if not 0 < args.time_limit <= 3600:
            raise Prom3eError(f"--time-limit must be in (0, 3600] seconds, got {args.time_limit}")
        r = bench_serve(args.config, args.dim, 6, rows, args.requests, args.concurrency, args.threads,
                        args.workers, args.endpoint, "auto" if args.precision == "both" else args.precision,
                        args.time_limit)
        summary = f"serve {args.endpoint} {args.config} 6×{args.dim}-d, {args.concurrency} clients, " + "; ".join(
            f"{k}: {v['requests_per_s']:.0f} req/s, p50 {v['latency_ms']['p50']:.1f} ms, p99 "
            f"{v['latency_ms']['p99']:.1f} ms, {v['errors']} errors" for k, v in r["results"].items())
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
