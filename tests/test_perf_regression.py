"""Speed regression guard: our training step vs the reference structure, as a ratio in one run.

An absolute time means nothing on a shared machine; the ratio of two steps timed in
alternation is stable. The recorded ratio lives in ``tests/perf_baseline.json``; the test
fails loudly when the current ratio drops below half of it. Re-record with
``python tests/test_perf_regression.py --record`` after an intended change.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from prom3e.bench.timing import interleaved
from prom3e.bench.train import ours_step, reference_step

BASELINE = Path(__file__).with_name("perf_baseline.json")
SHAPE = dict(config="base", batch=128, n_mod=6, dim=128)  # small: the test takes seconds


def measure(rounds: int = 5) -> float:
    """Median over rounds of (reference step time / our step time), both fp32."""
    cfg, b, m, d = SHAPE["config"], SHAPE["batch"], SHAPE["n_mod"], SHAPE["dim"]
    ours = ours_step(cfg, b, "fp32", n_mod=m, dim=d)[0]
    ref = reference_step(cfg, b, "fp32", n_mod=m, dim=d)[0]
    t = interleaved({"ours": ours, "ref": ref}, rounds, warmup=1)
    return statistics.median(r / o for r, o in zip(t["ref"], t["ours"], strict=True))


def test_training_step_speed_ratio_has_not_regressed():
    torch.set_num_threads(2)
    recorded = json.loads(BASELINE.read_text())["train_fp32_ratio_vs_reference"]
    ratio = measure()
    assert ratio >= 0.5 * recorded, (
        f"SPEED REGRESSION: our fp32 training step is now {ratio:.2f}x the reference structure's speed, "
        f"recorded {recorded:.2f}x (shape {SHAPE}); profile before merging (docs/PERFORMANCE.md)")


if __name__ == "__main__" and "--record" in sys.argv:
    torch.set_num_threads(2)
    r = measure(9)
    BASELINE.write_text(json.dumps({"train_fp32_ratio_vs_reference": round(r, 3), "shape": SHAPE}, indent=1) + "\n")
    print(r)
