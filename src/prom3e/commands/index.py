"""``prom3e index``: build a searchable gallery from a Parquet column, and search it."""

from __future__ import annotations

from prom3e.commands.common import add_overwrite, add_quiet, count, subparser

EXAMPLES = """\
  prom3e index build --data gallery.parquet --column text --out text.index.safetensors
  prom3e index build --data gallery.parquet --column image --spec IVF1024,Flat --params nprobe=16 \\
      --out image.index.safetensors
  prom3e index search --index text.index.safetensors --data text.parquet --column text --k 10 \\
      --out hits.parquet
  prom3e index build --data aligned/ --column image --spec IVF4096,PQ64 --out image.index.safetensors   # parts
--spec: 'exact' (torch, default) or a faiss index_factory string (needs prom3e[faiss]):
'Flat', 'IVF1024,Flat', 'HNSW32', 'IVF1024,PQ64'. Ids are the gallery's row numbers.
"""


def add_parser(sub) -> None:
    p = subparser(sub, "index", "Build a gallery index from a Parquet column, or search one.", EXAMPLES)
    p.add_argument("action", choices=["build", "search"])
    p.add_argument("--data", required=True, help="Parquet table: the gallery (build) or the queries (search); "
                   "or a folder or glob of Parquet parts (only --column is read)")
    p.add_argument("--column", required=True, help="the modality column to index or to query with")
    p.add_argument("--out", required=True, help="build: index file (.safetensors); search: Parquet of hits")
    p.add_argument("--index", help="search: the index file written by 'prom3e index build' (required by search)")
    p.add_argument("--spec", default="exact", help="build: 'exact' (torch) or a faiss index_factory string, "
                   "e.g. IVF256,Flat: about min(N/39, 4·√N) lists for N gallery vectors")
    p.add_argument("--params", default=None, help="faiss search parameters, e.g. nprobe=16 or efSearch=128 "
                   "(build: stored with the index; search: overrides them) "
                   "(default: build: faiss's own; search: those stored)")
    p.add_argument("--k", type=count(1), default=10, help="search: neighbours per query (default: 10)")
    p.add_argument("--threads", type=count(1), default=None, help="CPU threads (default: torch's)")
    p.add_argument("--seed", type=count(0), default=0, help="build: seed of the training sample (default: 0)")
    add_overwrite(p)
    add_quiet(p, "progress bar (search)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    import time
    import warnings

    import numpy as np
    import pyarrow as pa
    import torch

    from prom3e.data.dataset import Dataset, is_dataset
    from prom3e.data.table import read_column, write_parquet
    from prom3e.errors import Prom3eError
    from prom3e.index import GalleryIndex
    from prom3e.index.gallery import IndexAdvice
    from prom3e.io import check_output_file

    if args.action == "search" and not args.index:
        raise Prom3eError("search needs --index (a file written by 'prom3e index build')")
    check_output_file(args.out, inputs=[args.data, args.index], overwrite=args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.action == "build":
        if is_dataset(args.data):  # a folder of parts: only this column is read, part by part
            gallery, rows = Dataset(args.data, [args.column]).column(args.column)
        else:
            features, present, _ = read_column(args.data, args.column)
            rows = np.flatnonzero(present)
            gallery = features[rows]
        with warnings.catch_warnings(record=True) as caught:  # faiss's advice, as one line of ours
            warnings.simplefilter("always", IndexAdvice)
            index = GalleryIndex.build(gallery, args.spec, args.params or "", ids=rows, seed=args.seed)
        for w in caught:
            if issubclass(w.category, IndexAdvice):
                print(f"prom3e index build: warning: {w.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        index.save(args.out)
        print(f"wrote {args.out}: {len(index)} '{args.column}' vectors of {args.data}, {args.spec} index "
              f"({time.perf_counter() - t0:.1f}s)")
        return 0
    index = GalleryIndex.load(args.index)
    if args.params is not None:
        index.set_params(args.params)
    if is_dataset(args.data):
        ds = Dataset(args.data, [args.column])
        queries, rows = ds.column(args.column)
        meta = {c: v.to_numpy() for c, v in ds.meta(ds.meta_columns).items()}
        n = ds.num_rows
    else:
        features, present, meta = read_column(args.data, args.column, meta=True)
        rows = np.flatnonzero(present)
        queries, n = features[rows], len(present)
    scores, ids = index.search(queries, args.k, progress=not args.quiet)
    ok = np.zeros(n, bool)
    ok[rows] = True
    full_ids = np.full((n, args.k), -1, np.int64)
    full_scores = np.full((n, args.k), np.nan, np.float32)
    full_ids[rows], full_scores[rows] = ids.numpy(), scores.numpy()
    offsets = pa.array(np.arange(0, (n + 1) * args.k, args.k, dtype=np.int32))
    out = {k: pa.array(v) for k, v in meta.items()}
    out["neighbors"] = pa.ListArray.from_arrays(offsets, pa.array(full_ids.ravel()), mask=pa.array(~ok))
    out["scores"] = pa.ListArray.from_arrays(offsets, pa.array(full_scores.ravel()), mask=pa.array(~ok))
    write_parquet(pa.table(out), args.out)
    sec = time.perf_counter() - t0
    print(f"wrote {args.out}: top {args.k} of {len(index)} gallery vectors for {len(rows)} queries "
          f"({len(rows) / max(sec, 1e-9):.0f} queries/s including I/O)"
          + (f"; {n - len(rows)} row(s) without '{args.column}' left null" if n > len(rows) else ""))
    return 0
