"""Load test of `prom3e serve` on loopback → experiments/results/serve_load.json (docs/SERVE.md).

    nice -n 10 .venv/bin/python experiments/serve_load.py       # ~2-4 min on 2 shared cores

The same measurement as `prom3e perf serve` (the demo's model shape: `base`, 6 modalities ×
64-d, random weights; /encode; 5,000 requests per batch size, 16 concurrent clients, rows 1
and 64 per request; one uvicorn worker, 2 torch threads), with clients and server on one
machine, so the clients' CPU time competes with the server's.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docgen import load_result, renderer, save_result  # noqa: E402

NAME = "serve_load"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from prom3e.perf.serve import bench_serve

    r = bench_serve("base", dim=64, rows=(1, 64), requests=args.requests, concurrency=args.concurrency,
                    threads=args.threads, time_limit_s=600)
    r["machine"] = {"cpus": r.pop("cpu_count"), "python": platform.python_version(), "note":
                    "shared 2-core machine; clients on the same machine"}
    r["command"] = (f"prom3e perf serve --config base --dim 64 --rows 1,64 --requests {args.requests} "
                    f"--concurrency {args.concurrency} --threads {args.threads}")
    path = save_result(NAME, r)
    print(f"wrote {path}: {r['errors']} errors")
    return 0 if r["errors"] == 0 else 1


@renderer("serve-load")
def _table() -> str:
    r = load_result(NAME)
    lines = [f"`{r['command']}` — {r['endpoint']}, model `{r['config']}` ({r['modalities']} modalities × "
             f"{r['dim']}-d, precision {r['precision']} = {r['precision_resolved']}), "
             f"{r['concurrency']} concurrent keep-alive clients, "
             f"{r['workers']} uvicorn worker with {r['threads']} torch threads, on 127.0.0.1 "
             f"({r['machine']['note']}, {r['machine']['cpus']} CPUs).", "",
             "| rows per request | requests | errors | requests/s | rows/s | p50 ms | p90 ms | p99 ms | max ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, x in r["results"].items():
        lat = x["latency_ms"]
        lines.append(f"| {key.removeprefix('rows')} | {x['requests']} | {x['errors']} | {x['requests_per_s']:.0f} | "
                     f"{x['rows_per_s']:.0f} | {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} | "
                     f"{lat['max']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
