"""``prom3e embed``: raw observations → feature table, with frozen encoders."""

from __future__ import annotations

import argparse

from prom3e.commands.common import add_common, add_overwrite, subparser

EXAMPLES = """\
  prom3e embed --observations obs.csv --spec embed.yaml --out features.parquet
  prom3e embed --observations obs.csv --spec embed.yaml --out features.parquet --restart
  prom3e embed --list-encoders

embed.yaml:
  batch_size: 64
  id_column: inat_id
  modalities:
    image: {encoder: efficientnet_lite0, column: photo, root: photos/}
    text:  {encoder: minilm, template: "{family} {genus} {scientific_name} ({common_name})"}
    loc:   {encoder: geoclip, columns: [lat, lon]}
    date:  {encoder: date, column: observed_on, options: {year: true}}

A killed run resumes where it stopped when run again with the same spec.
"""


def add_parser(sub) -> None:
    p = subparser(sub, "embed", "turn observations into feature vectors (stage 1)", EXAMPLES)
    p.add_argument("--observations", help="CSV or Parquet file, one row per observation")
    p.add_argument("--spec", help="YAML/JSON: modality → encoder and input column(s)")
    p.add_argument("--out", help="output feature table (Parquet)")
    p.add_argument("--restart", action="store_true",
                   help="discard a partial earlier run instead of resuming it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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

    from prom3e.encoders.embed import embed
    from prom3e.encoders.spec import load_spec

    torch.manual_seed(args.seed)
    summary = embed(args.observations, load_spec(args.spec), args.out, device=args.device,
                    restart=args.restart, progress=not args.no_progress, overwrite=args.overwrite)
    print("\n".join(summary.lines()))
    return 0
