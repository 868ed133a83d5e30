"""1 process × B against 2 processes × B/2 (torchrun, gloo) with the gathered contrastive loss,
and 2 processes with per-rank negatives (the code before the gather), for docs/SCALE.md.

    .venv/bin/python experiments/distributed_gather.py run   # → experiments/results/distributed_gather.json

A small synthetic table in memory (``prom3e synth``), the ``tiny`` model, fp32, 1 thread per
process, the same seed everywhere; rounds run interleaved (the order reversed every other
round) because the machine is shared. Raw runs stay in experiments/out/gather/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docgen import load_result, renderer, save_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "out" / "gather"
PY = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
BEFORE = "4684dbd"  # main before the gathered loss: per-rank negatives
ROWS, BATCH, EPOCHS, ROUNDS = 30_000, 512, 3, 3
VARIANTS = ("1 process", "2 processes, gathered", "2 processes, per-rank negatives")
SLUG = dict(zip(VARIANTS, ("one", "two_gathered", "two_local"), strict=True))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(variant: str, table: Path, run: Path, old_src: Path) -> dict:
    args = ["train", "--data", str(table), "--out", str(run), "--model", "tiny", "--epochs", str(EPOCHS),
            "--batch-size", str(BATCH), "--threads", "1", "--device", "cpu", "--precision", "fp32", "--seed", "0",
            "--quiet", "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if variant == "1 process":
        cmd = [PY, "-m", "prom3e.cli", *args]
    else:
        cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(_port()), "-m", "prom3e.cli", *args]
        if "per-rank" in variant:
            env["PYTHONPATH"] = str(old_src)
    t = time.perf_counter()
    proc = subprocess.run(["nice", "-n", "10", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{variant}: {' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = log[0]["step"]
    return {"wall_s": wall, "samples_per_s": [steps * BATCH / r["seconds"] for r in log],
            "loss": [r["loss"] for r in log], "val_r1_mean": [r["val_r1_mean"] for r in log],
            "steps_per_epoch": steps}


def _weights(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run / "last" / "model.safetensors"))


def compute(table: Path, repeats: int = 5, steps: int = 20) -> dict[str, float]:
    """One rank's forward + backward per step, in one process (1 thread; no communication),
    best of ``repeats`` × ``steps``: the whole batch, half of it against the gathered targets
    (a rank of 2, gathered), half of it alone (a rank of 2, per-rank negatives)."""
    import torch

    from prom3e.data.masking import sample_visible, training_targets
    from prom3e.data.table import read_table
    from prom3e.distributed import GlobalBatch
    from prom3e.models.prom3e import Prom3e, named_config

    torch.set_num_threads(1)
    t = read_table(table)
    torch.manual_seed(0)
    model = Prom3e(named_config("tiny", list(t.modalities), list(t.dims)))
    x, present = torch.from_numpy(t.padded()[:BATCH]), torch.from_numpy(t.present[:BATCH])
    visible = sample_visible(present, (0.9, 0.1), torch.Generator().manual_seed(0))
    targets = training_targets(present, visible, False)
    half = BATCH // 2

    def step(rows: slice, batch: GlobalBatch | None) -> None:
        model.zero_grad()
        model(x[rows], visible[rows], targets[rows], None, batch=batch)[0].backward()

    cases = {"1 process": (slice(None), None),
             "2 processes, gathered": (slice(0, half), GlobalBatch(x, targets, None, 0, half, 2)),
             "2 processes, per-rank negatives": (slice(0, half), None)}
    out = {}
    for name, (rows, batch) in cases.items():
        step(rows, batch)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(steps):
                step(rows, batch)
            best = min(best, (time.perf_counter() - t0) / steps)
        out[name] = best * 1e3
    return out


def run() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    table = OUT / "table.parquet"
    if not table.exists():
        subprocess.run([PY, "-m", "prom3e.cli", "synth", "--out", str(table), "--n", str(ROWS)], check=True)
    old = OUT / "before"
    if not old.exists():  # the code before the gather, exported (no worktree registered)
        old.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    res: dict = {"rows": ROWS, "batch_size": BATCH, "epochs": EPOCHS, "load_before": list(os.getloadavg()),
                 "rounds": []}
    for i in range(ROUNDS):
        order = VARIANTS if i % 2 == 0 else tuple(reversed(VARIANTS))
        rnd = {}
        for v in order:
            rnd[v] = _train(v, table, OUT / f"run{i}_{SLUG[v]}", old / "src")
            print(v, json.dumps(rnd[v]), flush=True)
        one, two = (_weights(OUT / f"run{i}_{SLUG[v]}") for v in VARIANTS[:2])
        rnd["max_weight_diff_1_vs_2_gathered"] = max(float(np.abs(one[k] - two[k]).max()) for k in one)
        res["rounds"].append(rnd)
    res["compute_ms"] = compute(table)
    res["load_after"] = list(os.getloadavg())
    (OUT / "run.json").write_text(json.dumps(res, indent=1))
    summary = {k: res[k] for k in ("rows", "batch_size", "epochs")}
    summary["load"] = [round(res["load_before"][0], 1), round(res["load_after"][0], 1)]
    summary["steps_per_epoch"] = res["rounds"][0][VARIANTS[0]]["steps_per_epoch"]
    summary["compute_ms_per_step"] = {k: round(v, 1) for k, v in res["compute_ms"].items()}
    summary["max_weight_diff_1_vs_2_gathered"] = max(r["max_weight_diff_1_vs_2_gathered"] for r in res["rounds"])
    for v in VARIANTS:
        runs = [r[v] for r in res["rounds"]]
        rates = [float(np.median(r["samples_per_s"])) for r in runs]  # median over a run's epochs
        summary[v] = {"samples_per_s": [round(x) for x in rates],
                      "loss": [round(x, 4) for x in runs[0]["loss"]],  # seeded: every round's the same
                      "loss_rounds_agree": all(r["loss"] == runs[0]["loss"] for r in runs),
                      "val_r1_mean": [round(x, 4) for x in runs[0]["val_r1_mean"]]}
    save_result("distributed_gather", summary)
    print(json.dumps(summary, indent=1))


@renderer("distributed-gather")
def _table() -> str:
    r = load_result("distributed_gather")
    lines = [f"{r['rows']:,} rows, batch {r['batch_size']} ({r['steps_per_epoch']} steps per epoch), "
             f"{r['epochs']} epochs; load average {r['load'][0]} → {r['load'][1]}.", "",
             "| run | samples/s (per round) | one rank's forward + backward per step, in one process | "
             "training loss per epoch | validation R@1 (mean) per epoch |",
             "|---|---|---|---|---|"]
    for v in VARIANTS:
        x = r[v]
        loss = " → ".join(f"{a:.4f}" for a in x["loss"])
        if "per-rank" in v:
            loss += " (rank 0's own batch)"
        lines.append(f"| {v} | {' and '.join(f'{s:,}' for s in x['samples_per_s'])} | "
                     f"{r['compute_ms_per_step'][v]:.1f} ms | {loss} | "
                     f"{' → '.join(f'{a:.3f}' for a in x['val_r1_mean'])} |")
    lines += ["", f"Largest difference between the final weights of the 1-process and the gathered 2-process "
              f"runs: {r['max_weight_diff_1_vs_2_gathered']:.1e} (float rounding: the gradients are summed in "
              "another order). Per-rank negatives are fewer (B/2 per query instead of B), so that loss is lower "
              "and measures another objective. The compute column times one rank's step alone (1 thread, no "
              "communication, best of 5 × 20 steps): the loss is quadratic in the batch, so a rank scoring B/2 "
              "queries against B targets does about half of one process's work, and per-rank negatives a "
              "quarter of the loss's. The samples/s columns add the collectives (gloo) and the load of the "
              "shared machine."]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] != ["run"]:
        raise SystemExit(f"usage: {sys.argv[0]} run")
    run()
