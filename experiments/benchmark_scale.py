"""The all-method benchmark on 100 000 rows: it finishes, in bounded memory (issue 10).

The synthetic default generator at 100 000 rows (``text`` left out as a label leak), every method,
seed 0, one epoch, one grid point (lr 1e-3, width 64), natural training, one thread. Before it,
the k-NN imputation alone (the 4 training views of every row imputed against the whole table as
pool) at 20 000 and 100 000 rows, each in its own process: CPU seconds and peak resident set.

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


KNN = """
import resource, sys, time, numpy as np, torch
torch.set_num_threads(1)
from prom3e.data.synthetic import SynthConfig, generate_table
from prom3e.methods.base import FitConfig
from prom3e.methods.impute import KnnImpute
n = int(sys.argv[1])
t = generate_table(SynthConfig(n=n, modalities=("image", "sat", "loc", "env", "sound")))
y = np.zeros(n, np.int64); y[:2] = 1
m = KnnImpute(FitConfig(epochs=1, width=16)); m._remember(t, y, 2)
c0, t0 = time.process_time(), time.perf_counter(); m.build(t, y)
print(time.process_time() - c0, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def knn_imputation(n: int) -> dict:
    """CPU / wall seconds and peak RSS (MiB) of imputing the training views of ``n`` rows."""
    import subprocess

    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", KNN, str(n)], capture_output=True, text=True, check=True, env=env)
    cpu, wall, rss = map(float, out.stdout.split())
    return {"rows": n, "cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1), "peak_rss_mib": round(rss)}


def main() -> int:
    import docgen
    import render_docs

    from prom3e.cli import main as cli

    knn = [knn_imputation(n) for n in (20_000, 100_000)]
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
        "left_out": res["config"]["left_out"], "methods": methods, "knn_imputation": knn,
        "wall_seconds_last_invocation": round(time.perf_counter() - t0),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "command": "prom3e benchmark --data experiments/out/synth100k.parquet --label species " + " ".join(ARGS)})
    return render_docs.main([])


if __name__ == "__main__":
    sys.exit(main())
