"""``prom3e demo``: the main job on the built-in synthetic ecology data, end to end."""

from __future__ import annotations

from prom3e.commands.common import add_common, subparser

EXAMPLES = """\
  prom3e demo                       # writes demo-output/
  prom3e demo --out /tmp/demo --n 5000 --epochs 5
"""


def add_parser(sub) -> None:
    p = subparser(sub, "demo", "Generate synthetic ecology data, train ProM3E, evaluate, write a report.",
                  EXAMPLES)
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--n", type=int, default=20000, help="rows to generate (default: 20000)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default: 15)")
    p.add_argument("--model", default="base", choices=["tiny", "base", "paper", "large"])
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="rows held out from training for the evaluation (default: 0.2)")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import time
    from pathlib import Path

    import numpy as np

    from prom3e.api import Fuser
    from prom3e.data.synthetic import SynthConfig, generate_table
    from prom3e.data.table import write_parquet
    from prom3e.errors import Prom3eError
    from prom3e.tasks.evaluate import evaluate
    from prom3e.train.loop import TrainConfig, train

    if not 0 < args.test_fraction < 1:
        raise Prom3eError("--test-fraction must be in (0, 1)")
    t0 = time.perf_counter()
    out = Path(args.out)
    table = generate_table(SynthConfig(n=args.n, seed=args.seed))
    perm = np.random.default_rng(args.seed).permutation(len(table))
    n_test = int(len(table) * args.test_fraction)
    test, fit = table.take(np.sort(perm[:n_test])), table.take(np.sort(perm[n_test:]))
    write_parquet(fit, out / "train.parquet")
    write_parquet(test, out / "test.parquet")
    print(f"[1/3] synthetic data: {len(fit)} training + {len(test)} held-out rows, modalities "
          f"{', '.join(table.modalities)} → {out}/train.parquet, test.parquet", flush=True)
    cfg = TrainConfig(model=args.model, epochs=args.epochs, seed=args.seed, device=args.device)
    summary = train(fit, out / "run", cfg)
    t_train = time.perf_counter() - t0
    print(f"[2/3] trained in {t_train:.0f}s: best validation R@1 {summary['best_val_r1_mean']:.3f}",
          flush=True)
    fuser = Fuser.load(out / "run", device=args.device)
    metrics = evaluate(fuser, test, label="species", out_dir=out / "eval", seed=args.seed,
                       progress=True, command=f"prom3e demo --out {args.out} --seed {args.seed}")
    total = time.perf_counter() - t0
    print(f"[3/3] evaluated → {out}/eval/report.md, metrics.json ({total:.0f}s in all)")
    for line in headline(metrics):
        print("   ", line)
    return 0


def headline(metrics: dict) -> list[str]:
    """A few lines worth printing from the evaluation metrics."""
    lines = []
    r = metrics.get("retrieval", {}).get("summary", {})
    for key in ("r1_cross_mean", "r1_reconstruction_mean", "r1_inversion_mean"):
        if r.get(key) is not None:
            lines.append(f"retrieval {key}: {r[key]:.3f}")
    for name, ok in metrics.get("claims", {}).items():
        if isinstance(ok, dict) and "holds" in ok:
            lines.append(f"claim '{name}': {'holds' if ok['holds'] else 'does not hold'}")
    warning = (metrics.get("uncertainty", {}).get("check") or {}).get("warning")
    if warning:
        lines.append(warning)
    return lines
