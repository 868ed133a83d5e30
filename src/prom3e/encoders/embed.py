"""``prom3e embed``: observations (CSV/Parquet) → a feature table (the data contract).

Batched and resumable: each batch of rows is written atomically to ``OUT.parts/`` as soon
as it is embedded, so a killed run loses at most one batch; the next run with the same
spec skips the rows already there (matched by ``id_column``, else by row number), as it
does for rows of an existing ``OUT`` written with the same spec. Missing inputs (empty
cell, unreadable image, unparseable date, …) become nulls and are counted, not fatal;
rows with no usable modality at all are dropped (the contract forbids them), and so is a
modality with no usable value in any row. Photo/sound URLs are never fetched: they count
as unusable, and the summary says how to download them first. Observation files are read
by :mod:`prom3e.data.observations` (CSV/TSV, GBIF downloads, Darwin Core Archives, Parquet).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prom3e.data.observations import is_url, read_observations
from prom3e.data.table import vectors_to_arrow, write_parquet
from prom3e.encoders.base import Encoder
from prom3e.encoders.lists import is_empty_list
from prom3e.encoders.registry import encoder_factory, encoder_info, get_encoder
from prom3e.encoders.spec import EmbedSpec, ModalitySpec
from prom3e.errors import Prom3eError
from prom3e.io import atomic_write, check_output_file

__all__ = ["EmbedSummary", "embed", "encoder_configs", "gather_inputs", "read_observations"]

ROW_COLUMN = "obs_row"
URL_HELP = "docs/STAGE1.md, 'Photos and sounds given as URLs'"
META_KEY = b"prom3e.embed"
ENCODER_KEY = b"prom3e.encoder"


@dataclass
class EmbedSummary:
    out: str
    rows: int = 0
    written: int = 0
    embedded: int = 0
    reused: int = 0
    dropped: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    urls: dict[str, int] = field(default_factory=dict)  # modality → values that are URLs
    left_out: list[str] = field(default_factory=list)  # modalities with no usable value

    def lines(self) -> list[str]:
        out = [f"{self.written} of {self.rows} rows → {self.out} "
               f"({self.embedded} embedded now, {self.reused} reused from an earlier run)"]
        for m, c in self.counts.items():
            out.append(f"  {m}: {c['present']} present, {c['empty']} empty input, "
                       f"{c['unusable']} unusable (unreadable/invalid)")
        for m, n in self.urls.items():
            out.append(f"  {m}: {n} value(s) are URLs, which are never fetched; download the files "
                       f"first ({URL_HELP})")
        if self.left_out:
            out.append(f"  left out {', '.join(self.left_out)}: no row has a usable value")
        if self.dropped:
            out.append(f"  dropped {self.dropped} row(s) with no usable input")
        return out


def _build_encoder(m: ModalitySpec, device: str) -> Encoder:
    opts = dict(m.options)
    params = inspect.signature(encoder_factory(m.encoder)).parameters
    kind = encoder_info(m.encoder).input_kind
    if kind == "vector" and "n_inputs" in params and len(m.columns) > 1:
        opts.setdefault("n_inputs", len(m.columns))
    if "device" in params:
        opts.setdefault("device", device)
    try:
        enc = get_encoder(m.encoder, **opts)
        enc.prepare()
    except Prom3eError as e:
        raise Prom3eError(f"modality '{m.name}': {e}") from None
    return enc


def _column(table: pa.Table, name: str, rows: np.ndarray) -> list[Any]:
    return table.column(name).take(pa.array(rows, pa.int64())).to_pylist()


def _clean(v: Any) -> Any:
    """Empty strings and NaN floats are empty cells."""
    if isinstance(v, str) and not v.strip():
        return None
    if isinstance(v, float) and v != v:
        return None
    return v


def gather_inputs(table: pa.Table, m: ModalitySpec, kind: str, rows: np.ndarray,
                  root: Path) -> list[Any]:
    """One modality's raw inputs for the given rows; ``None`` marks an empty input."""
    cols = [[_clean(v) for v in _column(table, c, rows)] for c in m.columns]
    if kind == "text":
        if m.template is not None:
            out: list[Any] = []
            for vals in zip(*cols, strict=True):
                if all(v is None for v in vals):
                    out.append(None)
                    continue
                d = {c: "" if v is None else str(v) for c, v in zip(m.columns, vals, strict=True)}
                s = " ".join(m.template.format_map(d).replace("()", " ").split())
                out.append(s or None)
            return out
        return [" ".join(str(v) for v in vals if v is not None) or None
                for vals in zip(*cols, strict=True)]
    if kind == "list":
        return [None if v is None or is_empty_list(v) else v for v in cols[0]]
    if kind in ("image", "audio"):  # URLs are never fetched (counted by _assemble)
        return [None if v is None or is_url(v) else str(root / str(v)) for v in cols[0]]
    if kind == "latlon":
        return [None if a is None or b is None else (a, b) for a, b in zip(*cols, strict=True)]
    if kind == "vector":
        if len(cols) == 1:
            return [None if v is None else (v if isinstance(v, list) else [v]) for v in cols[0]]
        return [None if any(v is None for v in vals) else list(vals)
                for vals in zip(*cols, strict=True)]
    return cols[0]


