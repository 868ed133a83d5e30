"""Tables larger than memory: a directory (or glob) of Parquet parts read as one dataset.

>>> ds = Dataset("features/")             # every *.parquet under it, or the parts a manifest lists
>>> for first_row, chunk in ds.chunks(65536):  # validated ModalTables, one at a time
...     ...

Parts are read with :mod:`pyarrow.dataset`, one row group at a time, so memory is bounded by
the chunk (and the largest row group), not by the table. Rows are numbered across parts in
part order (file-name order, or the manifest's); every chunk is validated with the same
rules and messages as :func:`prom3e.data.table.read_table`, naming the part file and the
global row. Checks that need the whole table (a modality with no value anywhere, an empty
table) run when the dataset is opened; the others run on the rows as they are read.
"""

from __future__ import annotations

import glob as globlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from prom3e.data.table import (
    ModalTable,
    _is_list,
    _modality_array,
    check_rows,
    modality_columns,
    read_table,
)
from prom3e.errors import Prom3eError

MANIFEST = "_manifest.json"  # written last by prom3e's part writers: the list of parts
STATE = "_state.json"  # present while a prom3e writer has not finished


def is_dataset(path: str | os.PathLike) -> bool:
    """True for a directory of parts or a glob pattern (not for one file)."""
    p = str(path)
    return Path(p).is_dir() or (not Path(p).exists() and any(c in p for c in "*?["))


