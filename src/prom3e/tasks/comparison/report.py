"""Markdown tables and a plot of benchmark results (mean ± std over seeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _cell(summary: dict, key: str, scale: float = 100.0, digits: int = 1, n_want: int | None = None) -> str:
    s = summary.get(key)
    if s is None:
        return "–"
    text = f"{s['mean'] * scale:.{digits}f}"
    if s["n"] > 1:
        text += f" ± {s['std'] * scale:.{digits}f}"
    return text + (f" ({s['n']})" if n_want and s["n"] != n_want else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _selected(per_seed: list[dict]) -> str:
    picks = [r.get("tuning", {}).get("selected") for r in per_seed]
    return ", ".join(f"{p['lr']:g}/{p['width']}" for p in picks if p) or "–"


def header_lines(results: dict) -> list[str]:
    """What was run: data, what was left out, split, budget, grid, seeds."""
    cfg = results["config"]
    grid = cfg.get("grid") or {"lrs": [cfg["fit"]["lr"]], "widths": [cfg["fit"]["width"]]}
    left = cfg.get("left_out") or []
    lines = [f"Label `{cfg['label']}`, {cfg['rows']} rows, {cfg['classes']} classes, modalities "
             f"{', '.join(cfg['modalities'])}."]
    if left:
        lines.append(f"**Left out of every input: {', '.join(f'`{m}`' for m in left)}** — one vector per class "
                     "(the label itself as an input; `leak_policy=keep` keeps it).")
    elif cfg.get("leaking_modalities"):
        lines.append(f"**Label-leaking modalities kept as inputs: {', '.join(cfg['leaking_modalities'])}.**")
    if cfg.get("rows_without_modality"):
        lines.append(f"{cfg['rows_without_modality']} row(s) without any of these modalities were dropped.")
    lines.append(
        f"Split per seed: {cfg['train_frac']:.0%} of each class to training"
        f" ({cfg['val_frac']:.0%} of those held out for validation), the rest test"
        + (f"; fixed by column `{cfg['split_column']}`" if cfg.get("split_column") else "") + ". "
        f"Tuning (validation only, the same for every method): lr ∈ {{{', '.join(f'{v:g}' for v in grid['lrs'])}}}"
        f" × width ∈ {{{', '.join(str(w) for w in grid['widths'])}}}, best epoch ≤ {cfg['fit']['epochs']}; "
        + ("each η protocol trained at its own η." if cfg["train_missing"] == "eta"
           else "every protocol scored with the natural-trained model.")
        + f" Seeds {cfg['seeds']}; values are % (mean ± sample std over seeds; a count in parentheses where"
        " fewer seeds finished).")
    return lines


def markdown(results: dict) -> str:
    cfg = results["config"]
    methods = results["methods"]
    etas = [f"eta{e:g}" for e in cfg.get("etas", [])]
    protos = etas + ["natural", "subsets"]
    n = len(cfg["seeds"])
    lines = [f"# Benchmark: {cfg['label']}", "", *header_lines(results), ""]
    for metric, title in (("acc", "Accuracy"), ("macro_f1", "Macro-F1"), ("auroc", "AUROC (one-vs-rest)")):
        lines += [f"## {title}", ""]
        rows = [[f"`{m}`"] + [_cell(r["summary"], f"protocols/{p}/{metric}", n_want=n) for p in protos]
                for m, r in methods.items()]
        lines += _table(["method"] + protos, rows) + [""]
    if etas:
        lines += ["## Estimate of a hidden modality (mean over target modalities)", "",
                  "R@1 ranks the real test embeddings by cosine to the estimate, **in the method's own "
                  "space**: `raw` = the table's embedding space (comparable between `raw` methods); `own` = an "
                  "internal space (comparable only within that method, not across methods).", ""]
        rows = []
        for m, r in methods.items():
            space = next((p.get("estimate_space") for p in r["per_seed"] if p.get("estimate_space")), None)
            if space is None:
                continue
            rows.append([f"`{m}`", space] + [_cell(r["summary"], f"reconstruction/{p}/mean/{k}", n_want=n)
                                             for p in etas for k in ("r1", "nm2i")])
        lines += _table(["method", "space"] + [f"{p} {k}" for p in etas for k in ("R@1", "NM²I")], rows) + [""]
        layered = [(m, r) for m, r in methods.items() if any("/nm2i_layer/" in k for k in r["summary"])]
        if layered:
            lines += ["### NM²I per prompted layer (prompt methods)", ""]
            depth = max(int(k.rsplit("/", 1)[1]) for _, r in layered for k in r["summary"] if "/nm2i_layer/" in k)
            rows = [[f"`{m}`", p] + [_cell(r["summary"], f"reconstruction/{p}/mean/nm2i_layer/{i}", n_want=n)
                                     for i in range(depth + 1)] for m, r in layered for p in etas]
            lines += _table(["method", "protocol"] + [f"layer {i}" for i in range(depth + 1)], rows) + [""]
    zs = [(m, r) for m, r in methods.items() if any(k.startswith("zeroshot/") for k in r["summary"])]
    if zs:
        lines += [f"## Zero-shot (class modality `{cfg.get('class_modality')}` hidden)", ""]
        rows = [[f"`{m}`"] + [_cell(r["summary"], f"zeroshot/{p}/acc", n_want=n) for p in protos if p != "subsets"]
                for m, r in zs]
        lines += _table(["method"] + [p for p in protos if p != "subsets"], rows) + [""]
    lines += ["## Tuning and cost", "", "Chosen lr/width per seed; best epoch and validation accuracy of the "
              "natural-regime fit; `fit s` = that fit, `tuning s` = every fit of the method × seed (grid + η), wall "
              "and CPU time (CPU time is the steadier figure on a shared machine).", ""]
    rows = [[f"`{m}`", _selected(r["per_seed"]), _cell(r["summary"], "best_epoch", 1, 1),
             _cell(r["summary"], "val_acc", n_want=n), _cell(r["summary"], "fit_seconds", 1, 1),
             _cell(r["summary"], "tuning_seconds", 1, 0), _cell(r["summary"], "tuning_cpu_seconds", 1, 0),
             _cell(r["summary"], "fit_peak_mib", 1, 0),
             _cell(r["summary"], "predict_seconds", 1, 2)] for m, r in methods.items()]
    lines += _table(["method", "lr/width", "best epoch", "val acc", "fit s", "tuning s", "tuning CPU s", "fit peak MiB",
                     "predict s (natural)"], rows) + [""]
    first = next((r["per_seed"][0] for r in methods.values() if r["per_seed"]), {})
    if first.get("subsets"):
        names = list(first["subsets"])
        lines += ["## Accuracy per visible set", ""]
        rows = [[f"`{s}`"] + [_cell(r["summary"], f"subsets/{s}/acc") for r in methods.values()] for s in names]
        lines += _table(["visible"] + [f"`{m}`" for m in methods], rows) + [""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cfg, methods = results["config"], results["methods"]
    protos = [f"eta{e:g}" for e in cfg["etas"]] + ["natural", "subsets"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(methods)
    for i, (m, r) in enumerate(methods.items()):
        s = r["summary"]
        mean = [s.get(f"protocols/{p}/acc", {}).get("mean", np.nan) for p in protos]
        std = [s.get(f"protocols/{p}/acc", {}).get("std", 0) for p in protos]
        ax.bar(np.arange(len(protos)) + i * width, mean, width, yerr=std, label=m)
        sizes = sorted({int(k.split("/")[1]) for k in s if k.startswith("acc_by_visible_count/")})
        if sizes:
            ax2.plot(sizes, [s[f"acc_by_visible_count/{k}"]["mean"] for k in sizes], marker="o", label=m)
    ax.set_xticks(np.arange(len(protos)) + 0.4 - width / 2, protos)
    ax.set_ylabel("accuracy")
    ax.set_title(f"label {cfg['label']}: accuracy per protocol")
    ax2.set_xlabel("number of visible modalities")
    ax2.set_ylabel("accuracy (mean over visible sets)")
    ax2.legend(fontsize=7)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
