"""Renderers of the benchmark's generated doc blocks (``experiments/results/benchmark_<dataset>.json``).

Blocks: ``benchmark-<dataset>`` (the full table of one dataset, docs/BENCHMARK_RESULTS.md) and
``benchmark-summary`` (natural / η 0.7 accuracy of every dataset, and where ProM3E wins or loses,
docs/RESULTS.md). A dataset without a result file renders the command that produces it.
"""

from __future__ import annotations

from docgen import RESULTS, load_result, renderer

DATASETS = {"synthetic": "synthetic default (text left out)", "ucsc": "ucsc-plants", "birdclef22": "birdclef22"}
PROTOS = ("eta0.7", "eta0.9", "natural", "subsets")


def _result(dataset: str) -> dict | None:
    return load_result(f"benchmark_{dataset}") if (RESULTS / f"benchmark_{dataset}.json").exists() else None


def _not_run(dataset: str) -> str:
    return f"_Not run yet: `.venv/bin/python experiments/benchmark.py --dataset {dataset}`._"


def _cell(s: dict, key: str, scale: float = 100.0, digits: int = 1, n_want: int | None = None) -> str:
    v = s.get(key)
    if v is None:
        return "–"
    text = f"{v['mean'] * scale:.{digits}f}" + (f" ± {v['std'] * scale:.{digits}f}" if v["n"] > 1 else "")
    return text + (f" ({v['n']})" if n_want and v["n"] != n_want else "")


def margins(r: dict, proto: str, metric: str = "acc") -> tuple[float, str, float] | None:
    """(ProM3E's mean, the best other method, ProM3E − that method's mean) in points, or None."""
    key = f"protocols/{proto}/{metric}"
    means = {m: v["summary"][key]["mean"] for m, v in r["methods"].items() if key in v["summary"]}
    if "prom3e" not in means or len(means) < 2:
        return None
    best = max((m for m in means if m != "prom3e"), key=means.get)
    return 100 * means["prom3e"], best, 100 * (means["prom3e"] - means[best])


def _config_line(r: dict) -> str:
    c = r["config"]
    grid = c.get("grid") or {}
    left = c.get("left_out") or []
    text = (f"{c['rows']} rows, {c['classes']} classes, modalities {', '.join(c['modalities'])}"
            + (f" (**left out: {', '.join(left)}** — one vector per class)" if left else "")
            + (f"; {c['rows_without_modality']} rows without any modality dropped" if c.get("rows_without_modality")
               else "")
            + f". Seeds {c['seeds']}; budget {c['epochs']} epochs (best epoch on validation); grid lr ∈ "
            f"{{{', '.join(f'{v:g}' for v in grid.get('lrs', []))}}} × width ∈ "
            f"{{{', '.join(str(v) for v in grid.get('widths', []))}}}, chosen on validation only; "
            + ("each η protocol trained at its own η." if c["train_missing"] == "eta" else "natural training only."))
    return text


def _still_improving(r: dict) -> str:
    """A note naming the methods whose best validation epoch was the budget's last in every seed."""
    from prom3e.methods.prom3e_method import split_epochs

    epochs = r["config"]["epochs"]
    last = []
    for m in r.get("order", r["methods"]):
        be = r["methods"][m]["summary"].get("best_epoch")
        budget = split_epochs(epochs, 0.5)[1] if m in ("prom3e", "aoept-prom3e") else epochs
        if be and be["mean"] == budget and be["std"] == 0:
            last.append(f"`{m}`")
    if not last:
        return ""
    return (f" **Still improving at the end of the budget** (best epoch = the last, every seed): {', '.join(last)}"
            " — their figures are those of models not trained to convergence at this budget.")


