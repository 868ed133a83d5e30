"""Figures for docs/SCALE.md and docs/PERFORMANCE.md: training from a 10M-row folder of parts,
1 vs 2 processes, streaming vs in-memory on a small table, and per-stage rates.

    .venv/bin/python experiments/scale_figures.py synth      # 10M + 1M-row synthetic parts
    .venv/bin/python experiments/scale_figures.py train10m   # one epoch, tiny, peak RSS
    .venv/bin/python experiments/scale_figures.py procs      # 1M rows: 1 vs 2 processes
    .venv/bin/python experiments/scale_figures.py small      # 200k rows: in-memory vs streamed
    .venv/bin/python experiments/scale_figures.py embed      # stage-1 encoder rates
    .venv/bin/python experiments/scale_figures.py stages     # align/reconstruct/index/evaluate/train rates
    .venv/bin/python experiments/scale_figures.py summary    # → experiments/results/scale.json

Each step writes experiments/out/scale/STEP.json (git-ignored) and records the machine's load
average before and after it; ``summary`` gathers them. Run one step at a time (they are long:
the machine is shared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docgen import load_result, renderer, save_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "out" / "scale"
PY = sys.executable
NICE = ["nice", "-n", "10"]
BASELINE = "fab9f41"  # the commit before folders of parts: the in-memory loop as it was


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _run(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command; wall seconds and peak RSS (the largest process, as /usr/bin/time -v)."""
    t = time.perf_counter()
    proc = subprocess.Popen(NICE + cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}): {err.strip()[-2000:]}")
    return {"wall_s": time.perf_counter() - t, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out}


def _save(step: str, obj: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{step}.json").write_text(json.dumps(obj, indent=1))
    print(json.dumps(obj, indent=1))


def synth() -> None:
    res = {"load_before": _load()}
    for name, n in (("synth10m", 10_000_000), ("synth1m", 1_000_000)):
        r = _run([PY, "-m", "prom3e.cli", "synth", "--out", str(OUT / name), "--parts", "--n", str(n)])
        res[name] = {"rows": n, "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"],
                     "bytes": sum(f.stat().st_size for f in (OUT / name).glob("part-*.parquet"))}
    res["load_after"] = _load()
    _save("synth", res)


def _scale(data: Path, out: Path, nproc: int = 1) -> dict:
    from prom3e.perf.scale import bench_scale

    load = _load()
    r = bench_scale(data, out, "tiny", 1024, threads=1, nproc=nproc)
    if r["returncode"] != 0:
        raise SystemExit(f"training failed: {r.get('error')}")
    return {**r, "load_before": load, "load_after": _load()}


def train10m() -> None:
    _save("train10m", _scale(OUT / "synth10m", OUT / "run10m"))


def procs() -> None:
    runs = [_scale(OUT / "synth1m", OUT / f"run1m_{n}p_{i}", n) for i, n in enumerate((1, 2, 2, 1))]
    _save("procs", {"runs": runs})


def small() -> None:
    """Samples/s of one epoch on a 200k-row table: in memory (this code and the baseline
    commit's) and streamed from parts of the same rows; rounds interleaved."""
    table = OUT / "small.parquet"
    parts = OUT / "small_parts"
    if not table.exists():
        _run([PY, "-m", "prom3e.cli", "synth", "--out", str(table), "--n", "200000"])
        import pyarrow.parquet as pq

        parts.mkdir(parents=True, exist_ok=True)
        t = pq.read_table(table)
        for a in range(0, t.num_rows, 50_000):
            pq.write_table(t.slice(a, 50_000), parts / f"p{a:07d}.parquet", row_group_size=16384)
    old = OUT / "baseline"
    if not old.exists():  # the baseline's sources, exported (no worktree registered)
        old.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    variants = {"in_memory": ([PY, "-m", "prom3e.cli"], table, {}),
                "in_memory_baseline": ([PY, "-m", "prom3e.cli"], table, {"PYTHONPATH": str(old / "src")}),
                "streamed": ([PY, "-m", "prom3e.cli"], parts, {})}
    res: dict = {"rows": 200_000, "load_before": _load(), "rounds": []}
    for i in range(3):
        names = list(variants) if i % 2 == 0 else list(reversed(variants))
        rnd = {}
        for name in names:
            cmd, data, env = variants[name]
            run = OUT / f"small_{name}"
            r = _run([*cmd, "train", "--data", str(data), "--out", str(run), "--model", "tiny", "--epochs", "1",
                      "--batch-size", "1024", "--threads", "1", "--device", "cpu", "--quiet"], env)
            log = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
            rnd[name] = {"samples_per_s": log["step"] * 1024 / log["seconds"], "peak_rss_mb": r["peak_rss_mb"],
                         "wall_s": r["wall_s"]}
        res["rounds"].append(rnd)
    res["load_after"] = _load()
    _save("small", res)


