"""The stage-2 ablation: named variants × datasets × seeds, same splits and budget.

Each (dataset, variant, seed) trains and evaluates once through ``stage2_study`` and appends
its summary to ``experiments/out/stage2/runs.jsonl`` (a killed sweep loses at most the run in
progress; finished runs are skipped on the next call). ``--publish`` writes the compact
summary ``experiments/results/stage2_ablation.json`` that docs/STAGE2.md renders.

    .venv/bin/python experiments/stage2_ablation.py --datasets birdclef22 --variants ref,kl_sum
    .venv/bin/python experiments/stage2_ablation.py --datasets birdclef22,ucsc,synthetic --seeds 0,1 \\
        --variants ref,winner --publish

Datasets: ``birdclef22`` (experiments/birdclef22.py's aligned table; built if missing),
``ucsc`` (experiments/ucsc_stage1.py's aligned table, its 75 % training part split 65/10 per
species into train/val), ``synthetic`` (``prom3e demo``'s protocol).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stage2_study  # noqa: E402

OUT = HERE / "out" / "stage2"

# Every variant is a set of TrainConfig options on top of the base model's current defaults;
# "model_overrides" reach Prom3eConfig (the objective lives there).
REF = {"recon_loss": "infonce", "n_draws": 1, "kl_reduction": "mean", "free_bits": 0.0, "sigma_calibration": 0.0,
       "posterior_head": "linear", "draw_mean": False, "poe_detach": False, "mu_loss": 0.0, "logvar_clip": 8.0}
MC = {**REF, "recon_loss": "mc_infonce", "n_draws": 4, "kl_reduction": "sum"}  # + KL sum
P = {**MC, "posterior_head": "poe"}
VARIANTS: dict[str, dict] = {
    "ref": {"model_overrides": dict(REF)},
    "kl_mean_1e-2": {"kl_weight": 1e-2, "model_overrides": dict(REF)},
    "kl_sum_1e-3": {"model_overrides": {**REF, "kl_reduction": "sum"}},
    "kl_sum_1e-2": {"kl_weight": 1e-2, "model_overrides": {**REF, "kl_reduction": "sum"}},
    "kl_sum_1e-3_warm": {"kl_warmup_epochs": 10, "model_overrides": {**REF, "kl_reduction": "sum"}},
    "kl_sum_1e-2_fb": {"kl_weight": 1e-2, "model_overrides": {**REF, "kl_reduction": "sum", "free_bits": 0.01}},
    "mc4": {"model_overrides": {**REF, "recon_loss": "mc_infonce", "n_draws": 4}},
    "mc4_kl_sum_1e-3": {"model_overrides": {**REF, "recon_loss": "mc_infonce", "n_draws": 4, "kl_reduction": "sum"}},
    "mc4_kl_sum_1e-2": {"kl_weight": 1e-2,
                        "model_overrides": {**REF, "recon_loss": "mc_infonce", "n_draws": 4, "kl_reduction": "sum"}},
    "csd4": {"model_overrides": {**REF, "recon_loss": "csd_bce", "n_draws": 4}},
    "csd4_kl_sum_1e-3": {"model_overrides": {**REF, "recon_loss": "csd_bce", "n_draws": 4, "kl_reduction": "sum"}},
    "kl_sum_1e-3_cal": {"model_overrides": {**REF, "kl_reduction": "sum", "sigma_calibration": 1.0}},
    "mc4_kl_sum_1e-3_cal": {"model_overrides": {**MC, "sigma_calibration": 1.0}},
    "mc8_kl_sum_1e-3": {"model_overrides": {**MC, "n_draws": 8}},
    "mc4_kl_sum_3e-3": {"kl_weight": 3e-3, "model_overrides": dict(MC)},
    "mc4_kl_sum_1e-3_fb": {"model_overrides": {**MC, "free_bits": 0.05}},
    "mc4_kl_sum_1e-3_warm": {"kl_warmup_epochs": 10, "model_overrides": dict(MC)},
    "mc4_kl_sum_1e-3_recon_all": {"reconstruct_all": True, "model_overrides": dict(MC)},
    "mc4_kl_sum_1e-3_ep60": {"epochs": 60, "model_overrides": dict(MC)},
    "mc4_kl_sum_1e-3_lr3e-3": {"lr": 3e-3, "model_overrides": dict(MC)},
    "mc4_kl_sum_1e-3_vis532": {"visible_probs": [0.5, 0.3, 0.2], "model_overrides": dict(MC)},
    "kl_sum_1e-4": {"kl_weight": 1e-4, "model_overrides": {**REF, "kl_reduction": "sum"}},
    "kl_sum_1e-4_cal": {"kl_weight": 1e-4, "model_overrides": {**REF, "kl_reduction": "sum", "sigma_calibration": 1.0}},
    "mc4_kl_sum_1e-4": {"kl_weight": 1e-4, "model_overrides": dict(MC)},
    "mc4_kl_sum_1e-4_cal": {"kl_weight": 1e-4, "model_overrides": {**MC, "sigma_calibration": 1.0}},
    "csd4_kl_sum_1e-4": {"kl_weight": 1e-4, "model_overrides": {**MC, "recon_loss": "csd_bce"}},
    "csd4_kl_sum_1e-4_cal": {"kl_weight": 1e-4, "model_overrides": {**MC, "recon_loss": "csd_bce",
                                                                      "sigma_calibration": 1.0}},
    "poe_kl_sum_1e-4": {"kl_weight": 1e-4, "model_overrides": {**REF, "kl_reduction": "sum", "posterior_head": "poe"}},
    "poe_mc4": {"model_overrides": {**MC, "kl_reduction": "mean", "posterior_head": "poe"}},
    "poe_mc4_kl_sum_1e-3": {"model_overrides": {**MC, "posterior_head": "poe"}},
    "poe_mc4_kl_sum_1e-4": {"kl_weight": 1e-4, "model_overrides": {**MC, "posterior_head": "poe"}},
    "poe_mc4_kl_sum_1e-4_cal": {"kl_weight": 1e-4,
                                "model_overrides": {**MC, "posterior_head": "poe", "sigma_calibration": 1.0}},
    "poe_csd4_kl_sum_1e-4": {"kl_weight": 1e-4,
                             "model_overrides": {**MC, "recon_loss": "csd_bce", "posterior_head": "poe"}},
    # on top of the PoE posterior + 4-draw InfoNCE + KL sum at 1e-4 ("poe_mc4_kl_sum_1e-4")
    "P_recon_all": {"kl_weight": 1e-4, "reconstruct_all": True, "model_overrides": dict(P)},
    "P_ep60": {"kl_weight": 1e-4, "epochs": 60, "model_overrides": dict(P)},
    "P_lr3e-3": {"kl_weight": 1e-4, "lr": 3e-3, "model_overrides": dict(P)},
    "P_large": {"kl_weight": 1e-4, "model": "large", "model_overrides": dict(P)},
    "P_vis532": {"kl_weight": 1e-4, "visible_probs": [0.5, 0.3, 0.2], "model_overrides": dict(P)},
    "P_no_label": {"kl_weight": 1e-4, "label_column": None, "model_overrides": dict(P)},
    "P_mc8": {"kl_weight": 1e-4, "model_overrides": {**P, "n_draws": 8}},
    "P_kl1e-3_fb": {"model_overrides": {**P, "free_bits": 0.1}},
    "P_infonce": {"kl_weight": 1e-4, "model_overrides": {**P, "recon_loss": "infonce", "n_draws": 1}},
    "P_draw_mean": {"kl_weight": 1e-4, "model_overrides": {**P, "draw_mean": True}},
    "P_draw_mean_kl1e-3": {"model_overrides": {**P, "draw_mean": True}},
    "mc4_draw_mean_kl_sum_1e-3": {"model_overrides": {**MC, "draw_mean": True}},
    "mc4_draw_mean_kl_sum_1e-4": {"kl_weight": 1e-4, "model_overrides": {**MC, "draw_mean": True}},
    # PoE experts on detached tokens
    "Pd_draw_mean": {"kl_weight": 1e-4, "model_overrides": {**P, "draw_mean": True, "poe_detach": True}},
    "Pd_draw_mean_kl1e-3": {"model_overrides": {**P, "draw_mean": True, "poe_detach": True}},
    "P_mu1": {"kl_weight": 1e-4, "model_overrides": {**P, "mu_loss": 1.0}},
    "P_mu1_kl1e-3": {"model_overrides": {**P, "mu_loss": 1.0}},
    "P_dm_mu1": {"kl_weight": 1e-4, "model_overrides": {**P, "draw_mean": True, "mu_loss": 1.0}},
    "P_dm_mu1_kl1e-3": {"model_overrides": {**P, "draw_mean": True, "mu_loss": 1.0}},
    "P_dm_mu1_clip12": {"kl_weight": 1e-4, "model_overrides": {**P, "draw_mean": True, "mu_loss": 1.0,
                                                                 "logvar_clip": 12.0}},
    # + the heteroscedastic calibration of σ to the row's (detached) reconstruction loss
    "P_dm_mu1_clip12_cal1": {"kl_weight": 1e-4, "model_overrides": {**P, "draw_mean": True, "mu_loss": 1.0,
                                                                      "logvar_clip": 12.0, "sigma_calibration": 1.0}},
    "P_dm_mu1_clip12_cal5": {"kl_weight": 1e-4, "model_overrides": {**P, "draw_mean": True, "mu_loss": 1.0,
                                                                      "logvar_clip": 12.0, "sigma_calibration": 5.0}},
    "P_dm_mu1_clip12_cal2": {"kl_weight": 1e-4, "model_overrides": {**P, "draw_mean": True, "mu_loss": 1.0,
                                                                      "logvar_clip": 12.0, "sigma_calibration": 2.0}},
    "P_dm_mu1_clip12_cal20": {"kl_weight": 1e-4, "model_overrides": {**P, "draw_mean": True, "mu_loss": 1.0,
                                                                       "logvar_clip": 12.0, "sigma_calibration": 20.0}},
    # on top of the default (P_dm_mu1_clip12): the reference's reconstruction of visible modalities
    # too, and a β warm-up
    "W_recon_all": {"kl_weight": 1e-4, "reconstruct_all": True,
                    "model_overrides": {**P, "draw_mean": True, "mu_loss": 1.0, "logvar_clip": 12.0}},
    "W_kl_warm10": {"kl_weight": 1e-4, "kl_warmup_epochs": 10,
                    "model_overrides": {**P, "draw_mean": True, "mu_loss": 1.0, "logvar_clip": 12.0}},
    "P_dm_mu1_kl3e-4": {"kl_weight": 3e-4, "model_overrides": {**P, "draw_mean": True, "mu_loss": 1.0}},
    "recon_all": {"reconstruct_all": True, "model_overrides": dict(REF)},
    "no_label": {"label_column": None, "model_overrides": dict(REF)},
    "epochs60": {"epochs": 60, "model_overrides": dict(REF)},
    "lr3e-3": {"lr": 3e-3, "model_overrides": dict(REF)},
    "large": {"model": "large", "model_overrides": dict(REF)},
    "defaults": {},  # whatever the base config's defaults are now
}
# The new library default (models/prom3e.py OBJECTIVE + TrainConfig.kl_weight) and the baseline it
# is measured against (the former default objective), chosen by the rule in docs/STAGE2.md.
WINNER, BASELINE = "P_dm_mu1_clip12", "ref"
# a variant evaluated with reconstructions averaged over 10 posterior draws instead of decoded from μ
DECODE = {"ref_decode10": ("ref", 10), "P_decode10": ("poe_mc4_kl_sum_1e-4", 10), "W_decode10": ("P_dm_mu1_clip12", 10)}


def ucsc_tables(out: Path) -> tuple[Path, Path]:
    """ucsc-plants' aligned and raw feature tables with a train/val/test split column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prom3e.data.labels import encode_labels
    from prom3e.data.table import atomic_write
    from prom3e.tasks.common import stratified_split

    src = HERE / "out"
    aligned, raw = src / "ucsc_aligned.parquet", src / "ucsc_features.parquet"
    if not aligned.exists():
        raise SystemExit(f"{aligned} not found: run experiments/ucsc_stage1.py first")
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "ucsc_aligned_split.parquet", out / "ucsc_features_split.parquet")
    if all(p.exists() and p.stat().st_mtime > aligned.stat().st_mtime for p in paths):
        return paths
    t = pq.read_table(aligned)
    part = np.asarray(t.column("split").to_pylist(), dtype=object)
    y, _ = encode_labels(np.asarray(t.column("scientific_name").to_pylist(), dtype=object))
    tr = np.flatnonzero(part == "train")
    keep, _ = stratified_split(y[tr], 65 / 75, seed=0)  # 10 % of all rows → val
    split = np.where(part == "train", "val", part)
    split[tr[keep]] = "train"
    for src_path, dst in zip((aligned, raw), paths, strict=True):
        tab = pq.read_table(src_path)
        tab = tab.set_column(tab.schema.get_field_index("split"), "split", pa.array(split.tolist(), pa.string()))
        atomic_write(dst, lambda tmp, tab=tab: pq.write_table(tab, tmp))
    return paths