def embed_rows(table: pa.Table, rows: np.ndarray, spec: EmbedSpec, kinds: list[str], roots: list[Path],
               encoders: list[Encoder]) -> tuple[dict[str, pa.Array], np.ndarray]:
    """Embed every modality for ``rows`` of ``table``: ``{name: list<float32> column}`` (null
    where unusable) and ``bool[len(rows), M]``, true where the input cell was empty."""
    cols, empty = {}, np.zeros((len(rows), len(spec.modalities)), bool)
    for j, (m, kind, root, enc) in enumerate(zip(spec.modalities, kinds, roots, encoders, strict=True)):
        inputs = gather_inputs(table, m, kind, rows, root)
        filled = [i for i, v in enumerate(inputs) if v is not None]
        empty[:, j] = [v is None for v in inputs]
        x = np.zeros((len(rows), enc.dim), np.float32)
        ok = np.zeros(len(rows), bool)
        if filled:
            x[filled], ok[filled] = enc.encode_masked([inputs[i] for i in filled])
        cols[m.name] = vectors_to_arrow(x, ok)
    return cols, empty


def check_ids(table: pa.Table, id_column: str, source: str, first: int = 0) -> pa.Array:
    """The id column, refused in one line when a value is empty or repeated (``first``: the
    row number of the table's first row in its file, for the message)."""
    col = table.column(id_column).combine_chunks()
    if col.null_count:
        r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise Prom3eError(f"{source}: id column '{id_column}' is empty at row {first + r}")
    if len(pc.unique(col)) != len(col):
        vc = pc.value_counts(col)
        dup = vc.field("values").filter(pc.greater(vc.field("counts"), 1))[0].as_py()
        raise Prom3eError(f"{source}: id column '{id_column}' repeats the value {dup!r}")
    return col


def _keys(table: pa.Table, spec: EmbedSpec, source: str) -> pa.Array:
    if spec.id_column is None:
        return pa.array(np.arange(table.num_rows), pa.int64())
    return check_ids(table, spec.id_column, source)


def _check_columns(table: pa.Table, spec: EmbedSpec, source: str) -> list[str]:
    have = table.column_names
    for m in spec.modalities:
        for c in m.columns:
            if c not in have:
                raise Prom3eError(f"{source}: no column '{c}' (needed by modality '{m.name}'; "
                                  f"columns: {', '.join(have)})")
    keep = list(have if spec.keep is None else spec.keep)
    for c in keep:
        if c not in have:
            raise Prom3eError(f"{source}: no column '{c}' to keep (columns: {', '.join(have)})")
    if spec.id_column is not None:
        if spec.id_column not in have:
            raise Prom3eError(f"{source}: no id column '{spec.id_column}'")
        if spec.id_column not in keep:
            keep.insert(0, spec.id_column)
    for m in spec.modalities:
        if m.name in keep or m.name == ROW_COLUMN:
            raise Prom3eError(f"{source}: modality name '{m.name}' clashes with a column; "
                              f"rename it in the spec or leave the column out of 'keep'")
    return [c for c in keep if c != ROW_COLUMN]