def part_files(path: str | os.PathLike) -> list[Path]:
    """The Parquet parts of a directory (its manifest's, else every ``*.parquet`` below it,
    skipping names that start with ``_`` or ``.``) or of a glob pattern, in order; a single
    file is a dataset of one part."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        manifest = p / MANIFEST
        if manifest.exists():
            try:
                parts = json.loads(manifest.read_text())["parts"]
                files = [p / part["file"] for part in parts]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise Prom3eError(f"{manifest}: unreadable manifest ({e})") from None
            gone = [f for f in files if not f.exists()]
            if gone:
                raise Prom3eError(f"{p}: part {gone[0].name} listed in {MANIFEST} is missing")
            return files
        if (p / STATE).exists():
            raise Prom3eError(f"{p}: an unfinished output (no {MANIFEST} yet); run the command that "
                              f"writes it again to finish it")
        files = sorted(f for f in p.rglob("*.parquet")
                       if not any(s.startswith(("_", ".")) for s in f.relative_to(p).parts))
        if not files:
            raise Prom3eError(f"{p}: no Parquet parts (*.parquet) in this folder")
        return files
    files = sorted(Path(f) for f in globlib.glob(str(path), recursive=True) if Path(f).is_file())
    if not files:
        raise Prom3eError(f"{path}: no file matches")
    return files


@dataclass(frozen=True)
class Unit:
    """One row group: the unit of reading (and of shuffling, in training)."""

    part: int  # index into Dataset.files
    group: int  # row group within the part
    start: int  # global number of its first row
    rows: int


class Parts:
    """Parquet parts with one schema, read as one table by row groups (any columns)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self.files = part_files(path)
        root = Path(path) if Path(path).is_dir() else Path(os.path.commonpath([f.parent for f in self.files]))
        self.names = [str(f.relative_to(root)) if f.is_relative_to(root) else str(f) for f in self.files]
        try:
            self._frags = list(pads.dataset([str(f) for f in self.files], format="parquet").get_fragments())
            schemas = [f.physical_schema for f in self._frags]
        except (pa.ArrowInvalid, OSError) as e:
            raise Prom3eError(f"{self.path}: a part is not a readable Parquet file "
                              f"({str(e).splitlines()[0]})") from None
        self.schema = schemas[0]
        for name, s in zip(self.names, schemas, strict=True):
            if [(f.name, f.type) for f in s] != [(f.name, f.type) for f in self.schema]:
                raise Prom3eError(f"{self.path}: part {name} has columns {_describe(s)}, unlike part "
                                  f"{self.names[0]} ({_describe(self.schema)})")
        self.units: list[Unit] = []
        start = 0
        for i, frag in enumerate(self._frags):
            md = frag.metadata
            for g in range(md.num_row_groups):
                n = md.row_group(g).num_rows
                if n:
                    self.units.append(Unit(i, g, start, n))
                    start += n
        self.num_rows = start
        self._starts = np.array([u.start for u in self.units], np.int64)

    def source(self, part: int) -> str:
        """How messages name a part: ``DIR (part NAME)``."""
        return f"{self.path} (part {self.names[part]})"

    def read_unit(self, u: Unit, columns: Sequence[str] | None = None) -> pa.Table:
        """One row group as an Arrow table (only ``columns`` when given)."""
        try:
            return self._frags[u.part].subset(row_group_ids=[u.group]).to_table(
                columns=list(columns) if columns is not None else None)
        except (pa.ArrowInvalid, OSError) as e:
            raise Prom3eError(f"{self.source(u.part)}: unreadable ({str(e).splitlines()[0]})") from None

    def units_for(self, start: int, stop: int) -> list[Unit]:
        """The row groups that hold rows ``[start, stop)``."""
        if stop <= start:
            return []
        a = int(np.searchsorted(self._starts, start, side="right")) - 1
        b = int(np.searchsorted(self._starts, stop, side="left"))
        return self.units[max(a, 0):b]

    def cast_like(self, table: pa.Table) -> pa.Table:
        """``table`` with every metadata column this dataset also has cast to the dataset's
        type (so that parts written chunk by chunk share one schema, e.g. a column null in
        one chunk)."""
        meta = {f.name: f.type for f in self.schema if not _is_list(f.type)}
        return pa.table({c: table.column(c).cast(meta[c]) if c in meta else table.column(c)
                         for c in table.column_names}, metadata=table.schema.metadata)

    def read_rows(self, start: int, stop: int, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows ``[start, stop)`` as one Arrow table (unvalidated)."""
        pieces = []
        for u in self.units_for(start, stop):
            a, b = max(start, u.start) - u.start, min(stop, u.start + u.rows) - u.start
            pieces.append(self.read_unit(u, columns).slice(a, b - a))
        if not pieces:
            return self.schema.empty_table() if columns is None else self.schema.empty_table().select(columns)
        return pa.concat_tables(pieces)


class Dataset(Parts):
    """Parts that follow the data contract, read as one validated table."""

    def __init__(self, path: str | os.PathLike, modalities: Sequence[str] | None = None) -> None:
        super().__init__(path)
        if self.num_rows == 0:
            raise Prom3eError(f"{self.path}: the table is empty")
        self.modalities = modality_columns(self.schema, self.path, modalities)
        self.meta_columns = [f.name for f in self.schema if not _is_list(f.type)]
        self._dims: list[int] | None = None

    def __len__(self) -> int:
        return self.num_rows

    @property
    def dims(self) -> list[int]:
        """Each modality's dim: from a fixed-size list type, else its first non-null value."""
        if self._dims is None:
            dims: dict[str, int] = {}
            for m in self.modalities:
                t = self.schema.field(m).type
                if pa.types.is_fixed_size_list(t):
                    dims[m] = t.list_size
            todo = [m for m in self.modalities if m not in dims]
            for u in self.units:
                if not todo:
                    break
                t = self.read_unit(u, todo)
                for m in list(todo):
                    for chunk in t.column(m).chunks:
                        first = pc.index(chunk.is_valid(), True).as_py()
                        if first >= 0:
                            dims[m] = len(chunk[first].values)
                            todo.remove(m)
                            break
            if todo:
                raise Prom3eError(f"{self.path}: modality column '{todo[0]}' has no non-null value")
            self._dims = [dims[m] for m in self.modalities]
        return self._dims

    # --- reading -------------------------------------------------------------------------
    def convert(self, t: pa.Table, u: Unit, offset: int = 0, meta: Sequence[str] = ()) -> ModalTable:
        """Validate and convert rows of unit ``u`` (``offset``: the first row's position in it)."""
        src, first = self.source(u.part), u.start + offset
        feats, pres = [], []
        for name, dim in zip(self.modalities, self.dims, strict=True):
            f, p = _modality_array(t.column(name), name, src, dim, first)
            feats.append(f)
            pres.append(p)
        present = np.stack(pres, 1) if pres else np.zeros((t.num_rows, 0), bool)
        check_rows(present, src, first)
        return ModalTable(list(self.modalities), feats, present,
                          {c: t.column(c).to_numpy(zero_copy_only=False) for c in meta}, self.path)

    def _meta(self, meta: bool | Sequence[str]) -> list[str]:
        if meta is True:
            return list(self.meta_columns)
        if meta is False:
            return []
        unknown = [c for c in meta if c not in self.meta_columns]
        if unknown:
            raise Prom3eError(f"{self.path}: no column '{unknown[0]}' (metadata columns: "
                              f"{', '.join(self.meta_columns) or 'none'})")
        return list(meta)

    def table(self, start: int, stop: int, meta: bool | Sequence[str] = True) -> ModalTable:
        """Rows ``[start, stop)``, validated, as one :class:`ModalTable`."""
        cols = self._meta(meta)
        pieces = []
        for u in self.units_for(start, stop):
            a, b = max(start, u.start) - u.start, min(stop, u.start + u.rows) - u.start
            t = self.read_unit(u, [*self.modalities, *cols]).slice(a, b - a)
            pieces.append(self.convert(t, u, a, cols))
        return concat(pieces, self)

    def take(self, rows: np.ndarray, meta: bool | Sequence[str] = True) -> ModalTable:
        """The given global rows (any order; repeats allowed), validated, one row group at a time."""
        rows = np.asarray(rows, np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise Prom3eError(f"{self.path}: row numbers out of range (the table has {self.num_rows} rows)")
        cols = self._meta(meta)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        unit_of = np.searchsorted(self._starts, sorted_rows, side="right") - 1
        pieces = []
        for ui in np.unique(unit_of):
            u = self.units[int(ui)]
            local = sorted_rows[unit_of == ui] - u.start
            t = self.read_unit(u, [*self.modalities, *cols]).take(pa.array(local))
            piece = self.convert(t, u, 0, cols)
            pieces.append(piece)
        out = concat(pieces, self)
        return out.take(np.argsort(order, kind="stable")) if len(out) else out

    def chunks(self, rows: int, meta: bool | Sequence[str] = True, start: int = 0,
               stop: int | None = None) -> Iterator[tuple[int, ModalTable]]:
        """Validated chunks of ``rows`` rows (boundaries at multiples of ``rows``): (first row, table)."""
        if rows < 1:
            raise Prom3eError(f"chunk rows must be ≥ 1, got {rows}")
        stop = self.num_rows if stop is None else stop
        for a in range(start, stop, rows):
            yield a, self.table(a, min(a + rows, stop), meta)

    def column(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """One modality over every row: (float32 ``[P, d]`` of the rows where it is present,
        their global row numbers ``int64[P]``). Reads that column only."""
        if name not in self.modalities:
            raise Prom3eError(f"{self.path}: no modality column '{name}' (have: {', '.join(self.modalities)})")
        dim = self.dims[self.modalities.index(name)]
        feats, rows = [], []
        for u in self.units:
            f, p = _modality_array(self.read_unit(u, [name]).column(name), name, self.source(u.part), dim, u.start)
            keep = np.flatnonzero(p)
            feats.append(f[keep])
            rows.append(keep + u.start)
        return np.concatenate(feats), np.concatenate(rows)

    def meta(self, columns: Sequence[str]) -> dict[str, pa.ChunkedArray]:
        """Whole metadata columns (small: labels, splits) as Arrow arrays."""
        cols = self._meta(columns)
        t = pads.dataset([str(f) for f in self.files], format="parquet").to_table(columns=cols)
        return {c: t.column(c) for c in cols}


def concat(pieces: list[ModalTable], ds: Dataset) -> ModalTable:
    """Stack validated pieces of one dataset into one :class:`ModalTable`."""
    if not pieces:
        return ModalTable(list(ds.modalities), [np.zeros((0, d), np.float32) for d in ds.dims],
                          np.zeros((0, len(ds.modalities)), bool), {}, ds.path)
    if len(pieces) == 1:
        return pieces[0]
    m = len(pieces[0].modalities)
    return ModalTable(list(pieces[0].modalities),
                      [np.concatenate([p.features[i] for p in pieces]) for i in range(m)],
                      np.concatenate([p.present for p in pieces]),
                      {k: np.concatenate([p.meta[k] for p in pieces]) for k in pieces[0].meta},
                      ds.path)


def open_table(path: str | os.PathLike, modalities: Sequence[str] | None = None) -> ModalTable | Dataset:
    """A single file (or ``.npy`` dict) → a :class:`ModalTable` in memory; a directory or glob
    of parts → a :class:`Dataset` to stream."""
    if is_dataset(path):
        return Dataset(path, modalities)
    return read_table(path, modalities)


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)
