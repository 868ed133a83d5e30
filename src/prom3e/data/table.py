"""The Parquet data contract: read, validate, write, import.

A column is a *modality* when its type is a list (or fixed-size list) of floats; every
non-null value has the same length (the modality's dim) and null means missing. Every
other column is metadata. Readers fail with a :class:`Prom3eError` naming the file,
column and row.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prom3e.data.vectors import check_vectors
from prom3e.errors import Prom3eError
from prom3e.io import atomic_write  # write_parquet's; importable from here too


@dataclass
class ModalTable:
    """Per-modality feature arrays plus a presence mask and metadata columns.

    ``features[m]`` is ``float32[N, dims[m]]`` with zeros where the modality is missing;
    ``present`` is ``bool[N, M]``; ``meta`` maps metadata column names to arrays.
    """

    modalities: list[str]
    features: list[np.ndarray]
    present: np.ndarray
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if len(self.modalities) != len(self.features):
            raise Prom3eError(f"{self.source}: {len(self.modalities)} names, {len(self.features)} arrays")
        if len(set(self.modalities)) != len(self.modalities):
            raise Prom3eError(f"{self.source}: duplicate modality names {self.modalities}")
        self.present = np.asarray(self.present, dtype=bool)
        n = self.present.shape[0]
        for name, f in zip(self.modalities, self.features, strict=True):
            if f.ndim != 2 or f.shape[0] != n:
                raise Prom3eError(f"{self.source}: modality '{name}' has shape {f.shape}, want ({n}, dim)")

    @property
    def dims(self) -> list[int]:
        return [int(f.shape[1]) for f in self.features]

    def __len__(self) -> int:
        return int(self.present.shape[0])

    def index(self, name: str) -> int:
        try:
            return self.modalities.index(name)
        except ValueError:
            raise Prom3eError(
                f"{self.source}: unknown modality '{name}' (have: {', '.join(self.modalities)})"
            ) from None

    def feature(self, name: str) -> np.ndarray:
        return self.features[self.index(name)]

    def padded(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """``float32[B, M, Dmax]``: the rows' features, zero-padded to the largest dim."""
        rows = slice(None) if rows is None else rows
        n = len(np.arange(len(self))[rows])
        out = np.zeros((n, len(self.modalities), max(self.dims)), dtype=np.float32)
        for m, f in enumerate(self.features):  # M copies of a block: not a per-sample loop
            out[:, m, : f.shape[1]] = f[rows]
        return out

    def take(self, rows: np.ndarray) -> ModalTable:
        """A new table with the given rows (any order, repeats allowed)."""
        rows = np.asarray(rows)
        return ModalTable(
            list(self.modalities),
            [f[rows] for f in self.features],
            self.present[rows],
            {k: v[rows] for k, v in self.meta.items()},
            self.source,
        )

    def select(self, names: Sequence[str]) -> ModalTable:
        """A new table with only the named modalities, in that order (rows kept)."""
        idx = [self.index(n) for n in names]
        return ModalTable(
            [self.modalities[i] for i in idx],
            [self.features[i] for i in idx],
            self.present[:, idx],
            dict(self.meta),
            self.source,
        )

    def label(self, column: str) -> np.ndarray:
        if column not in self.meta:
            raise Prom3eError(
                f"{self.source}: no label column '{column}' (metadata columns: "
                f"{', '.join(self.meta) or 'none'})"
            )
        return self.meta[column]

    def check_values(self) -> ModalTable:
        """Refuse NaN/inf or overflowing vectors in present rows (see :func:`check_vectors`);
        tables read from files are checked already, tables built in memory are not."""
        for name, f, p in zip(self.modalities, self.features, self.present.T, strict=True):
            rows = np.flatnonzero(p)
            if rows.size:
                check_vectors(f, name, self.source, rows, select=True)
        return self

    def check_schema(self, modalities: Sequence[str], dims: Sequence[int]) -> ModalTable:
        """Match this table to a model's schema by name; return it reordered to that schema.

        Modalities the model knows but the table lacks become all-missing; a table modality
        the model does not know, or one with the wrong dim, is an error.
        """
        known = dict(zip(modalities, dims, strict=True))
        for name, dim in zip(self.modalities, self.dims, strict=True):
            if name not in known:
                raise Prom3eError(
                    f"{self.source}: unknown modality '{name}' (the model knows: {', '.join(modalities)})"
                )
            if dim != known[name]:
                raise Prom3eError(
                    f"{self.source}: column '{name}' has dim {dim}, the model expects {known[name]}"
                )
        feats, pres = [], []
        for name, dim in known.items():
            if name in self.modalities:
                i = self.modalities.index(name)
                feats.append(self.features[i])
                pres.append(self.present[:, i])
            else:
                feats.append(np.zeros((len(self), dim), np.float32))
                pres.append(np.zeros(len(self), bool))
        return ModalTable(list(known), feats, np.stack(pres, 1), dict(self.meta), self.source)


