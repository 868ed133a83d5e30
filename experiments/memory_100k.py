"""Peak memory at 100 000 rows of the code paths that used to build rows × rows matrices.

Each step runs in its own process under ``/usr/bin/time -v`` (its maximum resident set size):

- ``prom3e train`` (tiny model, 1 epoch) with half the rows as validation rows (``val_cap``
  50 000): the per-epoch validation R@1 ranks 50 000 reconstructions against each modality;
- ``prom3e align`` (1 epoch, ``--val-frac 0.5``): the validation top-1 over ~50 000 pairs;
- the benchmark's reconstruction R@1 (``tasks.comparison.scoring.recall_at_1``) for 100 000 queries;
- Python + torch + prom3e imported, as the floor.

    python experiments/memory_100k.py      # writes experiments/results/memory_100k.json

Before the chunking, the same steps held whole float32 score matrices (train: masked rows ×
present rows of each modality; align: validation pairs × validation pairs; the benchmark: 2048
queries × all rows at a time); :func:`before_gib` computes their sizes on the same table (not run: they
do not fit the test machine). ``--sizes-only`` recomputes those and keeps the measured steps.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docgen import load_result, renderer, save_result  # noqa: E402

ROWS = 100_000
DIM = 64


def measure(cmd: list[str], env: dict) -> dict:
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return {"peak_rss_mib": round(kb / 1024, 1), "wall_s": round(wall, 1)}


RECALL = """
import numpy as np
from prom3e.tasks.comparison.benchmark import recall_at_1
rng = np.random.default_rng(0)
real = rng.normal(size=({rows}, {dim})).astype(np.float32)
est = real + 0.5 * rng.normal(size=real.shape).astype(np.float32)
print(recall_at_1(est, real, np.arange({rows})))
"""


def before_gib(rows: int = ROWS, dim: int = DIM) -> dict[str, float]:
    """Largest score matrix (GiB, float32) each step held before the chunking, on this table."""
    import torch

    from prom3e.data.masking import sample_visible
    from prom3e.data.synthetic import SynthConfig, generate_table
    from prom3e.train.loop import split_rows

    t = generate_table(SynthConfig(n=rows, dim=dim))
    _, val = split_rows(len(t), 0.5, 0)
    present = torch.from_numpy(t.present[val[: rows // 2]])
    visible = sample_visible(present, (1.0,), torch.Generator().manual_seed(0))
    train = max(int((present[:, m] & ~visible[:, m]).sum()) * int(present[:, m].sum()) for m in range(present.shape[1]))
    a = t.modalities.index("image")
    pairs = [int((t.present[:, m] & t.present[:, a]).sum()) for m in range(len(t.modalities)) if m != a]
    n_val = max(int(round(0.5 * p)) for p in pairs)
    return {"train": round(train * 4 / 2**30, 1), "align": round(n_val**2 * 4 / 2**30, 1),
            "align_validation_pairs": n_val, "benchmark_recall_at_1": round(2048 * rows * 4 / 2**30, 2)}


def main() -> None:
    if "--sizes-only" in sys.argv:
        out = load_result("memory_100k")
        out["before_gib"] = before_gib()
        out.pop("before_matrix_gib", None)
        save_result("memory_100k", out)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    load = os.getloadavg()[0]
    py = sys.executable
    out: dict = {"rows": ROWS, "dim": DIM, "threads": 1, "steps": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "t.parquet"
        subprocess.run([py, "-m", "prom3e.cli", "synth", "--out", str(data), "--n", str(ROWS), "--dim", str(DIM)],
                       check=True, env=env, capture_output=True)
        (tmp / "train.yaml").write_text(json.dumps({"model": "tiny", "epochs": 1, "val_fraction": 0.5,
                                                    "val_cap": ROWS // 2, "threads": 1, "precision": "fp32"}))
        steps = out["steps"]
        steps["import"] = measure([py, "-c", "import torch, prom3e.cli, prom3e.train.loop"], env)
        steps["train"] = measure([py, "-m", "prom3e.cli", "train", "--data", str(data), "--out", str(tmp / "run"),
                                  "--config", str(tmp / "train.yaml"), "--quiet"], env)
        steps["align"] = measure([py, "-m", "prom3e.cli", "align", "--data", str(data), "--anchor", "image", "--out",
                                  str(tmp / "a.parquet"), "--model-out", str(tmp / "A"), "--epochs", "1",
                                  "--hidden", "64", "--val-frac", "0.5", "--batch-size", "1024", "--no-progress"],
                                 env)
        steps["benchmark_recall_at_1"] = measure([py, "-c", RECALL.format(rows=ROWS, dim=DIM)], env)
    out["validation_rows"] = ROWS // 2
    out["before_gib"] = before_gib()
    out["load_average_1min"] = round(load, 1)
    print(json.dumps(out, indent=1))
    save_result("memory_100k", out)


@renderer("memory-100k")
def _table() -> str:
    r = load_result("memory_100k")
    s = r["steps"]
    rows = [("Python + torch + prom3e imported (the floor)", "import"),
            (f"`prom3e train`, tiny, 1 epoch, validation R@1 on {r['validation_rows']:,} rows", "train"),
            (f"`prom3e align`, 1 epoch, validation top-1 on up to {r['before_gib']['align_validation_pairs']:,} "
             "pairs per modality", "align"),
            (f"benchmark reconstruction R@1, {r['rows']:,} queries", "benchmark_recall_at_1")]
    before = r["before_gib"]
    lines = ["| step (100 000 rows × 6 modalities × 64 dims) | peak RSS | wall | score matrix before |",
             "|---|---|---|---|"]
    lines += [f"| {label} | {s[k]['peak_rss_mib']:,.0f} MiB | {s[k]['wall_s']:.0f} s | "
              f"{f'{before[k]} GiB' if k in before else '–'} |" for label, k in rows]
    lines.append("")
    load = f", load average {r['load_average_1min']}" if "load_average_1min" in r else ""
    lines.append(f"Measured with `/usr/bin/time -v` (maximum resident set size), {r['threads']} thread, one process "
                 f"per step (`python experiments/memory_100k.py`), on a shared 2-core machine (wall times are "
                 f"indicative only{load}). *Score matrix before*: the largest float32 matrix the step held before "
                 "the chunking, computed on the same table (`before_gib`), not run.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
