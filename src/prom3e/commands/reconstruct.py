"""``prom3e reconstruct``: write reconstructed target embeddings (+ ‖σ‖₁) to Parquet."""

from __future__ import annotations

from prom3e.commands.common import add_common, add_overwrite, count, subparser

EXAMPLES = """\
  prom3e reconstruct --model runs/synth --data synth.parquet --target text --out text.parquet
  prom3e reconstruct --model runs/synth --data synth.parquet --target sat --visible image,loc \\
      --samples 10 --out sat.parquet
"""


def add_parser(sub) -> None:
    p = subparser(sub, "reconstruct", "Reconstruct a target modality from the visible ones.", EXAMPLES)
    p.add_argument("--model", required=True, help="run folder written by 'prom3e train'")
    p.add_argument("--data", required=True, help="Parquet table with the model's modalities")
    p.add_argument("--target", required=True, help="modality to reconstruct")
    p.add_argument("--visible", help="comma-separated visible modalities (default: every present "
                   "modality of the row except the target)")
    p.add_argument("--samples", type=count(0), default=0,
                   help="also write N posterior draws per row (column TARGET_samples); the mean "
                   "column then averages them (default 0: decode μ)")
    p.add_argument("--out", required=True, help="Parquet file to write")
    p.add_argument("--batch-size", type=count(1), default=1024)
    add_overwrite(p)
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import numpy as np
    import pyarrow as pa
    from tqdm.auto import tqdm

    from prom3e.api import Fuser
    from prom3e.data.table import read_table, vectors_to_arrow, write_parquet
    from prom3e.errors import Prom3eError
    from prom3e.io import check_output_file

    run_files = [Path(args.model) / n for n in ("config.json", "schema.json", "model.safetensors")]
    check_output_file(args.out, inputs=[args.data, *run_files], overwrite=args.overwrite)
    fuser = Fuser.load(args.model, device=args.device)
    table = read_table(args.data).check_schema(fuser.modalities, fuser.dims)
    t = fuser._index(args.target)
    vis_names = [v for v in args.visible.split(",") if v] if args.visible else \
        [m for m in fuser.modalities if m != args.target]
    for name in vis_names:
        fuser._index(name)
    if args.target in vis_names:
        raise Prom3eError(f"--target {args.target} is also in --visible: a visible modality is not reconstructed")
    cols = np.isin(fuser.modalities, vis_names)
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
    broken = np.flatnonzero(ok & ~(np.isfinite(mean).all(1) & np.isfinite(sigma)))
    if broken.size:  # never write NaN with exit 0
        raise Prom3eError(f"the model produced NaN/inf for {broken.size} row(s) (first: row {int(broken[0])}); "
                          f"nothing written to {args.out}")
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
