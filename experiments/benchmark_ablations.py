"""The measured effect of each peer setting changed to follow its authors (docs/METHODS.md).

One method at a time, at a fixed grid point (lr 1e-3, width 64), on the synthetic profile of
``experiments/benchmark.py`` (4 000 rows, ``text`` left out, 10 epochs, batch 128), natural
training, seeds 0–2; every variant's figures come from its own ``prom3e benchmark`` run. Plus
MoE-Retriever's prediction determinism: the share of predicted classes that change between two
``predict_proba`` calls with fresh supporting-group draws (the earlier behaviour) vs re-seeded
draws (now).

    .venv/bin/python experiments/benchmark_ablations.py      # → experiments/results/benchmark_ablations.json
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

VARIANTS: list[tuple[str, dict, str]] = [
    ("cmpt", {}, "trainable projection (default)"),
    ("cmpt", {"base": "frozen", "rank": 1}, "frozen random projection + LoRA rank 1 (earlier default)"),
    ("aoept", {}, "16 prompts, per-layer prototypes (default)"),
    ("aoept", {"prototypes": "input"}, "16 prompts, input-space prototypes"),
    ("aoept", {"prompt_len": 4, "prototypes": "input"}, "4 prompts, input-space prototypes (earlier default)"),
    ("moe-retriever", {}, "P 16 × D 64, MoE output (default)"),
    ("moe-retriever", {"tokens": 4, "token_dim": 32}, "P 4 × D 32 (earlier default)"),
    ("moe-retriever", {"mode": "weighted_mean"}, "P 16 × D 64, released code's mean overwrite"),
]
FIXED = ["--seeds", "0,1,2", "--lrs", "1e-3", "--widths", "64", "--epochs", "10", "--batch-size", "128",
         "--max-rows", "4000", "--train-missing", "natural", "--threads", "1"]
KEYS = ("protocols/natural/acc", "protocols/eta0.7/acc", "protocols/subsets/acc", "reconstruction/eta0.7/mean/r1",
        "reconstruction/eta0.7/mean/nm2i", "fit_cpu_seconds")


def moe_determinism(table_path: Path) -> dict:
    """Share of changed predicted classes between two calls: fresh draws (earlier) vs re-seeded (now)."""
    import numpy as np

    from prom3e.data.labels import encode_labels
    from prom3e.methods import create
    from prom3e.methods.base import FitConfig
    from prom3e.tasks.common import stratified_subsample
    from prom3e.tasks.comparison.benchmark import load_table
    from prom3e.tasks.comparison.protocols import leaking_modalities, make_split

    table = load_table(table_path, "species")
    y, _ = encode_labels(table.label("species"))
    rows = stratified_subsample(np.arange(len(table)), y, 4000, 0)
    table, y = table.take(rows), y[rows]
    split = make_split(y, 0)
    table = table.select([m for m in table.modalities if m not in leaking_modalities(table, y, split.train)])
    m = create("moe-retriever", FitConfig(epochs=10, batch_size=128, width=64, seed=0))
    m.fit(table.take(split.train), y[split.train], int(y.max()) + 1)
    test = table.take(split.test)
    now = [m.predict_proba(test).argmax(1) for _ in range(2)]
    m._eval_generator()
    reseed = m._eval_generator
    m._eval_generator = lambda: None  # the earlier behaviour: one stream, continued across calls
    fresh = [m.predict_proba(test).argmax(1) for _ in range(3)]
    m._eval_generator = reseed
    changed = [float((fresh[i] != fresh[i + 1]).mean()) for i in range(2)]
    return {"fresh_draws_changed": changed, "reseeded_changed": float((now[0] != now[1]).mean()),
            "test_rows": len(test)}


def main() -> int:
    import json

    import docgen
    import render_docs
    from benchmark import dataset_table

    from prom3e.cli import main as cli

    table = dataset_table("synthetic", None)
    out: dict = {"variants": [], "command_base": "prom3e benchmark --data experiments/out/synth20k.parquet "
                 "--label species " + " ".join(FIXED)}
    for i, (method, opts, title) in enumerate(VARIANTS):
        folder = HERE / "out" / "ablations" / f"{method}-{i}"
        args = ["benchmark", "--data", str(table), "--label", "species", "--out", str(folder), "--methods", method,
                *FIXED, *[f"--option={method}.{k}={v}" for k, v in opts.items()]]
        done = (folder / "results.json").exists() and json.loads((folder / "results.json").read_text())[
            "methods"][method]["per_seed"].__len__() == 3
        if not done and cli(args + (["--resume"] if (folder / "partial").exists() else [])) != 0:
            return 1
        s = json.loads((folder / "results.json").read_text())["methods"][method]["summary"]
        out["variants"].append({"method": method, "options": opts, "title": title,
                                "summary": {k: s[k] for k in KEYS if k in s}})
    out["moe_determinism"] = moe_determinism(table)
    docgen.save_result("benchmark_ablations", out)
    return render_docs.main([])


if __name__ == "__main__":
    sys.exit(main())
