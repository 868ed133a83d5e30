"""Speed headline for docs/RESULTS.md: `prom3e perf train`, `encode` and `e2e`, one after another.

Each command prints one JSON object as its last line; this script runs them (torch at
``--threads``, 1 by default), records the load average around each, and writes
``experiments/results/speed.json``. Every ratio is measured within one process against the
reference re-implementation (`src/prom3e/perf/reference.py`), so it holds under load better than
absolute rates do. Details and the other measurements: docs/PERFORMANCE.md.

    .venv/bin/python experiments/speed.py              # ≈ 10 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from docgen import load_result, renderer, save_result

ROOT = Path(__file__).resolve().parents[1]
NAME = "speed"


def perf(args: list[str]) -> dict:
    """Run ``prom3e perf ARGS``; its last output line (JSON), wall time and load average."""
    before = os.getloadavg()[0]
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "prom3e.cli", "perf", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    return {"command": "prom3e perf " + " ".join(args), "summary": lines[-2] if len(lines) > 1 else "",
            "result": json.loads(lines[-1]), "wall_s": round(time.perf_counter() - t0, 1),
            "load_before": round(before, 1), "load_after": round(os.getloadavg()[0], 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    t, r = str(args.threads), str(args.repeats)
    runs = {
        "train": perf(["train", "--config", "paper", "--batch", "1024", "--threads", t, "--repeats", r]),
        "encode": perf(["encode", "--config", "paper", "--batch", "1024", "--threads", t, "--repeats", r]),
        "e2e": perf(["e2e", "--out", str(ROOT / "experiments" / "out" / "e2e"), "--threads", t, "--overwrite"]),
    }
    runs["e2e"]["command"] = f"prom3e perf e2e --out experiments/out/e2e --threads {t} --overwrite"
    print(f"wrote {save_result(NAME, {'threads': args.threads, 'runs': runs})}")
    return 0


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


@renderer("speed-summary")
def _summary() -> str:
    s = load_result(NAME)
    tr, enc, e2e = (s["runs"][k] for k in ("train", "encode", "e2e"))
    t, e, d = tr["result"], enc["result"], e2e["result"]
    speed = t.get("speedup_vs_reference_fp32", {})
    ttq = d.get("time_to_quality") or {}
    lines = [
        "| measurement (command) | result | load average (1 min, before → after) |", "|---|---|---|",
        f"| training step, `paper` config, batch 1024 (`{tr['command']}`) | default ({t['precision']}) "
        f"**{_x(speed.get('ours_' + t['precision']))}** the reference's fp32 step at "
        f"{100 * t['fraction_of_matmul']:.0f} % of the in-run {t['precision']} matmul rate "
        f"(in FLOPs needed); fp32 {_x(speed.get('ours_fp32'))} | {tr['load_before']} → {tr['load_after']} |",
        f"| encode, 1 visible modality (`{enc['command']}`) | **{_x(e.get('encode_x_reference'))}** the reference; "
        f"slowest case {_x(e.get('min_x_reference'))} (`{e.get('min_x_reference_case')}`) "
        f"| {enc['load_before']} → {enc['load_after']} |",
        f"| `prom3e demo` end to end (`{e2e['command']}`) | **{d['wall_s']:.0f} s** wall (exit {d['returncode']}); "
        f"validation R@1 within 1 point of its final {ttq.get('final_val_r1', float('nan')):.3f} after epoch "
        f"{ttq.get('epoch')} ({ttq.get('seconds', float('nan')) / 60:.1f} min of training) "
        f"| {e2e['load_before']} → {e2e['load_after']} |",
    ]
    return "\n".join(lines) + f"\n\n{s['threads']} torch thread(s); a shared 2-core machine, no GPU."


if __name__ == "__main__":
    sys.exit(main())