class _PartStore:
    """``OUT.parts/``: ``state.json`` (spec fingerprint) and one Parquet file per batch."""

    def __init__(self, out: Path, fingerprint: str, restart: bool) -> None:
        self.dir = out.with_name(out.name + ".parts")
        state = self.dir / "state.json"
        if self.dir.exists() and restart:
            shutil.rmtree(self.dir)
        if self.dir.exists():
            try:
                old = json.loads(state.read_text()).get("fingerprint")
            except (OSError, ValueError):
                old = None
            if old != fingerprint:
                raise Prom3eError(f"{self.dir}: holds a partial run of a different spec; "
                                  f"pass --restart to discard it")
        else:
            self.dir.mkdir(parents=True)
            atomic_write(state, lambda tmp: Path(tmp).write_text(
                json.dumps({"fingerprint": fingerprint})))

    def read(self) -> pa.Table | None:
        files = sorted(self.dir.glob("part-*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files]) if files else None

    def write(self, first_row: int, table: pa.Table) -> None:
        atomic_write(self.dir / f"part-{first_row:09d}.parquet",
                     lambda tmp: pq.write_table(table, tmp))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _previous_output(out: Path, fingerprint: str, key_name: str,
                     names: list[str]) -> pa.Table | None:
    """Rows of an existing output written with the same spec (for incremental runs)."""
    if not out.exists():
        return None
    try:
        schema = pq.read_schema(out)
        meta = json.loads((schema.metadata or {}).get(META_KEY, b"{}"))
        if meta.get("fingerprint") != fingerprint:
            return None
        have = [m for m in names if m in schema.names]
        t = pq.read_table(out, columns=[key_name, *have])
    except (pa.ArrowInvalid, OSError, ValueError, KeyError):
        return None
    t = t.rename_columns(["__key", *have])
    for m in names:  # a modality left out of that output had no usable value: all null
        if m not in have:
            t = t.append_column(m, pa.nulls(t.num_rows))
    return t.select(["__key", *names])


def embed(observations: str | os.PathLike, spec: EmbedSpec, out: str | os.PathLike,
          device: str = "cpu", restart: bool = False, progress: bool = True,
          delimiter: str | None = None, encoding: str | None = None, overwrite: bool = False) -> EmbedSummary:
    """Embed every modality of the spec for every observation; write ``out`` atomically.

    ``delimiter``/``encoding`` override what the file's extension (or a Darwin Core
    Archive's meta.xml) implies. An existing ``out`` written with the same spec is updated
    (its rows are reused); any other existing file is refused unless ``overwrite``; an
    input is never replaced.
    """
    from prom3e.runtime import progress_bar

    obs_path, out = Path(observations), Path(out)
    same_spec = _previous_output(out, spec.fingerprint(), spec.id_column or ROW_COLUMN,
                                 [m.name for m in spec.modalities]) is not None
    check_output_file(out, inputs=[obs_path, spec.source], overwrite=overwrite or same_spec)
    kinds = [encoder_info(m.encoder).input_kind for m in spec.modalities]
    # inputs that are not numbers are read as text, as written (dates keep their time zone)
    text_columns = {c for m, k in zip(spec.modalities, kinds, strict=True)
                    if k not in ("latlon", "vector") for c in m.columns}
    table = read_observations(obs_path, delimiter, encoding, text_columns)
    keep = _check_columns(table, spec, str(obs_path))
    keys = _keys(table, spec, str(obs_path))
    n = table.num_rows
    names = [m.name for m in spec.modalities]
    roots = [obs_path.parent / (m.root or "") for m in spec.modalities]
    fingerprint = spec.fingerprint()
    key_name = spec.id_column or ROW_COLUMN

    store = _PartStore(out, fingerprint, restart)
    previous = _previous_output(out, fingerprint, key_name, names)
    done_keys: set = set()
    for t in (previous, store.read()):
        if t is not None:
            done_keys.update(t.column("__key").to_pylist())
    key_list = keys.to_pylist()
    todo = np.array([i for i, k in enumerate(key_list) if k not in done_keys], np.int64)
    summary = EmbedSummary(str(out), rows=n, reused=n - len(todo))

    encoders = [_build_encoder(m, device) for m in spec.modalities]
    bar = progress_bar(total=len(todo), show=progress and bool(len(todo)), unit="row", desc="embed")
    for s in range(0, len(todo), spec.batch_size):
        rows = todo[s : s + spec.batch_size]
        cols = {"__key": keys.take(pa.array(rows)), **embed_rows(table, rows, spec, kinds, roots, encoders)[0]}
        store.write(int(rows[0]), pa.table(cols))
        summary.embedded += len(rows)
        bar.update(len(rows))
    bar.close()

    encoder_cfg = {m.name: enc.config() for m, enc in zip(spec.modalities, encoders, strict=True)}
    result = _assemble(table, keys, keep, spec, kinds, roots, out, fingerprint, encoder_cfg,
                       [previous, store.read()], summary)
    write_parquet(result, out)
    store.remove()
    return summary


def _assemble(table: pa.Table, keys: pa.Array, keep: Sequence[str], spec: EmbedSpec,
              kinds: list[str], roots: list[Path], out: Path, fingerprint: str,
              encoder_cfg: dict, parts: list[pa.Table | None], summary: EmbedSummary) -> pa.Table:
    names = [m.name for m in spec.modalities]
    parts = [p.select(["__key", *names]) for p in parts if p is not None]
    # an earlier output and the parts may overlap (a run killed after writing OUT): dedupe
    schema = pa.schema([pa.field("__key", parts[-1].schema.field("__key").type),
                        *(pa.field(m, pa.list_(pa.float32())) for m in names)])
    cache = pa.concat_tables([p.cast(schema) for p in parts])
    index: dict[Any, int] = {}
    for i, k in enumerate(cache.column("__key").to_pylist()):
        index[k] = i
    take = pa.array([index.get(k) for k in keys.to_pylist()], pa.int64())
    vec = {m: cache.column(m).take(take).combine_chunks() for m in names}
    present = np.stack([~np.asarray(vec[m].is_null().to_numpy(zero_copy_only=False))
                        for m in names], 1)
    all_rows = np.arange(table.num_rows)
    for j, (m, kind, root) in enumerate(zip(spec.modalities, kinds, roots, strict=True)):
        empty = np.array([v is None for v in gather_inputs(table, m, kind, all_rows, root)])
        if kind in ("image", "audio"):
            urls = np.array([is_url(v) for v in _column(table, m.columns[0], all_rows)], bool)
            empty &= ~urls
            if urls.any():
                summary.urls[m.name] = int(urls.sum())
        summary.counts[m.name] = {"present": int(present[:, j].sum()),
                                  "empty": int((empty & ~present[:, j]).sum()),
                                  "unusable": int((~empty & ~present[:, j]).sum())}
    summary.left_out = [m for j, m in enumerate(names) if not present[:, j].any()]
    rows = np.flatnonzero(present.any(1))
    summary.dropped = int(table.num_rows - len(rows))
    summary.written = len(rows)
    if not len(rows):
        raise Prom3eError(f"{out}: no observation has any usable input; nothing to write")
    idx = pa.array(rows, pa.int64())
    fields, arrays = [pa.field(ROW_COLUMN, pa.int64())], [pa.array(rows, pa.int64())]
    for c in keep:
        col = table.column(c).take(idx)
        fields.append(pa.field(c, col.type))
        arrays.append(col)
    for m in names:
        if m in summary.left_out:
            continue
        arrays.append(vec[m].take(idx))
        fields.append(pa.field(m, arrays[-1].type,
                               metadata={ENCODER_KEY: json.dumps(encoder_cfg[m]).encode()}))
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(
        {"fingerprint": fingerprint, "id_column": spec.id_column,
         "modalities": [m.__dict__ for m in spec.modalities], "left_out": summary.left_out}).encode()})
    return pa.Table.from_arrays(arrays, schema=schema)


def encoder_configs(path: str | os.PathLike) -> dict[str, dict]:
    """The per-modality encoder configs ``embed`` recorded in a feature table (may be empty)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid):
        return {}
    out = {}
    for f in schema:
        if f.metadata and ENCODER_KEY in f.metadata:
            out[f.name] = json.loads(f.metadata[ENCODER_KEY])
    return out
