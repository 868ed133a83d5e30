"""The core model on the synthetic default: `prom3e demo`, summarised for docs/RESULTS.md.

Runs ``prom3e demo --out experiments/out/demo`` (20 000 rows, seed 0, base model, 15 epochs,
evaluation of the 4 000 held-out rows; torch at 1 thread), or reads a finished demo folder,
and writes ``experiments/results/demo.json``: the run (rows, parameters, best validation
R@1), per target modality the R@1 of the raw query vs the reconstruction, every task's means,
and the paper's claims as the evaluation computed them.

    .venv/bin/python experiments/core_results.py                        # run the demo (≈ 2 min) and summarise
    .venv/bin/python experiments/core_results.py --from experiments/out/demo   # summarise a finished demo
    .venv/bin/python experiments/render_docs.py                         # then refresh the docs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from docgen import load_result, renderer, save_result

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "out" / "demo"
NAME = "demo"


def _best(ps: list[dict], key: str) -> dict:
    ps = [p for p in ps if p.get(key) is not None]
    if not ps:
        return {"r1": None, "from": None}
    top = max(ps, key=lambda p: p[key])
    return {"r1": top[key], "from": "+".join(top["visible"])}


def _mean(ps: list[dict], key: str) -> float | None:
    vals = [p[key] for p in ps if p.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def per_target(metrics: dict) -> list[dict]:
    """For each target: R@1 of the best single raw query, best single / pair reconstruction,
    best pair inversion, and the mean reconstruction R@1 over single and over pair visible sets."""
    by_target: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for p in metrics["retrieval"]["pairs"]:
        by_target[p["target"]][len(p["visible"])].append(p)
    rows = []
    for target, sets in by_target.items():
        one, two = sets.get(1, []), sets.get(2, [])
        rows.append({"target": target, "gallery": max(p["n_gallery"] for p in one + two),
                     "raw_single": _best(one, "r1_cross"), "recon_single": _best(one, "r1_reconstruction"),
                     "recon_pair": _best(two, "r1_reconstruction"), "inversion_pair": _best(two, "r1_inversion"),
                     "recon_mean_1": _mean(one, "r1_reconstruction"), "recon_mean_2": _mean(two, "r1_reconstruction")})
    return rows


def summarise(folder: Path, command: str, wall_s: float | None) -> dict:
    m = json.loads((folder / "eval" / "metrics.json").read_text())
    run = json.loads((folder / "run" / "metrics.json").read_text())
    cfg = json.loads((folder / "run" / "config.json").read_text())
    s = m["settings"]
    return {
        "command": command, "wall_s": wall_s,
        "run": {"model": cfg["train"]["model"], "epochs": run["epochs"], "parameters": run["parameters"],
                "precision": run["precision"], "train_rows": run["train_rows"], "val_rows": run["val_rows"],
                "best_val_r1": run["best_val_r1_mean"]},
        "eval": {k: s[k] for k in ("n_rows", "n_fit", "n_test", "n_classes", "class_modality", "seed")},
        "per_target": per_target(m),
        "retrieval": {k: v for k, v in m["retrieval"]["summary"].items() if k != "by_visible_size"},
        "retrieval_by_size": m["retrieval"]["summary"]["by_visible_size"],
        "zeroshot": m["zeroshot"]["summary"],
        "probe": m["probe"]["summary"],
        "uncertainty": {"mean_sigma_l1_by_size": m["uncertainty"]["mean_sigma_l1_by_size"],
                        "calibration": m["uncertainty"]["calibration"]},
        "gap": {k: {"centroid_distance": v["centroid_distance"], "separability": v["separability"]}
                for k, v in m["gap"].items() if k != "n_rows"},
        "claims": m["claims"],
    }


def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


@renderer("demo-core")
def _core_table() -> str:
    r = load_result(NAME)
    lines = ["| target | gallery | raw, best single | recon, best single | recon, best pair | inversion, best pair "
             "| recon mean 1 → 2 visible |", "|---|---|---|---|---|---|---|"]
    for t in r["per_target"]:
        cell = {k: f"{_f(t[k]['r1'])} ({t[k]['from']})" for k in
                ("raw_single", "recon_single", "recon_pair", "inversion_pair")}
        lines.append(f"| {t['target']} | {t['gallery']} | {cell['raw_single']} | {cell['recon_single']} | "
                     f"{cell['recon_pair']} | {cell['inversion_pair']} | "
                     f"{_f(t['recon_mean_1'])} → {_f(t['recon_mean_2'])} |")
    return "\n".join(lines)


@renderer("demo-run")
def _run_line() -> str:
    r = load_result(NAME)
    run, ev = r["run"], r["eval"]
    return (f"`{r['command']}`: {run['model']} model ({run['parameters']:,} parameters), {run['epochs']} epochs "
            f"({run['precision']}) on {run['train_rows'] + run['val_rows']:,} training rows; best validation R@1 "
            f"{_f(run['best_val_r1'])}; evaluation of the {ev['n_rows']:,} held-out rows ({ev['n_test']:,} test / "
            f"{ev['n_fit']:,} fit rows, {ev['n_classes']} species, zero-shot against the `{ev['class_modality']}` "
            f"prototypes)" + (f"; {r['wall_s']:.0f} s wall at 1 thread." if r.get("wall_s") else "."))


@renderer("demo-evaluation")
def _evaluation() -> str:
    r = load_result(NAME)
    rt, z, p = r["retrieval"], r["zeroshot"], r["probe"]
    rows = ["| | raw (δ = 0) | reconstruction (δ = 1) | inversion (δ on the fit rows) |", "|---|---|---|---|",
            f"| retrieval R@1, mean of {rt['n_pairs']} pairs | {_f(rt['r1_cross_mean'])} | "
            f"{_f(rt['r1_reconstruction_mean'])} | {_f(rt['r1_inversion_mean'])} |",
            f"| zero-shot species top-1, mean of {z['n_sets']} visible sets | {_f(z['top1_cross_mean'])} | "
            f"{_f(z['top1_reconstruction_mean'])} | {_f(z['top1_inversion_mean'])} |"]
    by = r["retrieval_by_size"]
    sizes = " → ".join(f"{_f(by[k]['r1_inversion_mean'])}" for k in sorted(by))
    u = r["uncertainty"]
    sig = " → ".join(f"{v:.2f}" for _, v in sorted(u["mean_sigma_l1_by_size"].items()))
    g = r["gap"]
    return "\n".join(rows) + (
        f"\n\nInversion R@1 by visible-set size (1 → 2): {sizes}. Linear probes (species), mean accuracy over "
        f"{p['n_sets']} visible sets: raw {_f(p['acc_raw_mean'])}, hidden μ {_f(p['acc_mu_mean'])}, all tokens "
        f"{_f(p['acc_tokens_mean'])}, reconstructions {_f(p['acc_reconstruction_mean'])}. Mean ‖σ‖₁ by visible-set "
        f"size (1 → 2 → 3): {sig}; Spearman ρ of ‖σ‖₁ with the reconstruction error "
        f"{_f(u['calibration']['pooled_spearman_recon_error'], 2)}, with the retrieval rank "
        f"{_f(u['calibration']['pooled_spearman_rank'], 2)} ({u['calibration']['n']:,} cases). Modality gap "
        f"(centroid distance / linear separability): raw {_f(g['raw']['centroid_distance'], 2)} / "
        f"{_f(g['raw']['separability'], 2)}, hidden μ {_f(g['hidden']['centroid_distance'], 2)} / "
        f"{_f(g['hidden']['separability'], 2)}, reconstructions {_f(g['reconstruction']['centroid_distance'], 2)} / "
        f"{_f(g['reconstruction']['separability'], 2)}.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="folder", type=Path, help="a finished `prom3e demo` folder (default: run it)")
    args = ap.parse_args(argv)
    command = f"prom3e demo --out {OUT.relative_to(ROOT)}"
    wall = None
    folder = args.folder
    if folder is None:
        import torch

        from prom3e.cli import main as cli

        torch.set_num_threads(1)
        t0 = time.perf_counter()
        if cli(["demo", "--out", str(OUT), "--overwrite"]):
            return 1
        wall, folder = time.perf_counter() - t0, OUT
    print(f"wrote {save_result(NAME, summarise(folder, command, wall))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
