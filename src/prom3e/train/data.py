"""Where training batches come from: a table in memory, or a dataset of parts streamed from disk.

Both sources have one interface (:class:`BatchSource`); the training loop draws the masks
and runs the steps, a source only says which rows form each batch:

- :class:`InMemorySource` (a :class:`ModalTable`): a seeded random split into train and
  validation rows; each epoch a permutation of the train rows drawn from the loop's
  generator, cut into global batches; under torchrun every rank holds the table, the masks
  are drawn for the whole global batch, and each rank keeps its slice of it.
- :class:`StreamingSource` (a :class:`~prom3e.data.dataset.Dataset`): memory is bounded by
  the shuffle buffer and a row group, not by the table. A row is a validation row when a
  hash of (seed, its global row number) falls below ``val_fraction`` (no permutation of
  all rows is held); the first ``val_cap`` of them, in row order, are read once into
  memory. Row groups are dealt to ranks once (balanced by rows); every epoch each rank
  reads its row groups in a seeded order through a seeded shuffle buffer and yields
  batches of ``batch_size / world`` rows; all ranks run the same number of steps (the
  smallest rank's rows // its batch), so up to a few row groups' worth of rows on the
  larger ranks wait for a later epoch's order to be used.

Determinism: same seed, same parts (same files, same row groups), same buffer size and same
number of ranks ⇒ the same batches in the same order, so ``--resume`` continues exactly.
Changing any of those changes the order (not its distribution).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from prom3e import distributed
from prom3e.data.dataset import Dataset, Unit
from prom3e.data.labels import encode_labels
from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError


@dataclass
class Batch:
    """One step's rows. ``present`` covers every row the masks are drawn for (in memory under
    torchrun: the whole global batch); ``x`` and ``labels`` only this rank's rows, which are
    ``present[mine]``."""

    present: torch.Tensor  # bool [B, M]
    x: torch.Tensor  # float32 [b, M, Dmax]
    labels: torch.Tensor | None  # int64 [b]: equal ids = equal labels
    mine: slice


class BatchSource(Protocol):
    modalities: list[str]
    dims: list[int]
    n_train: int
    n_val: int
    source: str  # where the rows come from, for messages

    def steps_per_epoch(self, batch_size: int) -> int: ...

    def batches(self, epoch: int, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
        """This epoch's batches, in order (``gen``: the loop's generator, seeded per epoch)."""
        ...

    def validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, present)`` of the validation rows the loop scores (at most ``val_cap``)."""
        ...

    def split_record(self) -> dict:
        """What ``split.json`` records about the train/validation split."""
        ...

    def inputs(self) -> list[Path]:
        """The input files (an output must never replace one)."""
        ...

    def fingerprint(self) -> dict:
        """What identifies the training data cheaply: a resumed run must see the same."""
        ...


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split of ``n`` rows."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def label_ids(table: ModalTable, column: str | None) -> np.ndarray | None:
    """Label codes for the loss (−1 = no label: null, NaN or empty is never a class)."""
    return None if column is None else encode_labels(table.label(column))[0]


class InMemorySource:
    """Batches from a table held in memory (the path for tables that fit)."""

    def __init__(self, table: ModalTable, val_fraction: float, val_cap: int, seed: int,
                 label_column: str | None = None, split_column: str | None = None) -> None:
        self.modalities, self.dims = list(table.modalities), list(table.dims)
        self.table, self.label_column, self.source = table, label_column, table.source
        self.rank, self.world = distributed.world_from_env()
        self.seed, self.val_cap = seed, val_cap
        if split_column:  # rows marked 'train' train, 'val' validate, the rest are left out
            part = np.asarray(table.label(split_column)).astype(str)
            self.train_rows, self.val_rows = np.flatnonzero(part == "train"), np.flatnonzero(part == "val")
            if not len(self.train_rows) or not len(self.val_rows):
                raise Prom3eError(f"{table.source}: split column '{split_column}' needs rows marked 'train' and "
                                  "'val'")
        else:
            self.train_rows, self.val_rows = split_rows(len(table), val_fraction, seed)
        self.n_train, self.n_val = len(self.train_rows), len(self.val_rows)
        self.x = torch.from_numpy(table.padded())
        self.present = torch.from_numpy(table.present)
        labels = label_ids(table, label_column)
        self.labels = torch.from_numpy(labels) if labels is not None else None

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, self.n_train // batch_size)

    def batches(self, epoch: int, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
        per_rank = batch_size // self.world
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        order = torch.from_numpy(self.train_rows)[torch.randperm(self.n_train, generator=gen)]
        for i in range(self.steps_per_epoch(batch_size)):
            idx = order[i * batch_size:(i + 1) * batch_size]
            local = idx[mine]
            yield Batch(self.present[idx], self.x[local],
                        self.labels[local] if self.labels is not None else None, mine)

    def validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.val_rows[: self.val_cap]
        return self.x[rows], self.present[rows]

    def split_record(self) -> dict:
        return {"seed": self.seed, "val_rows": self.val_rows.tolist()}

    def inputs(self) -> list[Path]:
        return [Path(self.source)] if Path(self.source).is_file() else []

    def fingerprint(self) -> dict:
        from prom3e.train.checkpoint import table_fingerprint

        return table_fingerprint(self.table, self.label_column)


# --- streaming ---------------------------------------------------------------------------

_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash of each ``uint64``."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def is_validation(rows: np.ndarray, seed: int, val_fraction: float) -> np.ndarray:
    """``bool[len(rows)]``: which global rows are validation rows (a seeded hash, no state)."""
    key = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))
    u = (_mix(np.asarray(rows, np.uint64) ^ key) >> np.uint64(11)).astype(np.float64) / 2.0**53
    return u < val_fraction


