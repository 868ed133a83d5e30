"""Timing helpers: interleaved repeats with medians, the in-run matmul rate, peak RSS."""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each function ``warmup`` times, then ``repeats`` rounds of one call each, in
    alternating order (so load changes on a shared machine hit every variant alike).
    Returns the wall seconds of every timed call per name."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names if r % 2 == 0 else reversed(names):
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5,
                  device: str = "cpu") -> float:
    """Median GFLOP/s of an ``n × n`` matmul (2n³ FLOPs) in ``dtype``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def run() -> None:
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()

    t = interleaved({"mm": run}, repeats, warmup=2)["mm"]
    return 2 * n**3 / median(t) / 1e9


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024


def free() -> None:
    gc.collect()