def run_one(dataset: str, variant: str, seed: int, epochs: int | None, threads: int, full: bool) -> dict:
    name, draws = variant, 0
    if variant in DECODE:
        name, draws = DECODE[variant]
    options = json.loads(json.dumps(VARIANTS[name]))
    if name != "defaults":  # every other variant is pinned to the weight it was run with
        options.setdefault("kl_weight", 1e-3)
    if epochs is not None and "epochs" not in options:
        options["epochs"] = epochs
    out = OUT / dataset / f"{variant}_s{seed}{'_full' if full else ''}"
    if dataset == "synthetic":
        return stage2_study.run_synthetic(out, options, seed=seed, threads=threads, decode_draws=draws, full=full)
    if dataset == "birdclef22":
        import birdclef22

        rec = birdclef22.build_stage1(birdclef22.DATA, birdclef22.OUT, progress=False)
        aligned, feats = Path(rec["paths"]["aligned"]), Path(rec["paths"]["features"])
        label, cls = birdclef22.LABEL, birdclef22.ANCHOR
    elif dataset == "ucsc":
        aligned, feats = ucsc_tables(OUT / "ucsc")
        label, cls = "scientific_name", "text"
    else:
        raise SystemExit(f"unknown dataset {dataset}")
    return stage2_study.run_study(aligned, feats, out, label, cls, options, seed=seed, threads=threads,
                                  decode_draws=draws, full=full)