def _is_float_list(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)
    return False


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _modality_array(col: pa.ChunkedArray | pa.Array, name: str, source: str, dim: int | None = None,
                    offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One list column → (float32[N, d] with zeros where null, bool[N] present).

    ``dim``: the modality's dim when already known (a later chunk of a dataset; then a chunk
    without any value is allowed); ``offset``: added to row numbers in messages.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    arr = col
    n = len(arr)
    present = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if not present.any():
        if dim is None:
            raise Prom3eError(f"{source}: modality column '{name}' has no non-null value")
        return np.zeros((n, dim), np.float32), present
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    lengths = np.where(present, np.nan_to_num(lengths.astype(float), nan=-1), -1).astype(np.int64)
    dim = int(lengths[present][0]) if dim is None else dim
    bad = np.flatnonzero(present & (lengths != dim))
    if bad.size:
        r = int(bad[0])
        raise Prom3eError(
            f"{source}: column '{name}' row {r + offset} has length {lengths[r]}, expected {dim} "
            f"(as in its first non-null row); {bad.size} row(s) differ"
        )
    if dim == 0:
        raise Prom3eError(f"{source}: column '{name}' holds empty lists")
    rows = np.flatnonzero(present)
    values = pc.list_flatten(arr.filter(pa.array(present)))
    if values.null_count:
        flat = np.asarray(values.is_null().to_numpy(zero_copy_only=False))
        r = int(rows[np.flatnonzero(flat)[0] // dim])
        raise Prom3eError(f"{source}: column '{name}' row {r + offset} has a null element inside its vector")
    dense = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    check_vectors(dense, name, source, rows + offset)
    out = np.zeros((n, dim), dtype=np.float32)
    out[rows] = dense
    return out, present


def modality_columns(schema: pa.Schema, source: str, modalities: Sequence[str] | None = None) -> list[str]:
    """The modality columns of a schema (or the requested ones), checked against the contract."""
    names = [f.name for f in schema if _is_list(f.type)]
    for f in schema:
        if _is_list(f.type) and not _is_float_list(f.type):
            raise Prom3eError(f"{source}: column '{f.name}' is a list of {f.type.value_type}, not numbers")
    if modalities is not None:
        missing = [m for m in modalities if m not in names]
        if missing:
            raise Prom3eError(f"{source}: no modality column(s) {', '.join(missing)} (have: {', '.join(names)})")
        names = list(modalities)
    if not names:
        raise Prom3eError(f"{source}: no modality columns (lists of floats) found")
    return names


def check_rows(present: np.ndarray, source: str, offset: int = 0) -> None:
    """Every row must have at least one modality present."""
    empty = np.flatnonzero(~present.any(1))
    if empty.size:
        raise Prom3eError(
            f"{source}: row {int(empty[0]) + offset} has no modality present ({empty.size} such row(s))"
        )


def metadata_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """The non-list columns of an Arrow table as NumPy arrays."""
    return {
        f.name: table.column(f.name).to_numpy(zero_copy_only=False)
        for f in table.schema
        if not _is_list(f.type)
    }


def from_arrow(table: pa.Table, source: str = "<arrow>", modalities: Sequence[str] | None = None,
               drop_empty: bool = False) -> ModalTable:
    """Validate an Arrow table against the contract and convert it.

    ``modalities``: read only these modality columns (others are ignored); ``drop_empty``:
    leave out rows with none of them instead of failing."""
    if table.num_rows == 0:
        raise Prom3eError(f"{source}: the table is empty")
    names = modality_columns(table.schema, source, modalities)
    feats, pres = [], []
    for name in names:
        f, p = _modality_array(table.column(name), name, source)
        feats.append(f)
        pres.append(p)
    present = np.stack(pres, 1)
    keep = present.any(1)
    if not drop_empty:
        check_rows(present, source)
    out = ModalTable(names, feats, present, metadata_columns(table), source)
    return out if keep.all() else out.take(np.flatnonzero(keep))


def read_table(path: str | os.PathLike, modalities: Sequence[str] | None = None,
               drop_empty: bool = False) -> ModalTable:
    """Read and validate a Parquet table (or a reference ``.npy`` dict, via :func:`import_npy`);
    ``modalities`` and ``drop_empty`` as in :func:`from_arrow` (Parquet only)."""
    path = Path(path)
    if not path.exists():
        raise Prom3eError(f"{path}: no such file")
    if path.suffix == ".npy":
        return import_npy(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise Prom3eError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    return from_arrow(table, str(path), modalities, drop_empty)


def read_column(path: str | os.PathLike, name: str, meta: bool = False
                ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """One modality column of a Parquet file → (float32 ``[N, d]``, bool ``present[N]``, the
    non-list columns if ``meta``). Unlike :func:`read_table`, rows without it are allowed."""
    path = Path(path)
    if not path.exists():
        raise Prom3eError(f"{path}: no such file")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise Prom3eError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    lists = [f.name for f in schema if _is_list(f.type)]
    if name not in lists:
        raise Prom3eError(f"{path}: no modality column '{name}' (have: {', '.join(lists) or 'none'})")
    if not _is_float_list(schema.field(name).type):
        raise Prom3eError(f"{path}: column '{name}' is a list of {schema.field(name).type.value_type}, not numbers")
    others = [f.name for f in schema if not _is_list(f.type)] if meta else []
    table = pq.read_table(path, columns=[name, *others])
    if table.num_rows == 0:
        raise Prom3eError(f"{path}: the table is empty")
    features, present = _modality_array(table.column(name), name, str(path))
    return features, present, {c: table.column(c).to_numpy(zero_copy_only=False) for c in others}


def to_arrow(t: ModalTable) -> pa.Table:
    cols: dict[str, pa.Array] = {}
    for k, v in t.meta.items():
        cols[k] = pa.array(v)
    for m, name in enumerate(t.modalities):
        cols[name] = vectors_to_arrow(t.features[m], t.present[:, m])
    return pa.table(cols)


def vectors_to_arrow(x: np.ndarray, present: np.ndarray | None = None) -> pa.Array:
    """``float32[N, d]`` (+ presence) → a nullable ``list<float32>`` Arrow column."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    mask = None if present is None else pa.array(~np.asarray(present, bool))
    return pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1)), mask=mask)


def write_parquet(table: pa.Table | ModalTable, path: str | os.PathLike) -> None:
    """Write a Parquet file atomically."""
    if isinstance(table, ModalTable):
        table = to_arrow(table)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


# --- importer for the reference implementation's .npy dict -------------------------------

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles a dict of NumPy arrays and nothing else (no arbitrary code)."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "dict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def import_npy(path: str | os.PathLike) -> ModalTable:
    """Import the reference ``.npy`` dict (``{'image': N×512, 'sat': …}``) safely.

    Rows whose vector is all zeros or NaN are treated as missing (the reference code
    fills absent audio with zeros).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            fmt = np.lib.format
            version = fmt.read_magic(fh)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read_header(fh)
            if dtype.hasobject:
                obj = _ArrayOnlyUnpickler(fh).load()
            else:
                raise Prom3eError(f"{path}: a plain array {shape}, not the reference dict of arrays")
    except (pickle.UnpicklingError, ValueError, EOFError) as e:
        raise Prom3eError(f"{path}: not a reference .npy dict ({e})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict) or not obj:
        raise Prom3eError(f"{path}: expected a non-empty dict of arrays")
    names, feats, pres = [], [], []
    n = None
    for name, arr in obj.items():
        a = np.asarray(arr, dtype=np.float32)
        if a.ndim != 2:
            raise Prom3eError(f"{path}: key '{name}' has shape {a.shape}, want (N, dim)")
        if n is not None and a.shape[0] != n:
            raise Prom3eError(f"{path}: key '{name}' has {a.shape[0]} rows, others {n}")
        n = a.shape[0]
        bad = ~np.isfinite(a).all(1) | (np.abs(a).sum(1) == 0)
        names.append(str(name))
        feats.append(np.where(bad[:, None], 0, a).astype(np.float32))
        pres.append(~bad)
    present = np.stack(pres, 1)
    keep = present.any(1)
    t = ModalTable(names, feats, present, {"row": np.arange(n)}, str(path))
    return t if keep.all() else t.take(np.flatnonzero(keep))
