"""``prom3e synth``: write the built-in synthetic ecology table (an aligned table)."""

from __future__ import annotations

import argparse

from prom3e.commands.common import add_common, add_overwrite, add_quiet, count, number, subparser

EXAMPLES = """\
  prom3e synth --out data/synth.parquet
  prom3e synth --out small.parquet --n 2000 --species 30 --dim 32 --seed 1
  prom3e synth --out t.parquet --modalities image,loc,text,m7 --missing-rate 0.5
  prom3e synth --out big/ --parts --n 10000000     # a folder of parts, one part in memory at a time
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = subparser(
        sub, "synth",
        "Generate synthetic ecology data (taxonomy, ranges, six aligned modalities).",
        EXAMPLES,
    )
    p.add_argument("--out", required=True, metavar="T.parquet", help="output Parquet file")
    p.add_argument("--n", type=count(1), default=20000, help="rows (default: 20000)")
    p.add_argument("--dim", type=count(4), default=64, help="embedding dim (default: 64)")
    p.add_argument("--species", type=count(2), default=100, help="number of species (default: 100)")
    p.add_argument(
        "--modalities", default="image,sat,loc,env,text,sound",
        help="comma-separated: image,sat,loc,env,text,sound or m<k> (noisy species views)",
    )
    p.add_argument(
        "--missing-rate", type=number(0, 1, high_open=True), default=0.3,
        help="probability that each modality is missing in a row (default: 0.3)",
    )
    p.add_argument("--noise", type=number(0), default=1.0, help="noise multiplier (default: 1.0)")
    add_overwrite(p)
    p.add_argument("--parts", action="store_true",
                   help="write OUT as a folder of Parquet parts (docs/SCALE.md); resumable")
    p.add_argument("--part-rows", type=count(), default=262144, help="rows per part with --parts (default: 262144)")
    add_quiet(p, "progress bar (--parts)")
    add_common(p, device=False)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from prom3e.data.synthetic import SynthConfig, generate
    from prom3e.data.table import from_arrow, write_parquet
    from prom3e.io import check_output_file

    mods = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    cfg = SynthConfig(
        n=args.n, dim=args.dim, n_species=args.species, modalities=mods,
        missing_rate=args.missing_rate, noise=args.noise, seed=args.seed,
        always_present=("image",) if "image" in mods else (),
    )
    if args.parts:
        return _run_parts(cfg, args)
    check_output_file(args.out, overwrite=args.overwrite)
    table = generate(cfg)
    t = from_arrow(table, source=str(args.out))
    write_parquet(table, args.out)
    frac = " ".join(f"{m}={f:.2f}" for m, f in zip(t.modalities, t.present.mean(0), strict=True))
    print(
        f"wrote {args.out}: {len(t)} rows, {len(t.modalities)} modalities x {cfg.dim} dims, "
        f"{cfg.n_species} species; present: {frac}"
    )
    return 0


def _run_parts(cfg, args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np

    from prom3e.data.parts import PartWriter
    from prom3e.data.synthetic import generate_parts
    from prom3e.data.table import from_arrow
    from prom3e.runtime import progress_bar

    parts = list(generate_parts(cfg, args.part_rows))
    writer = PartWriter(args.out, {"synth": dataclasses.asdict(cfg), "part_rows": args.part_rows},
                        restart=args.overwrite)
    present, written = np.zeros(len(cfg.modalities)), 0
    for first, make in progress_bar(parts, show=not args.quiet, desc="synth", unit="part"):
        if writer.done(first):
            continue
        table = make()
        present += from_arrow(table, source=f"{args.out} (part at row {first})").present.sum(0)
        written += table.num_rows
        writer.write(first, table)
    writer.finish([first for first, _ in parts])
    frac = " ".join(f"{m}={f / written:.2f}" for m, f in zip(cfg.modalities, present, strict=True))
    print(f"wrote {args.out}: {cfg.n} rows in {len(parts)} parts ({written} rows written now), "
          f"{len(cfg.modalities)} modalities x {cfg.dim} dims, {cfg.n_species} species"
          + (f"; present: {frac}" if written else ""))
    return 0
