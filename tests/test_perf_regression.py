"""Speed regression guards: our training step and our 10-draw reconstruction vs the reference
structure, each as a ratio in one run.

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

from prom3e.api import Fuser
from prom3e.models.prom3e import CONFIGS, Prom3e, named_config
from prom3e.perf.infer import reference_reconstruct
from prom3e.perf.reference import RefProm3e
from prom3e.perf.timing import interleaved
from prom3e.perf.train import ours_step, reference_step, synthetic_batches

BASELINE = Path(__file__).with_name("perf_baseline.json")
SHAPE = dict(config="base", batch=128, n_mod=6, dim=128)  # small: the test takes seconds


def measure(rounds: int = 5) -> float:
    """Median over rounds of (reference step time / our step time), both fp32."""
    cfg, b, m, d = SHAPE["config"], SHAPE["batch"], SHAPE["n_mod"], SHAPE["dim"]
    ours = ours_step(cfg, b, "fp32", n_mod=m, dim=d)[0]
    ref = reference_step(cfg, b, "fp32", n_mod=m, dim=d)[0]
    t = interleaved({"ours": ours, "ref": ref}, rounds, warmup=1)
    return statistics.median(r / o for r, o in zip(t["ref"], t["ours"], strict=True))


def measure_reconstruct(rounds: int = 5, n: int = 10) -> float:
    """Median ratio for decoding ``n`` draws of every other modality from 1 visible, fp32."""
    cfg, b, m, d = SHAPE["config"], 2 * SHAPE["batch"], SHAPE["n_mod"], SHAPE["dim"]
    torch.manual_seed(0)
    mods = [f"m{i}" for i in range(m)]
    fuser = Fuser(Prom3e(named_config(cfg, mods, [d] * m)).eval(), "cpu", "fp32")
    c = CONFIGS[cfg]
    ref = RefProm3e(m, d, c["embed_dim"], c["depth"], c["heads"], c["mlp_dim"], c["registers"]).eval()
    x = synthetic_batches(1, b, m, d)[0]
    batch = (x, torch.ones(b, m, dtype=torch.bool))
    xs = [x[:, i].contiguous() for i in range(m)]
    fns = {"ours": lambda: fuser.reconstruct(batch, targets=mods[1:], visible=mods[:1], n_samples=n),
           "ref": lambda: reference_reconstruct(ref, xs, [0], n)}
    t = interleaved(fns, rounds, warmup=1)
    return statistics.median(r / o for r, o in zip(t["ref"], t["ours"], strict=True))


def _check(name: str, ratio: float, what: str) -> None:
    recorded = json.loads(BASELINE.read_text())[name]
    assert ratio >= 0.5 * recorded, (
        f"SPEED REGRESSION: {what} is now {ratio:.2f}x the reference structure's speed, recorded "
        f"{recorded:.2f}x (shape {SHAPE}); profile before merging (docs/PERFORMANCE.md)")


def test_training_step_speed_ratio_has_not_regressed():
    torch.set_num_threads(2)
    _check("train_fp32_ratio_vs_reference", measure(), "our fp32 training step")


def test_reconstruct_speed_ratio_has_not_regressed():
    torch.set_num_threads(2)
    _check("reconstruct_n10_fp32_ratio_vs_reference", measure_reconstruct(), "our fp32 10-draw reconstruction")


if __name__ == "__main__" and "--record" in sys.argv:
    torch.set_num_threads(2)
    rec = {"train_fp32_ratio_vs_reference": round(measure(9), 3),
           "reconstruct_n10_fp32_ratio_vs_reference": round(measure_reconstruct(9), 3), "shape": SHAPE}
    BASELINE.write_text(json.dumps(rec, indent=1) + "\n")
    print(rec)
