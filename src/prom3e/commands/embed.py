"""``prom3e embed``: raw observations → feature table, with frozen encoders."""

from __future__ import annotations

import argparse

from prom3e.commands.common import add_common, add_overwrite, add_quiet, count, subparser

EXAMPLES = """\
  prom3e embed --observations obs.csv --spec embed.yaml --out features.parquet
  prom3e embed --observations obs.csv --spec embed.yaml --out features.parquet --restart
  prom3e embed --observations 0012345-230224095556074.zip --spec gbif.yaml --out features.parquet
  prom3e embed --observations observations-1234.csv --spec inat.yaml --out features.parquet
  prom3e embed --list-encoders
  prom3e embed --observations obs/ --spec embed.yaml --out features/        # a folder of parts
  torchrun --nproc-per-node 4 -m prom3e.cli embed --observations obs/ --spec embed.yaml --out features/

embed.yaml:
  batch_size: 64
  id_column: inat_id
  modalities:
    image: {encoder: efficientnet_lite0, column: photo, root: photos/}
    text:  {encoder: minilm, template: "{family} {genus} {scientific_name} ({common_name})"}
    loc:   {encoder: geoclip, columns: [lat, lon]}
    date:  {encoder: date, column: observed_on, options: {year: true}}

Observations: CSV/TSV (delimiter by extension, or --delimiter), Parquet, GBIF downloads
(simple or Darwin Core Archive zip: its meta.xml is read), iNaturalist CSV exports; see
docs/DATA.md. URLs (image_url) are never fetched: download the files first.
A killed run resumes where it stopped when run again with the same spec. With --parts, a
folder or glob of observations, or under torchrun, OUT is a folder of Parquet parts written
by all ranks (docs/SCALE.md).
"""


def add_parser(sub) -> None:
    p = subparser(sub, "embed", "turn observations into feature vectors (stage 1)", EXAMPLES)
    p.add_argument("--observations", help="one row per observation: CSV/TSV, Parquet, a GBIF/Darwin "
                   "Core Archive zip, or a folder or glob of Parquet parts (required unless --list-encoders)")
    p.add_argument("--delimiter", help="field delimiter: one character or tab/comma/semicolon/pipe "
                   "(default: by extension: .csv comma, .tsv/.txt tab)")
    p.add_argument("--encoding", help="text encoding (default: UTF-8, or what meta.xml says)")
    p.add_argument("--spec", help="YAML/JSON: modality → encoder and input column(s) (required unless --list-encoders)")
    p.add_argument("--out", help="output feature table (Parquet) (required unless --list-encoders)")
    p.add_argument("--restart", action="store_true",
                   help="discard a partial earlier run instead of resuming it")
    p.add_argument("--parts", action="store_true",
                   help="write OUT as a folder of parts (automatic for a folder of observations and "
                        "under torchrun)")
    p.add_argument("--part-rows", type=count(), default=50_000,
                   help="observations per part with --parts (default: 50000)")
    add_quiet(p, "progress bar")
    p.add_argument("--list-encoders", action="store_true", help="list the encoders and exit")
    add_overwrite(p, "OUT that another spec (or another program) wrote")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prom3e.errors import Prom3eError

    if args.list_encoders:
        from prom3e.encoders.registry import list_encoders

        print(f"{'encoder':19s} {'input':7s} {'dim':>12s}  description")
        for e in list_encoders():
            extra = f" (extra: {e.extra})" if e.extra else ""
            print(f"{e.name:19s} {e.input_kind:7s} {e.dim:>12s}  {e.description}{extra}")
        return 0
    missing = [f"--{k}" for k in ("observations", "spec", "out") if not getattr(args, k)]
    if missing:
        raise Prom3eError(f"missing {', '.join(missing)}")
    import torch

    from prom3e.data.dataset import is_dataset
    from prom3e.distributed import world_from_env
    from prom3e.encoders.embed import embed
    from prom3e.encoders.spec import load_spec

    torch.manual_seed(args.seed)
    if args.parts or is_dataset(args.observations) or world_from_env()[1] > 1:
        from prom3e.encoders.embed_parts import embed_parts

        summary = embed_parts(args.observations, load_spec(args.spec), args.out, device=args.device,
                              restart=args.restart, progress=not args.quiet, part_rows=args.part_rows,
                              delimiter=args.delimiter, encoding=args.encoding)
        if summary is not None:
            print("\n".join(summary.lines()))
        return 0
    summary = embed(args.observations, load_spec(args.spec), args.out, device=args.device,
                    restart=args.restart, progress=not args.quiet,
                    delimiter=args.delimiter, encoding=args.encoding, overwrite=args.overwrite)
    print("\n".join(summary.lines()))
    return 0
