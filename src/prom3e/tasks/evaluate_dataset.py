"""The evaluation suite on a folder of parts: read only the rows the caps keep.

>>> metrics = evaluate_dataset(fuser, Dataset("test_parts/"), label="species", out_dir="eval")

1. The label (and split) columns are read whole, as Arrow (a few bytes per row), and turned
   into the same class codes as :func:`~prom3e.tasks.common.encode_labels`; the split and
   the capped stratified subsamples are the ones :func:`~prom3e.tasks.evaluate.evaluate`
   would draw on the whole table (same functions, same seeds).
2. Only those fit and test rows (≤ ``max_fit + max_test``) are read, validated, and
   evaluated by :func:`~prom3e.tasks.evaluate.evaluate`.
3. Zero-shot prototypes (when not given) are class means over **every** row, computed in
   one streamed pass over the class modality and label columns. ``class_modality="auto"``
   is detected on the rows read in step 2.

So the numbers equal those of the in-memory path on the same table, up to float rounding in
the prototypes and exact ties.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from prom3e.data.dataset import Dataset
from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError
from prom3e.tasks import zeroshot as zs
from prom3e.tasks.common import FuserLike, encode_labels, l2n, stratified_split, stratified_subsample
from prom3e.tasks.evaluate import FIT_VALUES, evaluate

SPLIT = "__prom3e_split"


def label_codes(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """:func:`encode_labels` on an Arrow column without NumPy objects: ``(int64 codes, −1 =
    missing; sorted class names)``. Missing = null, NaN or the empty string."""
    if pa.types.is_floating(col.type):
        col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
    s = pc.cast(col, pa.string())
    s = pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)
    values = pc.unique(s).drop_null()
    classes = pc.take(values, pc.array_sort_indices(values))
    codes = pc.index_in(s, value_set=classes).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, [str(c) for c in classes.to_pylist()]


def evaluate_dataset(fuser: FuserLike, ds: Dataset, label: str | None = None,
                     out_dir: str | os.PathLike | None = None, *, class_modality: str | None = "auto",
                     class_prototypes: ModalTable | str | os.PathLike | None = None,
                     tasks: Sequence[str] = ("retrieval", "zeroshot", "probe", "uncertainty", "gap"),
                     seed: int = 0, fit_frac: float = 0.5, split_column: str | None = None,
                     max_fit: int | None = 2000, max_test: int | None = 2000, **kwargs: Any) -> dict[str, Any]:
    """Evaluate on the capped fit/test rows of a dataset (see the module docstring);
    ``kwargs`` go to :func:`~prom3e.tasks.evaluate.evaluate` unchanged."""
    if not 0 < fit_frac < 1:
        raise Prom3eError(f"fit_frac must be in (0, 1), got {fit_frac}")
    cols = ds.meta([c for c in (label, split_column) if c])
    if label is not None:
        y, classes = label_codes(cols[label])
        if not (y >= 0).any():
            raise Prom3eError(f"label column '{label}' has no value")
    else:
        y, classes = np.full(ds.num_rows, -1, np.int64), []
    if split_column is not None:
        part = pc.cast(cols[split_column], pa.string()).fill_null("")
        fit_rows = np.flatnonzero(pc.is_in(part, value_set=pa.array(FIT_VALUES)).to_numpy(zero_copy_only=False))
        test_rows = np.flatnonzero(pc.equal(part, "test").to_numpy(zero_copy_only=False))
        if not len(fit_rows) or not len(test_rows):
            raise Prom3eError(f"split column '{split_column}': need rows marked 'test' and rows marked "
                              f"{' / '.join(FIT_VALUES)}")
    else:
        fit_rows, test_rows = stratified_split(y, fit_frac, seed)
    fit_rows = stratified_subsample(fit_rows, y, max_fit, seed + 1)
    test_rows = stratified_subsample(test_rows, y, max_test, seed + 2)
    rows = np.concatenate([fit_rows, test_rows])
    order = np.argsort(rows, kind="stable")
    table = ds.take(rows[order])
    table.meta[SPLIT] = np.where(order < len(fit_rows), "fit", "test").astype(object)

    protos = class_prototypes
    class_mod = class_modality
    if label is not None and "zeroshot" in tasks and class_modality is not None and class_prototypes is None:
        aligned = fuser.aligner.transform(table) if getattr(fuser, "aligner", None) is not None else table
        aligned = aligned.check_schema(fuser.modalities, fuser.dims)
        if class_modality == "auto":
            class_mod = zs.detect_class_modality(aligned.features, aligned.present, aligned.modalities,
                                                 encode_labels(table.label(label))[0])
        if class_mod is not None:
            protos = _prototypes(fuser, ds, label, class_mod, y, classes)
    settings = {"n_rows": ds.num_rows, "split_column": split_column, "max_fit": max_fit, "max_test": max_test,
                "n_classes": len(classes), "rows_read": len(table), "streamed": ds.path}
    if protos is not class_prototypes:
        settings["prototypes"] = "table"
    return evaluate(fuser, table, label, out_dir, class_modality=class_mod, class_prototypes=protos,
                    tasks=tasks, seed=seed, split_column=SPLIT, max_fit=None, max_test=None,
                    settings=settings, **kwargs)


def _prototypes(fuser: FuserLike, ds: Dataset, label: str, class_mod: str, y: np.ndarray,
                classes: list[str]) -> ModalTable | None:
    """Mean normalised class-modality embedding per class over every row (one streamed
    pass), normalised, as a table with one row per class (what ``class_prototypes`` takes)."""
    aligner = getattr(fuser, "aligner", None)
    name = class_mod
    if aligner is None and class_mod not in ds.modalities:
        return None
    sums: torch.Tensor | None = None
    counts = np.zeros(len(classes), np.int64)
    for first, chunk in ds.chunks(65536, meta=False):
        if aligner is not None:
            chunk = aligner.transform(chunk)
        if name not in chunk.modalities:
            return None
        m = chunk.index(name)
        yy = y[first:first + len(chunk)]
        ok = chunk.present[:, m] & (yy >= 0)
        x = l2n(chunk.features[m][ok])
        if sums is None:
            sums = torch.zeros(len(classes), x.shape[1])
        sums.index_add_(0, torch.from_numpy(yy[ok]), x)
        counts += np.bincount(yy[ok], minlength=len(classes))
    if sums is None:
        return None
    has = np.flatnonzero(counts > 0)
    if not len(has):
        return None
    protos = l2n(sums[torch.from_numpy(has)]).numpy()
    return ModalTable([name], [protos], np.ones((len(has), 1), bool),
                      {label: np.array(classes, dtype=object)[has]}, f"{ds.path} (class means)")
