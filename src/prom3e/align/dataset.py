"""``prom3e align`` on a folder of parts: fit on a seeded subsample, transform part by part.

The fit rows (all rows, or those matching ``fit_where``) are subsampled to at most
``max_fit_rows`` with a seeded choice and read into memory once; :func:`fit_aligner` trains
on them as it would on a table in memory. Every row is then transformed chunk by chunk into
``out/`` as a folder of parts (:class:`prom3e.data.parts.PartWriter`: atomic parts, manifest
last). A killed run resumes: the heads are saved before the transform starts and reloaded
(not refitted) when the folder's unfinished output has the same fingerprint.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from prom3e.align.aligner import Aligner, load_aligner
from prom3e.align.trainer import AlignConfig, fit_aligner
from prom3e.data.dataset import Dataset
from prom3e.data.parts import PartWriter, file_fingerprint
from prom3e.data.table import to_arrow
from prom3e.errors import Prom3eError
from prom3e.runtime import progress_bar

DEFAULT_MAX_FIT_ROWS = 500_000


def fit_rows(ds: Dataset, fit_where: str | None, cap: int | None, seed: int) -> tuple[np.ndarray, int]:
    """The global rows to fit on (sorted; at most ``cap``) and how many rows matched."""
    if fit_where:
        col, sep, value = fit_where.partition("=")
        if not sep:
            raise Prom3eError(f"--fit-where wants COLUMN=VALUE, got '{fit_where}'")
        vals = pc.cast(ds.meta([col.strip()])[col.strip()], "string").fill_null("None")
        rows = np.flatnonzero(pc.equal(vals, value.strip()).to_numpy(zero_copy_only=False))
        if not len(rows):
            raise Prom3eError(f"{ds.path}: no row has {col.strip()} = '{value.strip()}'")
    else:
        rows = np.arange(ds.num_rows)
    matched = len(rows)
    if cap is not None and matched > cap:
        rows = np.sort(np.random.default_rng(seed).choice(rows, cap, replace=False))
    return rows, matched


def align_dataset(data: str | os.PathLike, anchor: str, out: str | os.PathLike, model_out: str | os.PathLike,
                  label: str | None = None, config: AlignConfig | None = None, fit_where: str | None = None,
                  modalities: list[str] | None = None, progress: bool = True,
                  max_fit_rows: int | None = DEFAULT_MAX_FIT_ROWS, part_rows: int = 65536,
                  restart: bool = False) -> Aligner:
    """Fit the heads on (a subsample of) a dataset's rows and write the aligned parts."""
    from prom3e.encoders.embed import encoder_configs

    cfg = config or AlignConfig()
    if part_rows < 1 or (max_fit_rows is not None and max_fit_rows < 2):
        raise Prom3eError("--part-rows must be ≥ 1 and --max-fit-rows ≥ 2")
    ds = Dataset(data, modalities)
    if anchor not in ds.modalities:
        raise Prom3eError(f"{ds.path}: unknown modality '{anchor}' (have: {', '.join(ds.modalities)})")
    if label is not None and label not in ds.meta_columns:
        raise Prom3eError(f"{ds.path}: no label column '{label}' (metadata columns: "
                          f"{', '.join(ds.meta_columns) or 'none'})")
    fingerprint = {"data": file_fingerprint(ds.files), "anchor": anchor, "label": label,
                   "config": {k: v for k, v in vars(cfg).items() if k != "device"}, "fit_where": fit_where,
                   "modalities": ds.modalities, "max_fit_rows": max_fit_rows, "part_rows": part_rows}
    writer = PartWriter(out, fingerprint, restart)
    heads = Path(model_out)
    resumed = (writer.complete or any(writer.dir.glob("part-*.parquet"))) and (heads / "config.json").exists()
    if resumed:
        aligner = load_aligner(heads, cfg.device)
    else:
        from prom3e.align.aligner import ALIGNER_FILES
        from prom3e.io import check_output_dir

        check_output_dir(heads, products=ALIGNER_FILES, inputs=[data, out], overwrite=restart, what="--model-out")
        rows, matched = fit_rows(ds, fit_where, max_fit_rows, cfg.seed)
        fit = ds.take(rows, meta=[label] if label else False)
        aligner = fit_aligner(fit, anchor, label, cfg, encoder_configs(ds.files[0]), progress)
        aligner.record.update(fit_rows=int(len(rows)), fit_rows_matched=int(matched), fit_where=fit_where,
                              fit_subsampled=bool(len(rows) < matched))
        aligner.save(heads)
    firsts = list(range(0, ds.num_rows, part_rows))
    for first in progress_bar(firsts, show=progress, desc="transform", unit="part"):
        if writer.done(first):
            continue
        chunk = ds.table(first, min(first + part_rows, ds.num_rows))
        writer.write(first, ds.cast_like(to_arrow(aligner.transform(chunk))))
    writer.finish(firsts)
    return aligner
