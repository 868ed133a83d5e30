"""``prom3e reconstruct``: write reconstructed target embeddings (+ ‖σ‖₁) to Parquet."""

from __future__ import annotations

from prom3e.commands.common import add_common, add_overwrite, add_quiet, count, subparser

EXAMPLES = """\
  prom3e reconstruct --model runs/synth --data synth.parquet --target text --out text.parquet
  prom3e reconstruct --model runs/synth --data synth.parquet --target sat --visible image,loc \\
      --samples 10 --out sat.parquet
  prom3e reconstruct --model runs/big --data parts/ --target text --out text/   # folder of parts in and out
"""


def add_parser(sub) -> None:
    p = subparser(sub, "reconstruct", "Reconstruct a target modality from the visible ones.", EXAMPLES)
    p.add_argument("--model", required=True, help="the trained model: a run folder ('prom3e train'), an "
                   "exported folder ('prom3e export'), local-dir:PATH or hf-hub:ORG/NAME[@REVISION]")
    p.add_argument("--data", required=True, help="Parquet table with the model's modalities, or a folder "
                   "or glob of Parquet parts")
    p.add_argument("--target", required=True, help="modality to reconstruct")
    p.add_argument("--visible", help="comma-separated visible modalities (default: every present "
                   "modality of the row except the target)")
    p.add_argument("--samples", type=count(0), default=0,
                   help="also write N posterior draws per row (column TARGET_samples); the mean "
                   "column then averages them (default 0: decode μ)")
    p.add_argument("--out", required=True, help="Parquet file to write")
    p.add_argument("--batch-size", type=count(1), default=1024, help="rows per model batch")
    add_overwrite(p)
    p.add_argument("--parts", action="store_true",
                   help="write OUT as a folder of parts (automatic when --data is a folder or glob of parts, "
                        "and under torchrun)")
    p.add_argument("--part-rows", type=count(), default=65536, help="input rows per output part (default: 65536)")
    add_quiet(p, "progress bar")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from prom3e.api import Fuser
    from prom3e.data.dataset import is_dataset
    from prom3e.data.table import read_table, write_parquet
    from prom3e.distributed import bind_gpu, world_from_env
    from prom3e.errors import Prom3eError
    from prom3e.io import check_output_file

    bind_gpu()  # under torchrun: one GPU per process
    parts = args.parts or is_dataset(args.data) or world_from_env()[1] > 1
    if not parts:  # a folder of parts checks itself (resumable, never another program's folder)
        run_files = [Path(args.model) / n for n in ("config.json", "schema.json", "model.safetensors")]
        check_output_file(args.out, inputs=[args.data, *run_files], overwrite=args.overwrite)
    fuser = Fuser.load(args.model, device=args.device)
    fuser._index(args.target)
    vis_names = [v for v in args.visible.split(",") if v] if args.visible else \
        [m for m in fuser.modalities if m != args.target]
    for name in vis_names:
        fuser._index(name)
    if args.target in vis_names:
        raise Prom3eError(f"--target {args.target} is also in --visible: a visible modality is not reconstructed")
    cols = np.isin(fuser.modalities, vis_names)
    if parts:
        return _run_parts(args, fuser, cols)
    table = read_table(args.data).check_schema(fuser.modalities, fuser.dims)
    out, done = _reconstruct(fuser, table, cols, args, args.seed, progress=not args.quiet)
    write_parquet(out, args.out)
    n = len(table)
    print(f"wrote {args.out}: {done} reconstructed '{args.target}' rows"
          + (f", {n - done} row(s) with no visible modality left null" if n > done else ""))
    return 0


def _reconstruct(fuser, table, cols, args, seed: int, progress: bool = True):
    """The output table for ``table``'s rows, and how many rows were reconstructed."""
    import numpy as np
    import pyarrow as pa

    from prom3e.data.table import vectors_to_arrow
    from prom3e.errors import Prom3eError
    from prom3e.runtime import progress_bar

    t = fuser._index(args.target)
    visible = table.present & cols
    rows = np.flatnonzero(visible.any(1))
    n, d = len(table), fuser.dims[t]
    mean = np.zeros((n, d), np.float32)
    sigma = np.full(n, np.nan, np.float32)
    draws = np.zeros((n, args.samples, d), np.float32) if args.samples else None
    step = args.batch_size * 8
    for i in progress_bar(range(0, len(rows), step), show=progress, desc="reconstruct", unit="chunk"):
        r = rows[i:i + step]
        part = table.take(r)
        part.present = visible[r]
        rec = fuser.reconstruct(part, [args.target], n_samples=args.samples, seed=seed + i,
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
    return pa.table(out), len(rows)


def _run_parts(args, fuser, cols) -> int:
    """A folder of parts in (or --parts): OUT is a folder of parts, one per chunk of input
    rows, resumable; under torchrun chunk k goes to rank k mod world (docs/SCALE.md)."""
    from pathlib import Path

    from prom3e import distributed
    from prom3e.data.dataset import Dataset
    from prom3e.data.parts import PartWriter, file_fingerprint
    from prom3e.errors import Prom3eError
    from prom3e.runtime import progress_bar

    if args.part_rows < 1:
        raise Prom3eError(f"--part-rows must be ≥ 1, got {args.part_rows}")
    rank, world = distributed.init(str(fuser.device))
    ds = Dataset(args.data)
    run = Path(args.model)
    fingerprint = {"model": file_fingerprint([run / "config.json", run / "model.safetensors"]),
                   "data": file_fingerprint(ds.files), "target": args.target, "visible": args.visible,
                   "samples": args.samples, "seed": args.seed, "part_rows": args.part_rows}
    writer = PartWriter(args.out, fingerprint, args.overwrite)
    firsts, done = list(range(0, ds.num_rows, args.part_rows)), 0
    for k, first in enumerate(progress_bar(firsts, show=rank == 0 and not args.quiet, desc="reconstruct",
                                             unit="part")):
        if k % world != rank or writer.done(first):
            continue
        chunk = ds.table(first, min(first + args.part_rows, ds.num_rows))
        out, n = _reconstruct(fuser, chunk.check_schema(fuser.modalities, fuser.dims), cols, args,
                              args.seed + first, progress=False)
        writer.write(first, ds.cast_like(out))
        done += n
    done = distributed.all_sum(done)
    writer.finish(firsts)
    distributed.close()
    if rank == 0:
        print(f"wrote {args.out}: {ds.num_rows} rows in {len(firsts)} parts; '{args.target}' reconstructed "
              f"for {done} row(s) now")
    return 0
