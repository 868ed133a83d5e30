"""Training at scale: one epoch streamed from a folder of parts, its peak memory and speed.

Runs ``prom3e train`` (or ``torchrun … prom3e train`` for several processes) as a child
process on the folder, for one epoch, and reports the rows, the epoch's training samples/s
(steps × global batch / the epoch's seconds, data streaming included, validation not) and
the peak resident memory (``wait4`` rusage: the largest single process, as ``/usr/bin/time
-v`` reports it; with N processes the total is up to N times that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _rss_mb(ru_maxrss: int) -> float:
    return ru_maxrss / 2**20 if sys.platform == "darwin" else ru_maxrss / 1024


def bench_scale(data: str | Path, out: str | Path, model: str = "tiny", batch: int = 1024, threads: int = 1,
                nproc: int = 1, shuffle_buffer: int = 65536, precision: str = "auto", port: int = 29561) -> dict:
    """One training epoch on ``data`` in a child process; see the module docstring."""
    from prom3e.data.dataset import Dataset

    ds = Dataset(data)
    out = Path(out)
    train = ["train", "--data", str(data), "--out", str(out), "--model", model, "--epochs", "1",
             "--batch-size", str(batch), "--threads", str(threads), "--shuffle-buffer", str(shuffle_buffer),
             "--precision", precision, "--device", "cpu", "--quiet"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(port), "-m", "prom3e.cli", *train]
    else:
        cmd = [sys.executable, "-m", "prom3e.cli", *train]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    proc.returncode = os.waitstatus_to_exitcode(status)
    res: dict = {"benchmark": "scale", "data": str(data), "rows": ds.num_rows, "parts": len(ds.files),
                 "row_groups": len(ds.units), "model": model, "batch_size": batch, "threads": threads,
                 "processes": nproc, "shuffle_buffer": shuffle_buffer, "wall_s": wall,
                 "returncode": proc.returncode, "peak_rss_mb": _rss_mb(usage.ru_maxrss),
                 "command": "prom3e " + " ".join(train)}
    if proc.returncode != 0:
        res["error"] = (stderr.strip().splitlines() or stdout.strip().splitlines() or ["?"])[-1]
        return res
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]
    metrics = json.loads((out / "metrics.json").read_text())
    rec = log[-1]
    res.update(train_rows=metrics["train_rows"], val_rows=metrics["val_rows"], steps=rec["step"],
               epoch_s=rec["seconds"], samples_per_s=rec["step"] * batch / rec["seconds"],
               precision=metrics["precision"], loss=rec["loss"], val_r1_mean=rec["val_r1_mean"])
    return res
