"""``prom3e embed`` into a folder of parts: inputs of any size, resumable, sharded by torchrun.

The observations (a CSV, a Parquet file, or a folder/glob of Parquet parts) are cut into
chunks of ``part_rows`` rows at fixed row numbers; chunk ``k`` goes to rank ``k mod world``,
which embeds it in batches of the spec's ``batch_size`` and writes ``OUT/part-<first
row>.parquet`` atomically (:class:`prom3e.data.parts.PartWriter`). After a barrier, rank 0
writes ``OUT/_manifest.json``. A killed run (any rank) resumes by embedding only the chunks
whose part is missing, with any number of ranks. The parts depend only on the observations,
the spec and ``part_rows`` — not on the number of ranks — so a sharded run writes the same
files as a one-process run.

Each part has the columns of the one-file output (``obs_row``, the kept columns, one column
per modality with its encoder config) and only the rows with some usable input; its
per-modality counts are stored in its footer and summed for the summary. Differences from
the one-file output: ids are checked for duplicates within a chunk only, and rows of an
earlier output are not reused (resuming is by part).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import csv

from prom3e import distributed
from prom3e.data.dataset import Parts, is_dataset
from prom3e.data.observations import read_observations, text_parse_options
from prom3e.data.parts import PartWriter, file_fingerprint, part_name
from prom3e.encoders.base import resolve_device
from prom3e.encoders.embed import (
    ENCODER_KEY,
    META_KEY,
    ROW_COLUMN,
    EmbedSummary,
    _build_encoder,
    _check_columns,
    check_ids,
    embed_rows,
)
from prom3e.encoders.registry import encoder_info
from prom3e.encoders.spec import EmbedSpec
from prom3e.errors import Prom3eError

DEFAULT_PART_ROWS = 50_000
COUNTS_KEY = b"prom3e.embed_counts"


def observation_chunks(path: str | os.PathLike, rows: int, delimiter: str | None = None,
                       encoding: str | None = None
                       ) -> tuple[pa.Schema, list[Path], Iterator[tuple[int, Callable[[], pa.Table]]]]:
    """The observations as chunks of ``rows`` rows: (schema, input files, an iterator of
    ``(first row, load)``). Parquet loads only the chunks asked for; a plain CSV/TSV is
    streamed (every rank reads it through, keeping its own chunks); an export that needs its
    own reader (a GBIF/Darwin Core Archive zip or folder, an explicit ``encoding``) is read
    whole by :func:`~prom3e.data.observations.read_observations` and cut into chunks."""
    p = Path(path)
    if is_dataset(p) or p.suffix.lower() in (".parquet", ".pq"):
        if not is_dataset(p) and not p.exists():
            raise Prom3eError(f"{p}: no such observations file")
        parts = Parts(p)
        if parts.num_rows == 0:
            raise Prom3eError(f"{p}: no observations")

        def chunks() -> Iterator[tuple[int, Callable[[], pa.Table]]]:
            for a in range(0, parts.num_rows, rows):
                yield a, (lambda a=a: parts.read_rows(a, min(a + rows, parts.num_rows)))

        return parts.schema, parts.files, chunks()
    if not p.exists():
        raise Prom3eError(f"{p}: no such observations file")
    if p.is_dir() or p.suffix.lower() == ".zip" or encoding is not None:
        whole = read_observations(p, delimiter, encoding)

        def table_chunks() -> Iterator[tuple[int, Callable[[], pa.Table]]]:
            for a in range(0, whole.num_rows, rows):
                yield a, (lambda a=a: whole.slice(a, rows))

        return whole.schema, [p], table_chunks()
    parse = text_parse_options(p, delimiter)  # the dialect read_observations would use

    def open_csv():
        try:
            return csv.open_csv(p, parse_options=parse, convert_options=csv.ConvertOptions(strings_can_be_null=True))
        except (pa.ArrowInvalid, OSError) as e:
            raise Prom3eError(f"{p}: not a readable table ({str(e).splitlines()[0]})") from None

    schema = open_csv().schema

    def csv_chunks() -> Iterator[tuple[int, Callable[[], pa.Table]]]:
        reader, pending, first, n = open_csv(), [], 0, 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise Prom3eError(f"{p}: unreadable after row {first + n} ({str(e).splitlines()[0]}); "
                                  f"a column's type is guessed from the file's start: convert the file "
                                  f"to Parquet, or fix the cell") from None
            pending.append(batch)
            n += batch.num_rows
            while n >= rows:
                t = pa.Table.from_batches(pending, schema)
                head, rest = t.slice(0, rows), t.slice(rows)
                yield first, (lambda c=head: c)
                pending, first, n = rest.to_batches(), first + rows, n - rows
        if n:
            t = pa.Table.from_batches(pending, schema)
            yield first, (lambda c=t: c)
        elif first == 0:
            raise Prom3eError(f"{p}: no observations")

    return schema, [p], csv_chunks()


def _check_ids(t: pa.Table, spec: EmbedSpec, source: str, first: int) -> None:
    if spec.id_column is not None:
        check_ids(t, spec.id_column, source, first)


def embed_parts(observations: str | os.PathLike, spec: EmbedSpec, out: str | os.PathLike,
                device: str = "cpu", restart: bool = False, progress: bool = True,
                part_rows: int = DEFAULT_PART_ROWS, delimiter: str | None = None,
                encoding: str | None = None) -> EmbedSummary | None:
    """Embed the observations into the folder ``out`` (see the module docstring). Under
    torchrun every rank calls this; rank 0 returns the summary, the others ``None``."""
    from prom3e.runtime import progress_bar

    if part_rows < 1:
        raise Prom3eError(f"--part-rows must be ≥ 1, got {part_rows}")
    device = resolve_device(device)
    rank, world = distributed.init(device)
    device = distributed.local_device(device)
    obs_path = Path(observations)
    schema, files, chunks = observation_chunks(obs_path, part_rows, delimiter, encoding)
    keep = _check_columns(schema.empty_table(), spec, str(obs_path))
    names = [m.name for m in spec.modalities]
    kinds = [encoder_info(m.encoder).input_kind for m in spec.modalities]
    base = obs_path if obs_path.is_dir() else obs_path.parent
    roots = [base / (m.root or "") for m in spec.modalities]
    fingerprint = {"spec": spec.fingerprint(), "observations": file_fingerprint(files), "part_rows": part_rows}
    writer = PartWriter(out, fingerprint, restart)
    meta = json.dumps({"fingerprint": spec.fingerprint(), "id_column": spec.id_column,
                       "modalities": [m.__dict__ for m in spec.modalities]}).encode()
    encoders = None
    firsts, embedded = [], 0
    bar = progress_bar(show=progress and rank == 0, unit="row",
                       desc=f"embed (rank {rank}/{world})" if world > 1 else "embed")
    error: Prom3eError | None = None
    try:
        for k, (first, load) in enumerate(chunks):
            firsts.append(first)
            if k % world != rank or writer.done(first):
                continue
            t = load()
            source = f"{obs_path} (rows {first}–{first + t.num_rows - 1})"
            _check_ids(t, spec, source, first)
            if encoders is None:
                encoders = [_build_encoder(m, device) for m in spec.modalities]
            cols, empty = {}, []
            for s in range(0, t.num_rows, spec.batch_size):
                rows = np.arange(s, min(s + spec.batch_size, t.num_rows))
                c, e = embed_rows(t, rows, spec, kinds, roots, encoders)
                for name in names:
                    cols.setdefault(name, []).append(c[name])
                empty.append(e)
                bar.update(len(rows))
            vec = {name: pa.chunked_array(cols[name], pa.list_(pa.float32())).combine_chunks() for name in names}
            pres = np.stack([~np.asarray(vec[m].is_null().to_numpy(zero_copy_only=False)) for m in names], 1)
            emp = np.concatenate(empty)
            counts = {m: {"present": int(pres[:, j].sum()), "empty": int((emp[:, j] & ~pres[:, j]).sum()),
                          "unusable": int((~emp[:, j] & ~pres[:, j]).sum())} for j, m in enumerate(names)}
            rows = np.flatnonzero(pres.any(1))
            idx = pa.array(rows, pa.int64())
            fields = [pa.field(ROW_COLUMN, pa.int64())]
            arrays = [pa.array(rows + first, pa.int64())]
            for c in keep:
                arrays.append(t.column(c).take(idx))
                fields.append(pa.field(c, schema.field(c).type))
            for m, enc in zip(names, encoders, strict=True):
                arrays.append(vec[m].take(idx))
                fields.append(pa.field(m, arrays[-1].type,
                                       metadata={ENCODER_KEY: json.dumps(enc.config()).encode()}))
            part_meta = {META_KEY: meta, COUNTS_KEY: json.dumps(
                {"rows": t.num_rows, "written": len(rows), "counts": counts}).encode()}
            writer.write(first, pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=part_meta)))
            embedded += t.num_rows
    except Prom3eError as e:
        error = e
    finally:
        bar.close()
    if not distributed.all_ok(error is None):
        raise error or Prom3eError(f"{out}: another rank failed (see its message); run again to resume")
    embedded = distributed.all_sum(embedded)
    manifest = writer.finish(firsts)
    distributed.close()
    if rank != 0:
        return None
    summary = EmbedSummary(str(out), embedded=embedded)
    for first in firsts:
        md = pq.read_schema(Path(out) / part_name(first)).metadata or {}
        c = json.loads(md.get(COUNTS_KEY, b"{}"))
        summary.rows += c.get("rows", 0)
        summary.written += c.get("written", 0)
        for m, v in c.get("counts", {}).items():
            acc = summary.counts.setdefault(m, {"present": 0, "empty": 0, "unusable": 0})
            for key in acc:
                acc[key] += v[key]
    summary.reused = summary.rows - embedded
    summary.dropped = summary.rows - summary.written
    if manifest is not None and manifest["rows"] == 0:
        raise Prom3eError(f"{out}: no observation has any usable input")
    return summary
