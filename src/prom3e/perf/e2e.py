"""End to end: wall time of ``prom3e demo`` and time-to-quality from its training log."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def time_to_quality(log: list[dict], within: float = 0.01) -> dict:
    """Training seconds until validation R@1 is within ``within`` (1 point) of its final value."""
    final = log[-1]["val_r1_mean"]
    elapsed = 0.0
    for rec in log:
        elapsed += rec["seconds"]
        if rec["val_r1_mean"] >= final - within:
            return {"epoch": rec["epoch"], "seconds": elapsed, "final_val_r1": final,
                    "train_seconds_total": sum(r["seconds"] for r in log)}
    return {"epoch": log[-1]["epoch"], "seconds": elapsed, "final_val_r1": final}


def bench_e2e(out: str | Path, extra: list[str] | None = None, threads: int = 2) -> dict:
    """Run ``prom3e demo --out OUT`` in a subprocess; report its wall time and time-to-quality."""
    out = Path(out)
    cmd = [sys.executable, "-m", "prom3e.cli", "demo", "--out", str(out), *(extra or [])]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    res: dict = {"benchmark": "e2e", "command": " ".join(cmd[2:]), "threads": threads, "wall_s": wall,
                 "returncode": proc.returncode}
    if proc.returncode != 0:
        res["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
    cfg_path, metrics_path = out / "run" / "config.json", out / "run" / "metrics.json"
    if cfg_path.exists():  # what the demo trained: config, batch and (resolved) precision
        train = json.loads(cfg_path.read_text()).get("train", {})
        res.update({k: train.get(k) for k in ("model", "batch_size", "precision")})
    if metrics_path.exists():
        res["precision"] = json.loads(metrics_path.read_text()).get("precision", res.get("precision"))
    log_path = out / "run" / "log.jsonl"
    if log_path.exists():
        log = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        if log:
            res["time_to_quality"] = time_to_quality(log)
    return res