def _rate(cmd: list[str], rows: int, env: dict | None = None) -> dict:
    r = _run(cmd, env)
    return {"rows": rows, "wall_s": r["wall_s"], "rows_per_s": rows / r["wall_s"], "peak_rss_mb": r["peak_rss_mb"]}


def embed() -> None:
    """Stage-1 encoder rates, one process, one thread: each spec embedded at n and n/4 rows;
    rows/s = the difference in rows / the difference in wall time (start-up and model loading
    cancel out; they are reported as ``startup_s``)."""
    import numpy as np
    from PIL import Image

    res: dict = {"load_before": _load()}
    work = OUT / "stages"
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n_img, n_txt, n_pts = 256, 4000, 20000
    (work / "img").mkdir(exist_ok=True)
    for i in range(n_img):  # JPEGs of random texture, 500×375
        p = work / "img" / f"{i}.jpg"
        if not p.exists():
            Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(p, quality=85)
    specs = {"efficientnet_lite0": ("image: {encoder: efficientnet_lite0, column: photo, root: img/}", n_img),
             "minilm": ("text: {encoder: minilm, column: name}", n_txt),
             "geoclip": ("loc: {encoder: geoclip, columns: [lat, lon]}", n_pts),
             "date": ("date: {encoder: date, column: day}", n_pts)}
    for name, (line, n) in specs.items():
        (work / f"{name}.yaml").write_text(f"batch_size: 64\nid_column: obs_id\nmodalities:\n  {line}\n")
        times = {}
        for rows in (n // 4, n):
            lines = ["obs_id,photo,name,lat,lon,day"]
            for i in range(rows):
                lines.append(f"o{i},{i % n_img}.jpg,Genus{i % 97} species{i % 13} (common name {i}),"
                             f"{rng.uniform(-60, 70):.4f},{rng.uniform(-180, 180):.4f},2021-{1 + i % 12:02d}-"
                             f"{1 + i % 28:02d}")
            (work / "obs.csv").write_text("\n".join(lines) + "\n")
            out = work / f"{name}.parquet"
            out.unlink(missing_ok=True)
            times[rows] = _run([PY, "-m", "prom3e.cli", "embed", "--observations", str(work / "obs.csv"), "--spec",
                                str(work / f"{name}.yaml"), "--out", str(out), "--no-progress", "--device", "cpu"])
        small, big = times[n // 4], times[n]
        rate = (n - n // 4) / (big["wall_s"] - small["wall_s"])
        res[f"embed_{name}"] = {"rows": n, "rows_per_s": rate, "startup_s": small["wall_s"] - (n // 4) / rate,
                                "peak_rss_mb": big["peak_rss_mb"]}
    res["load_after"] = _load()
    _save("embed", res)


def stages() -> None:
    """Per-stage rates, one process, one thread: what the 100M extrapolation multiplies
    (whole commands at 1M rows, start-up included)."""
    res: dict = {"load_before": _load()}
    work = OUT / "stages"
    work.mkdir(parents=True, exist_ok=True)
    run = OUT / "run10m"
    parts1m = OUT / "synth1m"
    res["reconstruct"] = _rate([PY, "-m", "prom3e.cli", "reconstruct", "--model", str(run), "--data", str(parts1m),
                                "--target", "text", "--out", str(work / "rec"), "--restart", "--device", "cpu"],
                               1_000_000)
    res["align"] = _rate([PY, "-m", "prom3e.cli", "align", "--data", str(parts1m), "--anchor", "image",
                          "--out", str(work / "aligned"), "--model-out", str(work / "heads"), "--epochs", "1",
                          "--max-fit-rows", "100000", "--restart", "--no-progress", "--device", "cpu"], 1_000_000)
    res["index_exact"] = _rate([PY, "-m", "prom3e.cli", "index", "build", "--data", str(parts1m), "--column",
                                "image", "--out", str(work / "image.index.safetensors"), "--threads", "1"], 1_000_000)
    res["index_ivfpq"] = _rate([PY, "-m", "prom3e.cli", "index", "build", "--data", str(parts1m), "--column",
                                "image", "--spec", "IVF1024,PQ16", "--out", str(work / "image.ivfpq.safetensors"),
                                "--threads", "1"], 1_000_000)
    r = _run([PY, "-m", "prom3e.cli", "evaluate", "--model", str(run), "--data", str(OUT / "synth10m"), "--label",
              "species", "--out", str(work / "eval10m"), "--no-plots", "--quiet", "--threads", "1", "--device", "cpu"])
    res["evaluate_10m"] = {"rows": 10_000_000, "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"]}
    r = _run([PY, "-m", "prom3e.cli", "perf", "train", "--config", "paper", "--batch", "1024", "--threads", "1",
              "--precision", "bf16", "--no-reference", "--repeats", "3"])
    paper = json.loads(r["stdout"].strip().splitlines()[-1])
    res["train_paper"] = {"samples_per_s": paper["samples_per_s"], "precision": paper["precision"]}
    res["load_after"] = _load()
    _save("stages", res)


def summary() -> None:
    steps = {s: json.loads((OUT / f"{s}.json").read_text())
             for s in ("synth", "train10m", "procs", "small", "stages", "embed")}
    t = steps["train10m"]
    keep = ("rows", "parts", "row_groups", "train_rows", "steps", "batch_size", "shuffle_buffer", "epoch_s",
            "samples_per_s", "peak_rss_mb", "wall_s", "precision", "load_before", "load_after", "command")
    by_n: dict[str, list] = {}
    for r in steps["procs"]["runs"]:
        by_n.setdefault(str(r["processes"]), []).append(
            {k: r[k] for k in ("samples_per_s", "peak_rss_mb", "epoch_s", "load_before", "load_after")})
    rounds = steps["small"]["rounds"]
    small = {v: sorted(r[v]["samples_per_s"] for r in rounds)[len(rounds) // 2] for v in rounds[0]}
    small_rss = {v: max(r[v]["peak_rss_mb"] for r in rounds) for v in rounds[0]}
    st = {k: v for k, v in steps["stages"].items() if not k.startswith("embed_")}
    st["embed_load"] = [steps["embed"]["load_before"], steps["embed"]["load_after"]]
    st |= {k: v for k, v in steps["embed"].items() if k.startswith("embed_")}
    save_result("scale", {
        "synth": {k: {"rows": v["rows"], "wall_s": round(v["wall_s"], 1), "peak_rss_mb": round(v["peak_rss_mb"]),
                      "gb": round(v["bytes"] / 1e9, 2)} for k, v in steps["synth"].items() if k.startswith("synth")},
        "train10m": {k: (round(t[k], 1) if isinstance(t[k], float) else t[k]) for k in keep},
        "procs": by_n,
        "small": {"rows": steps["small"]["rows"], "median_samples_per_s": {k: round(v) for k, v in small.items()},
                  "peak_rss_mb": {k: round(v) for k, v in small_rss.items()},
                  "load": [steps["small"]["load_before"], steps["small"]["load_after"]]},
        "stages": {k: ({kk: (round(vv, 2) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                       if isinstance(v, dict) else v) for k, v in st.items()},
    })


# --- generated doc blocks ---------------------------------------------------------------------

def _load_txt(a: list, b: list) -> str:
    return f"{a[0]:.1f} → {b[0]:.1f}"


@renderer("scale-figures")
def _figures() -> str:
    r = load_result("scale")
    t, syn = r["train10m"], r["synth"]["synth10m"]
    s = r["small"]
    sps = s["median_samples_per_s"]

    def procs(n: str, what: str) -> str:
        runs = r["procs"][n]
        rates = " and ".join(f"{x['samples_per_s']:,.0f}" for x in runs)
        loads = "; ".join(_load_txt(x["load_before"], x["load_after"]) for x in runs)
        rss = max(x["peak_rss_mb"] for x in runs)
        return f"| one epoch, 1M rows, {what} ({len(runs)} runs) | 1,000,000 | {rates} | {rss:,.0f} MB | {loads} |"

    return "\n".join([
        "| measurement | rows | samples/s | peak RSS (per process) | load average (1 min, before → after) |",
        "|---|---|---|---|---|",
        f"| `prom3e synth --parts` (10M rows, {syn['gb']} GB of parts; {syn['wall_s'] / 60:.0f} min wall) | "
        f"{syn['rows']:,} | – | {syn['peak_rss_mb']:,} MB | |",
        f"| one epoch, `tiny`, batch {t['batch_size']}, 1 process × 1 thread, streamed ({t['parts']} parts, "
        f"{t['row_groups']} row groups; {t['epoch_s'] / 60:.0f} min) | {t['rows']:,} ({t['train_rows']:,} train) | "
        f"**{t['samples_per_s']:,.0f}** | **{t['peak_rss_mb']:,.0f} MB** | "
        f"{_load_txt(t['load_before'], t['load_after'])} |",
        procs("1", "1 process"),
        procs("2", "2 processes (torchrun, gloo; per-rank negatives)"),
        f"| {s['rows'] // 1000}k rows in memory (this code / the code before parts; medians of 3) | {s['rows']:,} | "
        f"{sps['in_memory']:,} / {sps['in_memory_baseline']:,} | {s['peak_rss_mb']['in_memory']:,} / "
        f"{s['peak_rss_mb']['in_memory_baseline']:,} MB | {_load_txt(*s['load'])} |",
        f"| the same {s['rows'] // 1000}k rows streamed from 4 parts (median of 3, interleaved) | {s['rows']:,} | "
        f"{sps['streamed']:,} ({sps['streamed'] / sps['in_memory']:.2f}× in memory) | "
        f"{s['peak_rss_mb']['streamed']:,} MB | (same rounds) |",
    ])


def _days(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@renderer("scale-100m")
def _extrapolation() -> str:
    r = load_result("scale")
    st, t = r["stages"], r["train10m"]
    n = 100_000_000
    load_embed = _load_txt(*st["embed_load"])
    load_stages = _load_txt(st["load_before"], st["load_after"])
    load_train = _load_txt(t["load_before"], t["load_after"])
    rows = [("embed: image, EfficientNet-Lite0 (500×375 JPEGs)", st["embed_efficientnet_lite0"]["rows_per_s"],
             load_embed),
            ("embed: text, MiniLM", st["embed_minilm"]["rows_per_s"], load_embed),
            ("embed: location, GeoCLIP", st["embed_geoclip"]["rows_per_s"], load_embed),
            ("embed: date", st["embed_date"]["rows_per_s"], load_embed),
            ("align: fit (1 epoch on 100k rows) + transform, 6 × 64-d", st["align"]["rows_per_s"], load_stages),
            ("train: one epoch, `tiny`, 6 × 64-d (streamed)", t["samples_per_s"], load_train),
            ("train: one epoch, `paper`, 6 × 512-d, bf16 (`perf train`: steps only)",
             st["train_paper"]["samples_per_s"], load_stages),
            ("reconstruct one target, `tiny`", st["reconstruct"]["rows_per_s"], load_stages),
            ("index build, exact (reads the column)", st["index_exact"]["rows_per_s"], load_stages),
            ("index build, faiss IVF1024,PQ16 (64-d)", st["index_ivfpq"]["rows_per_s"], load_stages)]
    out = ["| stage (1 process, 1 CPU thread) | measured rows/s | 100M rows, **extrapolated** | load average |",
           "|---|---|---|---|"]
    out += [f"| {name} | {rate:,.0f} | {_days(n / rate)} | {load} |" for name, rate, load in rows]
    ev = st["evaluate_10m"]
    out.append(f"| evaluate, default caps (2,000 fit + 2,000 test rows) | – | {ev['wall_s'] / 60:.1f} min measured at "
               f"10M rows, {ev['peak_rss_mb']:,.0f} MB; only the label column's pass grows with the rows | "
               f"{load_stages} |")
    out.append("")
    out.append("Encoder rates: the same spec embedded at n and n/4 rows, rows/s from the differences (start-up "
               "and model loading cancel out). The other stages: one whole command at 1M rows (10M for "
               "`evaluate`), start-up included.")
    return "\n".join(out)


if __name__ == "__main__":
    steps = {"synth": synth, "train10m": train10m, "procs": procs, "small": small, "embed": embed,
             "stages": stages, "summary": summary}
    if len(sys.argv) != 2 or sys.argv[1] not in steps:
        raise SystemExit(f"usage: {sys.argv[0]} {{{'|'.join(steps)}}}")
    steps[sys.argv[1]]()