def done_runs(log: Path) -> dict[tuple, dict]:
    if not log.exists():
        return {}
    out = {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        out[(r["dataset"], r["variant"], r["seed"], r.get("epochs"), r.get("full", True))] = r
    return out


KEYS = ("spearman_sigma_rank_mean", "frac_sigma_drops", "clip_share", "frac_recon_ge_cross", "r1_cross_mean",
        "r1_reconstruction_mean", "r1_inversion_mean", "frac_zs_pair_beats_single", "zs_top1_inversion_mean",
        "frac_probe_pair_ge_raw", "probe_pair_gap_mean", "frac_probe_mu_pair_ge_raw", "frac_probe_skip_pair_ge_raw",
        "probe_skip_gap_mean", "probe_acc_raw_mean", "probe_acc_mu_mean",
        "sigma_l1_by_size")


def publish(log: Path) -> Path:
    """``experiments/results/stage2_ablation.json``: every logged run's summary, compact."""
    from docgen import save_result

    runs = []
    for r in done_runs(log).values():
        sm = dict(r["summary"])
        if sm.get("probe") and "frac_probe_mu_pair_ge_raw" not in sm and r["dataset"] != "synthetic":
            sm["frac_probe_mu_pair_ge_raw"] = sm.get("frac_probe_pair_ge_raw")  # runs that probed μ only
        runs.append({"dataset": r["dataset"], "variant": r["variant"], "seed": r["seed"], "full": r.get("full", True),
                     "epochs": r["train"]["epochs"], "parameters": r["train"]["parameters"],
                     "options": r["options"], "wall_s": r["wall_s"], "seconds": r["seconds"],
                     **{k: sm.get(k) for k in KEYS}, "probe": sm.get("probe")})
    runs.sort(key=lambda r: (r["dataset"], r["full"], r["variant"], r["seed"]))
    return save_result("stage2_ablation", {"runs": runs, "variants": VARIANTS, "decode": DECODE,
                                             "winner": WINNER, "baseline": BASELINE,
                                             "order": [*VARIANTS, *DECODE]})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="birdclef22")
    ap.add_argument("--variants", default="ref")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, help="epochs for variants that do not set their own")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--redo", action="store_true", help="run again even if logged")
    ap.add_argument("--full", action="store_true",
                    help="the whole evaluation and all probes (default: the sweep's faster checks)")
    ap.add_argument("--publish", action="store_true", help="write experiments/results/stage2_ablation.json")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "runs.jsonl"
    done = done_runs(log)
    for ds in args.datasets.split(","):
        for v in args.variants.split(","):
            if v not in VARIANTS and v not in DECODE:
                raise SystemExit(f"unknown variant {v} (have: {', '.join([*VARIANTS, *DECODE])})")
            for s in (int(x) for x in args.seeds.split(",")):
                key = (ds, v, s, args.epochs, args.full)
                if key in done and not args.redo:
                    continue
                t0 = time.perf_counter()
                res = run_one(ds, v, s, args.epochs, args.threads, args.full)
                rec = {"dataset": ds, "variant": v, "seed": s, "epochs": args.epochs, "full": args.full,
                       "wall_s": round(time.perf_counter() - t0, 1), **res}
                with open(log, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                sm = res["summary"]
                print(f"{ds} {v} s{s}: ρ(σ,rank) {_f(sm['spearman_sigma_rank_mean'])}  σ drops "
                      f"{_f(sm['frac_sigma_drops'])}  clip {_f(sm['clip_share'])}  recon≥cross "
                      f"{_f(sm['frac_recon_ge_cross'])}  inv R@1 {_f(sm['r1_inversion_mean'])}  probe pair≥raw "
                      f"{_f(sm.get('frac_probe_pair_ge_raw'))} ({rec['wall_s']:.0f}s)", flush=True)
    if args.publish:
        print(f"wrote {publish(log)}")
    return 0


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