def hashed_label_ids(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Label values → ``int64`` ids that are equal exactly when the labels are equal, in any
    chunk and on any rank (a 63-bit hash of the value's text, ≥ 0); a missing label (null,
    NaN or empty, as :func:`~prom3e.data.labels.encode_labels`) is −1, never a class."""
    arr = pc.cast(col, pa.string())
    arr = pc.if_else(pc.or_kleene(pc.equal(arr, ""), pc.equal(arr, "nan")), pa.scalar(None, pa.string()), arr) \
        if pa.types.is_floating(col.type) else pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
    missing = arr.is_null().to_numpy(zero_copy_only=False)
    arr = arr.fill_null("")
    values = pc.unique(arr)
    ids = np.array([int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little") >> 1
                    for v in values.to_pylist()], np.int64)
    out = ids[pc.index_in(arr, value_set=values).to_numpy(zero_copy_only=False)]
    out[np.asarray(missing, bool)] = -1
    return out


class _ShuffleBuffer:
    """A seeded shuffle buffer: rows enter in stream order; each batch is ``batch`` rows drawn
    at random from the buffer, whose tail then fills the holes (O(batch) per batch)."""

    def __init__(self, capacity: int, batch: int, rng: np.random.Generator) -> None:
        self.capacity, self.batch, self.rng = max(capacity, batch), batch, rng
        self.arrays: list[np.ndarray] | None = None
        self.n = 0

    def push(self, arrays: list[np.ndarray]) -> Iterator[list[np.ndarray]]:
        if self.arrays is None:
            self.arrays = [np.empty((self.capacity, *a.shape[1:]), a.dtype) for a in arrays]
        i, total = 0, len(arrays[0])
        while i < total:
            k = min(self.capacity - self.n, total - i)
            for buf, a in zip(self.arrays, arrays, strict=True):
                buf[self.n:self.n + k] = a[i:i + k]
            self.n, i = self.n + k, i + k
            if self.n == self.capacity:
                yield self._emit()

    def drain(self) -> Iterator[list[np.ndarray]]:
        while self.n >= self.batch:
            yield self._emit()

    def _emit(self) -> list[np.ndarray]:
        assert self.arrays is not None
        slots = self.rng.choice(self.n, self.batch, replace=False)
        out = [buf[slots] for buf in self.arrays]
        tail = self.n - self.batch
        holes = slots[slots < tail]
        taken = np.zeros(self.batch, bool)
        taken[slots[slots >= tail] - tail] = True
        movers = tail + np.flatnonzero(~taken)
        for buf in self.arrays:
            buf[holes] = buf[movers]
        self.n = tail
        return out


class StreamingSource:
    """Batches streamed from a dataset of parts (see the module docstring)."""

    def __init__(self, ds: Dataset, val_fraction: float, val_cap: int, seed: int,
                 label_column: str | None = None, shuffle_buffer: int = 65536) -> None:
        if shuffle_buffer < 1:
            raise Prom3eError(f"shuffle buffer must be ≥ 1 row, got {shuffle_buffer}")
        if label_column is not None and label_column not in ds.meta_columns:
            raise Prom3eError(f"{ds.path}: no label column '{label_column}' (metadata columns: "
                              f"{', '.join(ds.meta_columns) or 'none'})")
        self.ds, self.seed, self.val_fraction, self.val_cap = ds, seed, val_fraction, val_cap
        self.source = str(ds.path)
        self.label_column, self.shuffle_buffer = label_column, shuffle_buffer
        self.modalities, self.dims = list(ds.modalities), list(ds.dims)
        self.rank, self.world = distributed.world_from_env()
        self.dmax = max(self.dims)
        val = [int(is_validation(np.arange(u.start, u.start + u.rows), seed, val_fraction).sum())
               for u in ds.units]
        self.n_val = sum(val)
        self.n_train = ds.num_rows - self.n_val
        if self.n_val == 0 or self.n_train == 0:
            raise Prom3eError(f"{ds.path}: {ds.num_rows} rows give {self.n_train} training and {self.n_val} "
                              f"validation rows at val_fraction {val_fraction}; change it")
        # row groups dealt to ranks once, balanced by training rows (largest first)
        load = np.zeros(self.world, np.int64)
        self.assignment: list[list[Unit]] = [[] for _ in range(self.world)]
        for i in sorted(range(len(ds.units)), key=lambda i: (-(ds.units[i].rows - val[i]), i)):
            r = int(np.argmin(load))
            self.assignment[r].append(ds.units[i])
            load[r] += ds.units[i].rows - val[i]
        self.rank_rows = load
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None

    def steps_per_epoch(self, batch_size: int) -> int:
        per_rank = batch_size // self.world
        if per_rank < 1:
            raise Prom3eError(f"batch size {batch_size} is smaller than the {self.world} ranks")
        return max(1, int(self.rank_rows.min()) // per_rank)

    def _rows(self, u: Unit) -> list[np.ndarray]:
        """A row group's training rows as arrays: x [n, M, Dmax], present [n, M] (+ label ids)."""
        cols = [*self.modalities] + ([self.label_column] if self.label_column else [])
        t = self.ds.read_unit(u, cols)
        keep = np.flatnonzero(~is_validation(np.arange(u.start, u.start + u.rows), self.seed, self.val_fraction))
        part = self.ds.convert(t, u)
        x = np.zeros((len(keep), len(self.modalities), self.dmax), np.float32)
        for m, f in enumerate(part.features):
            x[:, m, : f.shape[1]] = f[keep]
        out = [x, part.present[keep]]
        if self.label_column:
            out.append(hashed_label_ids(t.column(self.label_column).take(pa.array(keep))))
        return out

    def batches(self, epoch: int, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
        steps, per_rank = self.steps_per_epoch(batch_size), batch_size // self.world
        rng = np.random.default_rng([self.seed, epoch, self.rank, 0x5EED])
        units = self.assignment[self.rank]
        buf = _ShuffleBuffer(self.shuffle_buffer, per_rank, rng)
        done = 0

        def emit(arrays: list[np.ndarray]) -> Batch:
            present = torch.from_numpy(arrays[1])
            labels = torch.from_numpy(arrays[2]) if self.label_column else None
            return Batch(present, torch.from_numpy(arrays[0]), labels, slice(None))

        for i in rng.permutation(len(units)):
            for arrays in buf.push(self._rows(units[i])):
                yield emit(arrays)
                done += 1
                if done == steps:
                    return
        for arrays in buf.drain():
            yield emit(arrays)
            done += 1
            if done == steps:
                return

    def validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._val is None:
            rows: list[np.ndarray] = []
            have = 0
            for u in self.ds.units:
                if have >= self.val_cap:
                    break
                r = u.start + np.flatnonzero(is_validation(np.arange(u.start, u.start + u.rows), self.seed,
                                                           self.val_fraction))
                rows.append(r[: self.val_cap - have])
                have += len(rows[-1])
            t = self.ds.take(np.concatenate(rows), meta=False)
            self._val = torch.from_numpy(t.padded()), torch.from_numpy(t.present)
        return self._val

    def inputs(self) -> list[Path]:
        return list(self.ds.files)

    def fingerprint(self) -> dict:
        from prom3e.data.parts import file_fingerprint

        return {"rows": self.ds.num_rows, "modalities": self.modalities, "dims": self.dims,
                "files": file_fingerprint(self.ds.files), "label": self.label_column}

    def split_record(self) -> dict:
        return {"seed": self.seed, "streamed": self.ds.path, "val_rule": "splitmix64(seed, row) < val_fraction",
                "val_fraction": self.val_fraction, "n_train": self.n_train, "n_val": self.n_val,
                "val_rows_scored": int(len(self.validation()[1])), "shuffle_buffer": self.shuffle_buffer,
                "world_size": self.world, "parts": self.ds.names}
