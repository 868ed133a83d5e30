"""``prom3e reconstruct``: write reconstructed target embeddings (+ ‖σ‖₁) to Parquet."""

from __future__ import annotations

from prom3e.commands.common import add_common, subparser

EXAMPLES = """\
  prom3e reconstruct --model runs/synth --data synth.parquet --target text --out text.parquet
  prom3e reconstruct --model runs/synth --data synth.parquet --target sat --visible image,loc \\
      --samples 10 --out sat.parquet
"""


def add_parser(sub) -> None:
    p = subparser(sub, "reconstruct", "Reconstruct a target modality from the visible ones.", EXAMPLES)
    p.add_argument("--model", required=True, help="the trained model: a run folder ('prom3e train'), an "
                   "exported folder ('prom3e export'), local-dir:PATH or hf-hub:ORG/NAME[@REVISION]")
    p.add_argument("--data", required=True, help="Parquet table with the model's modalities")
    p.add_argument("--target", required=True, help="modality to reconstruct")
    p.add_argument("--visible", help="comma-separated visible modalities (default: every present "
                   "modality of the row except the target)")
    p.add_argument("--samples", type=int, default=0,
                   help="also write N posterior draws per row (column TARGET_samples); the mean "
                   "column then averages them (default 0: decode μ)")
    p.add_argument("--out", required=True, help="Parquet file to write")
    p.add_argument("--batch-size", type=int, default=1024)
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np
    import pyarrow as pa
    from tqdm.auto import tqdm

    from prom3e.api import Fuser
    from prom3e.data.table import read_table, vectors_to_arrow, write_parquet
    from prom3e.errors import Prom3eError

    fuser = Fuser.load(args.model, device=args.device)
    table = read_table(args.data).check_schema(fuser.modalities, fuser.dims)
    t = fuser._index(args.target)
    if args.samples < 0:
        raise Prom3eError("--samples must be ≥ 0")
    vis_names = args.visible.split(",") if args.visible else [m for m in fuser.modalities if m != args.target]
    cols = np.isin(fuser.modalities, vis_names)
    for name in vis_names:
        fuser._index(name)
    visible = table.present & cols
    rows = np.flatnonzero(visible.any(1))
    n, d = len(table), fuser.dims[t]
    mean = np.zeros((n, d), np.float32)
    sigma = np.full(n, np.nan, np.float32)
    draws = np.zeros((n, args.samples, d), np.float32) if args.samples else None
    step = args.batch_size * 8
    for i in tqdm(range(0, len(rows), step), desc="reconstruct", unit="chunk"):
        r = rows[i:i + step]
        part = table.take(r)
        part.present = visible[r]
        rec = fuser.reconstruct(part, [args.target], n_samples=args.samples, seed=args.seed + i,
                                batch_size=args.batch_size, return_samples=bool(args.samples),
                                return_sigma=True)
        mean[r] = rec[args.target].numpy()
        sigma[r] = rec["sigma_l1"].numpy()
        if draws is not None:
            draws[r] = rec[f"{args.target}:samples"].numpy().transpose(1, 0, 2)
    ok = np.zeros(n, bool)
    ok[rows] = True
    out = {k: pa.array(v) for k, v in table.meta.items()}
    out[args.target] = vectors_to_arrow(mean, ok)
    if draws is not None:
        inner = vectors_to_arrow(draws.reshape(-1, d))
        offsets = pa.array(np.arange(0, (n + 1) * args.samples, args.samples, dtype=np.int32))
        out[f"{args.target}_samples"] = pa.ListArray.from_arrays(offsets, inner, mask=pa.array(~ok))
    out["sigma_l1"] = pa.array(sigma, mask=~ok)
    write_parquet(pa.table(out), args.out)
    skipped = n - len(rows)
    print(f"wrote {args.out}: {len(rows)} reconstructed '{args.target}' rows"
          + (f", {skipped} row(s) with no visible modality left null" if skipped else ""))
    return 0
