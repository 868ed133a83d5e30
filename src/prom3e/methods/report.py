"""Markdown tables and a plot of benchmark results (mean ± std over seeds)."""

from __future__ import annotations

from pathlib import Path


def _cell(summary: dict, key: str, scale: float = 100.0, digits: int = 1) -> str:
    s = summary.get(key)
    if s is None:
        return "–"
    if s["n"] > 1:
        return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(results: dict) -> str:
    cfg = results["config"]
    methods = results["methods"]
    protos = [p for p in (cfg.get("etas") and [f"eta{e:g}" for e in cfg["etas"]] or []) + ["natural", "subsets"]]
    seeds = cfg["seeds"]
    lines = [
        f"# Benchmark: label `{cfg['label']}`, {cfg['rows']} rows, {cfg['classes']} classes, "
        f"modalities {', '.join(cfg['modalities'])}",
        "",
        f"Seeds {seeds}; {cfg['fit']['epochs']} epochs, batch {cfg['fit']['batch_size']}, width "
        f"{cfg['fit']['width']}; training missingness: {cfg['train_missing']}. Values are % (mean ± std over "
        f"seeds). Protocols: `eta<η>` fixed missing table, `natural` the table's own missingness, `subsets` the "
        "mean over every non-empty visible set.",
        "",
    ]
    for metric, title in (("acc", "Accuracy"), ("macro_f1", "Macro-F1"), ("auroc", "AUROC (one-vs-rest)")):
        lines += [f"## {title}", ""]
        rows = [[f"`{m}`"] + [_cell(r["summary"], f"protocols/{p}/{metric}") for p in protos]
                for m, r in methods.items()]
        lines += _table(["method"] + protos, rows) + [""]
    etas = [p for p in protos if p.startswith("eta")]
    if etas:
        lines += ["## Missing-modality estimate (mean over target modalities)", ""]
        rows = []
        for m, r in methods.items():
            rows.append([f"`{m}`"] + [_cell(r["summary"], f"reconstruction/{p}/mean/{k}")
                                      for p in etas for k in ("r1", "nm2i")])
        lines += _table(["method"] + [f"{p} {k}" for p in etas for k in ("R@1", "NM²I")], rows) + [""]
    zs = [(m, r) for m, r in methods.items() if any(k.startswith("zeroshot/") for k in r["summary"])]
    if zs:
        lines += [f"## Zero-shot (class modality `{cfg.get('class_modality')}` hidden)", ""]
        rows = [[f"`{m}`"] + [_cell(r["summary"], f"zeroshot/{p}/acc") for p in protos if p != "subsets"]
                for m, r in zs]
        lines += _table(["method"] + [p for p in protos if p != "subsets"], rows) + [""]
    lines += ["## Cost", ""]
    rows = [[f"`{m}`", _cell(r["summary"], "fit_seconds", 1, 1), _cell(r["summary"], "fit_peak_mib", 1, 0),
             _cell(r["summary"], "predict_seconds", 1, 2), _cell(r["summary"], "predict_peak_mib", 1, 0)]
            for m, r in methods.items()]
    lines += _table(["method", "fit s", "fit peak MiB", "predict s (natural)", "predict peak MiB"], rows) + [""]
    first = next(iter(methods.values()))["per_seed"][0]
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
    import numpy as np

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
