"""The all-method benchmark on 100 000 rows: it finishes, in bounded memory (issue 10).

The synthetic default generator at 100 000 rows (``text`` left out as a label leak), every method,
seed 0, one epoch, one grid point (lr 1e-3, width 64), natural training, one thread:

    .venv/bin/python experiments/benchmark_scale.py     # → experiments/results/benchmark_scale.json
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ARGS = ["--seeds", "0", "--epochs", "1", "--lrs", "1e-3", "--widths", "64", "--train-missing", "natural",
        "--threads", "1"]


def main() -> int:
    import docgen
    import render_docs

    from prom3e.cli import main as cli

    table = HERE / "out" / "synth100k.parquet"
    if not table.exists() and cli(["synth", "--n", "100000", "--out", str(table)]) != 0:
        return 1
    out = HERE / "out" / "bench_scale100k"
    t0 = time.perf_counter()
    rc = cli(["benchmark", "--data", str(table), "--label", "species", "--out", str(out), *ARGS,
              "--resume" if (out / "partial").exists() else "--overwrite"])
    if rc != 0:
        return rc
    res = json.loads((out / "results.json").read_text())
    methods = {}
    for name, r in res["methods"].items():
        p = r["per_seed"][0]
        methods[name] = {k: p.get(k) for k in ("fit_seconds", "fit_cpu_seconds", "fit_peak_mib", "predict_seconds",
                                              "predict_peak_mib", "seconds")}
        methods[name]["natural_acc"] = p["protocols"]["natural"]["acc"]
    docgen.save_result("benchmark_scale", {
        "rows": res["config"]["rows"], "modalities": res["config"]["modalities"],
        "left_out": res["config"]["left_out"], "methods": methods,
        "wall_seconds_last_invocation": round(time.perf_counter() - t0),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "command": "prom3e benchmark --data experiments/out/synth100k.parquet --label species " + " ".join(ARGS)})
    return render_docs.main([])


if __name__ == "__main__":
    sys.exit(main())
