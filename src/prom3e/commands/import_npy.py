"""``prom3e import-npy``: convert the reference implementation's ``.npy`` dict to Parquet."""

from __future__ import annotations

from prom3e.commands.common import add_overwrite, subparser

EXAMPLES = """\
  prom3e import-npy --npy embeddings.npy --out table.parquet
"""


def add_parser(sub) -> None:
    p = subparser(sub, "import-npy", "Convert a reference .npy dict {image, sat, …: N×d} to Parquet "
                  "(all-zero rows become missing).", EXAMPLES)
    p.add_argument("--npy", required=True)
    p.add_argument("--out", required=True)
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from prom3e.data.table import import_npy, write_parquet
    from prom3e.io import check_output_file

    check_output_file(args.out, inputs=[args.npy], overwrite=args.overwrite)
    t = import_npy(args.npy)
    write_parquet(t, args.out)
    print(f"wrote {args.out}: {len(t)} rows, modalities "
          + ", ".join(f"{m} ({d}-d, {p:.0%} present)" for m, d, p in
                      zip(t.modalities, t.dims, t.present.mean(0), strict=True)))
    return 0