def dataset_block(dataset: str) -> str:
    r = _result(dataset)
    if r is None:
        return _not_run(dataset)
    n = len(r["config"]["seeds"])
    cpu = (f", of which {r['fit_cpu_seconds_total'] / 60:.0f} CPU-min in the fits" if "fit_cpu_seconds_total" in r
           else "")
    lines = [_config_line(r), "", f"Command: `{r['command']}` (sum over method × seed: "
             f"{r['method_seed_seconds'] / 60:.0f} min wall at one thread on the shared machine{cpu}).", "",
             "| method | acc η=0.7 | acc η=0.9 | acc natural | acc subsets | macro-F1 natural | AUROC natural "
             "| lr/width chosen | best epoch | tuning CPU s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m in r.get("order", r["methods"]):
        v = r["methods"][m]
        s = v["summary"]
        sel = ", ".join(f"{p['lr']:g}/{p['width']}" for p in v["selected"])
        lines.append(f"| `{m}` | " + " | ".join(_cell(s, f"protocols/{p}/acc", n_want=n) for p in PROTOS)
                     + f" | {_cell(s, 'protocols/natural/macro_f1', n_want=n)} | "
                     f"{_cell(s, 'protocols/natural/auroc', n_want=n)} | {sel} | {_cell(s, 'best_epoch', 1, 1)} | "
                     f"{_cell(s, 'tuning_cpu_seconds', 1, 0)} |")
    lines += ["", f"`best epoch`: of the natural fit, chosen on validation, out of {r['config']['epochs']} — for "
              "`prom3e` and `aoept-prom3e` out of the task phase's share (the other epochs pre-train)."
              + _still_improving(r), ""]
    lines += ["Estimate of a hidden modality under η = 0.7 (mean over targets). R@1 is computed **in each "
              "method's own space**: `raw` rows share the table's embedding space and compare with each other; "
              "an `own`-space R@1 is not comparable across methods. NM²I per prompted layer for the prompt "
              "methods.", "", "| method | space | R@1 η=0.7 | NM²I η=0.7 | NM²I per layer η=0.7 |",
              "|---|---|---|---|---|"]
    for m in r.get("order", r["methods"]):
        v = r["methods"][m]
        s = v["summary"]
        if v.get("estimate_space") is None:
            continue
        layers = sorted((k for k in s if k.startswith("reconstruction/eta0.7/mean/nm2i_layer/")),
                        key=lambda k: int(k.rsplit("/", 1)[1]))
        per_layer = " / ".join(_cell(s, k) for k in layers) or "–"
        lines.append(f"| `{m}` | {v['estimate_space']} | {_cell(s, 'reconstruction/eta0.7/mean/r1', digits=2)} | "
                     f"{_cell(s, 'reconstruction/eta0.7/mean/nm2i')} | {per_layer} |")
    lines += ["", "ProM3E against the best other method (accuracy, points): " + "; ".join(
        f"{p}: {mg[0]:.1f} vs `{mg[1]}` → **{mg[2]:+.1f}**" for p in PROTOS if (mg := margins(r, p)))]
    return "\n".join(lines)


for _name in DATASETS:
    renderer(f"benchmark-{_name}")(lambda _d=_name: dataset_block(_d))


@renderer("benchmark-summary")
def _summary() -> str:
    lines = ["| dataset | ProM3E natural | best other, natural | ProM3E η=0.7 | best other, η=0.7 |",
             "|---|---|---|---|---|"]
    notes = []
    cells = []  # (dataset, protocol, margin) over every protocol
    for d, title in DATASETS.items():
        r = _result(d)
        if r is None:
            notes.append(f"{title}: " + _not_run(d))
            continue
        cells += [(title, p, mg[2]) for p in PROTOS if (mg := margins(r, p))]
        row = [title]
        for p in ("natural", "eta0.7"):
            mg = margins(r, p)
            row += ["–", "–"] if mg is None else [f"{mg[0]:.1f}", f"`{mg[1]}` {mg[0] - mg[2]:.1f} ({mg[2]:+.1f})"]
        lines.append("| " + " | ".join(row) + " |")
    if cells:
        lost = [c for c in cells if c[2] < 0]
        worst = min(cells, key=lambda c: c[2])
        notes.insert(0, f"Over the {len(cells)} dataset × protocol cells (η 0.7, η 0.9, natural, subsets), ProM3E "
                     f"is below the best other method in **{len(lost)}**"
                     + (f", by {-max(c[2] for c in lost):.1f} to {-worst[2]:.1f} points (worst: {worst[0]}, "
                        f"{worst[1]})" if lost else "") + ".")
    return "\n".join(lines + (["", "\n\n".join(notes)] if notes else []))


@renderer("benchmark-ablations")
def _ablations() -> str:
    if not (RESULTS / "benchmark_ablations.json").exists():
        return "_Not run yet: `.venv/bin/python experiments/benchmark_ablations.py`._"
    r = load_result("benchmark_ablations")
    lines = [f"Measured with `{r['command_base']}` plus each variant's `--option`s (mean ± sample std, 3 seeds; "
             "the η = 0.7 column scores the natural-trained model). R@1 is in each variant's own space.", "",
             "| method | variant | acc natural | acc η=0.7 | acc subsets | R@1 η=0.7 | NM²I η=0.7 | fit CPU s |",
             "|---|---|---|---|---|---|---|---|"]
    for v in r["variants"]:
        s = v["summary"]
        lines.append(f"| `{v['method']}` | {v['title']} | {_cell(s, 'protocols/natural/acc')} | "
                     f"{_cell(s, 'protocols/eta0.7/acc')} | {_cell(s, 'protocols/subsets/acc')} | "
                     f"{_cell(s, 'reconstruction/eta0.7/mean/r1', digits=2)} | "
                     f"{_cell(s, 'reconstruction/eta0.7/mean/nm2i')} | {_cell(s, 'fit_cpu_seconds', 1, 0)} |")
    d = r.get("moe_determinism")
    if d:
        lines += ["", f"MoE-Retriever determinism (seed 0, {d['test_rows']} test rows): with fresh supporting-group "
                  "draws per call (earlier) " + " and ".join(f"{100 * c:.1f} %" for c in d["fresh_draws_changed"])
                  + f" of the predicted classes changed between consecutive calls; re-seeded per call (now): "
                  f"{100 * d['reseeded_changed']:.1f} %."]
    return "\n".join(lines)


@renderer("benchmark-scale")
def _scale() -> str:
    if not (RESULTS / "benchmark_scale.json").exists():
        return "_Not run yet: `.venv/bin/python experiments/benchmark_scale.py`._"
    r = load_result("benchmark_scale")
    knn = "; ".join(f"{k['rows']:,} rows: {k['cpu_seconds']:.0f} s CPU ({k['wall_seconds']:.0f} s wall), peak "
                    f"{k['peak_rss_mib']} MiB" for k in r.get("knn_imputation", []))
    lines = ([f"k-NN imputation of the 4 training views of every row against the whole table (its own process, "
              f"one thread): {knn}.", ""] if knn else [])
    lines += [f"`{r['command']}` ({r['rows']} rows, modalities {', '.join(r['modalities'])}; left out: "
              f"{', '.join(r['left_out']) or 'none'}): finished; peak resident set of the process "
              f"{r['max_rss_mib']} MiB. Per method (one process, one thread, shared machine):", "",
              "| method | fit s (wall) | fit CPU s | fit peak MiB | predict s (natural) | method total s "
              "| acc natural |",
              "|---|---|---|---|---|---|---|"]
    for m, v in r["methods"].items():
        lines.append(f"| `{m}` | {v['fit_seconds']:.0f} | {v['fit_cpu_seconds']:.0f} | {v['fit_peak_mib']:.0f} | "
                     f"{v['predict_seconds']:.1f} | {v['seconds']:.0f} | {100 * v['natural_acc']:.1f} |")
    return "\n".join(lines)


def _delta(r: dict, proto: str, other: str, metric: str = "acc") -> str:
    key = f"protocols/{proto}/{metric}"
    a, b = r["methods"].get("prom3e", {}).get("summary", {}), r["methods"].get(other, {}).get("summary", {})
    return f"{100 * (a[key]['mean'] - b[key]['mean']):+.1f}" if key in a and key in b else "–"


@renderer("benchmark-verdict")
def _verdict() -> str:
    """ProM3E's rank and accuracy differences (points) per dataset and protocol."""
    lines = ["| dataset | protocol | ProM3E acc | rank of 9 | best other (Δ) | Δ vs CMPT | Δ vs AOEPT "
             "| Δ vs MoE-Retriever | Δ vs zero-fill |", "|---|---|---|---|---|---|---|---|---|"]
    nm2i = []
    for d, title in DATASETS.items():
        r = _result(d)
        if r is None:
            continue
        for p in PROTOS:
            key = f"protocols/{p}/acc"
            means = {m: v["summary"][key]["mean"] for m, v in r["methods"].items() if key in v["summary"]}
            if "prom3e" not in means:
                continue
            rank = 1 + sum(v > means["prom3e"] for v in means.values())
            mg = margins(r, p)
            lines.append(f"| {title} | {p} | {100 * means['prom3e']:.1f} | {rank} | `{mg[1]}` ({mg[2]:+.1f}) | "
                         f"{_delta(r, p, 'cmpt')} | {_delta(r, p, 'aoept')} | {_delta(r, p, 'moe-retriever')} | "
                         f"{_delta(r, p, 'zero-fill')} |")
        key = "reconstruction/eta0.7/mean/nm2i"
        vals = {m: v["summary"][key]["mean"] for m, v in r["methods"].items() if key in v["summary"]}
        if "prom3e" in vals and len(vals) > 1:
            best = max((m for m in vals if m != "prom3e"), key=vals.get)
            nm2i.append(f"{title}: ProM3E {100 * vals['prom3e']:.1f} vs `{best}` {100 * vals[best]:.1f}")
    if len(lines) == 2:
        return "_No dataset has been run yet._"
    return "\n".join(lines + (["", "NM²I of the hidden-modality estimate at η = 0.7 (comparable across methods), "
                               "ProM3E vs the best other: " + "; ".join(nm2i) + "."] if nm2i else []))
