"""What a server loads besides the model: gallery indexes, class prototypes, example rows.

- **Galleries** (``/retrieve``): a :class:`GalleryIndex` per target modality, from
  ``--index NAME=FILE`` (built by ``prom3e index build``; ids = the gallery table's row
  numbers, and ``--index-meta NAME=TABLE`` names that table to return each hit's metadata)
  or built in memory from every modality of ``--gallery TABLE`` (exact, row ids + metadata).
- **Prototypes** (``/classify``): from ``--prototypes TABLE``, the mean embedding of the
  class modality per label (``--label``, default ``species``; the class modality is
  detected, or ``--class-modality``). Probabilities are ``softmax(cos / τ)``; τ is fitted by
  maximum likelihood on up to 2,000 seeded rows of the same table that have a label and
  another modality (the query: everything but the class modality). Without such rows τ is
  0.07 and ``/schema`` says it is not calibrated.
- **Examples** (the page's example picker): the first rows of ``--examples TABLE``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prom3e.data.table import ModalTable, read_table
from prom3e.errors import Prom3eError
from prom3e.index import GalleryIndex
from prom3e.tasks import zeroshot as zs
from prom3e.tasks.common import l2n

DEFAULT_TEMPERATURE = 0.07
CALIBRATION_ROWS = 2000
MAX_EXAMPLES = 500


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, str | int | float | bool) or v is None else str(v)


def _meta_rows(meta: dict[str, np.ndarray], rows: np.ndarray) -> list[dict[str, Any]]:
    cols = list(meta)[:12]  # a few scalar columns are enough to recognise an item
    return [{c: _jsonable(meta[c][r]) for c in cols} for r in rows]


@dataclass
class Gallery:
    modality: str
    index: GalleryIndex
    source: str
    meta: dict[str, np.ndarray] | None = None  # row number → metadata

    def describe(self) -> dict:
        return {"modality": self.modality, "size": len(self.index), "dim": self.index.dim,
                "spec": self.index.spec, "source": self.source, "metadata": bool(self.meta)}

    def items(self, scores: torch.Tensor, ids: torch.Tensor) -> list[list[dict]]:
        out = []
        for s_row, i_row in zip(scores.tolist(), ids.tolist(), strict=True):
            hits = []
            for s, i in zip(s_row, i_row, strict=True):
                if i < 0:
                    continue
                hit: dict[str, Any] = {"id": int(i), "score": float(s)}
                if self.meta is not None and i < len(next(iter(self.meta.values()), [])):
                    hit["meta"] = _meta_rows(self.meta, np.array([i]))[0]
                hits.append(hit)
            out.append(hits)
        return out


def load_galleries(modalities: list[str], dims: list[int], indexes: dict[str, str],
                   index_meta: dict[str, str], gallery_table: str | None) -> dict[str, Gallery]:
    dim_of = dict(zip(modalities, dims, strict=True))
    out: dict[str, Gallery] = {}
    for name, path in indexes.items():
        if name not in dim_of:
            raise Prom3eError(f"--index {name}=...: the model has no modality '{name}' "
                              f"(it knows: {', '.join(modalities)})")
        index = GalleryIndex.load(path)
        if index.dim != dim_of[name]:
            raise Prom3eError(f"--index {name}={path}: holds {index.dim}-d vectors, '{name}' is {dim_of[name]}-d")
        meta = None
        if name in index_meta:
            t = read_table(index_meta[name])
            meta = t.meta
        out[name] = Gallery(name, index, str(path), meta)
    for name in index_meta:
        if name not in indexes:
            raise Prom3eError(f"--index-meta {name}=...: no --index {name}=FILE to go with it")
    if gallery_table:
        t = read_table(gallery_table)
        for m in t.modalities:
            if m in out or m not in dim_of:
                continue
            if t.dims[t.index(m)] != dim_of[m]:
                raise Prom3eError(f"--gallery {gallery_table}: column '{m}' is {t.dims[t.index(m)]}-d, "
                                  f"the model's '{m}' is {dim_of[m]}-d")
            rows = np.flatnonzero(t.present[:, t.index(m)])
            index = GalleryIndex.build(t.feature(m)[rows], ids=rows)
            out[m] = Gallery(m, index, str(gallery_table), t.meta)
    return out


@dataclass
class Prototypes:
    modality: str
    labels: list[str]
    vectors: torch.Tensor  # [C, d], unit norm
    temperature: float
    source: str
    calibration: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"modality": self.modality, "classes": len(self.labels), "source": self.source,
                "temperature": self.temperature, "calibration": self.calibration}

    def top(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probabilities [B, k], class indices [B, k])``, best first."""
        p = torch.softmax(zs.class_scores(l2n(query), self.vectors) / self.temperature, dim=1)
        return p.topk(min(k, len(self.labels)), dim=1)


def fit_temperature(scores: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """τ minimising the mean NLL of ``softmax(scores / τ)`` at the true classes; (τ, NLL)."""
    from scipy.optimize import minimize_scalar

    s, t = scores.double(), y.long()

    def nll(log_tau: float) -> float:
        z = s / np.exp(log_tau)
        return float((torch.logsumexp(z, 1) - z.gather(1, t[:, None])[:, 0]).mean())

    res = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(10.0)), method="bounded")
    return float(np.exp(res.x)), float(res.fun)


def load_prototypes(fuser, path: str | os.PathLike, label: str, class_modality: str | None,
                    seed: int = 0) -> Prototypes:
    table = read_table(path)
    names = np.asarray(table.label(label), dtype=object)
    has_label = np.array([v is not None and str(v) != "" and v == v for v in names])
    codes = np.full(len(table), -1, np.int64)
    classes, inv = np.unique(names[has_label].astype(str), return_inverse=True)
    codes[has_label] = inv.reshape(-1)
    if class_modality is None:
        class_modality = zs.detect_class_modality(table.features, table.present, table.modalities, codes)
        if class_modality is None:
            raise Prom3eError(f"--prototypes {path}: no modality is a function of '{label}' (one vector per "
                              "class); name it with --class-modality")
    if class_modality not in fuser.modalities:
        raise Prom3eError(f"--class-modality {class_modality}: the model has no such modality "
                          f"(it knows: {', '.join(fuser.modalities)})")
    c = table.index(class_modality)
    if table.dims[c] != fuser.dims[fuser.modalities.index(class_modality)]:
        raise Prom3eError(f"--prototypes {path}: '{class_modality}' is {table.dims[c]}-d, the model's is "
                          f"{fuser.dims[fuser.modalities.index(class_modality)]}-d")
    ok = table.present[:, c] & (codes >= 0)
    vecs, kept = zs.class_prototypes(table.features[c][ok], codes[ok], len(classes))
    labels = [str(classes[i]) for i in kept]
    temperature, calib = DEFAULT_TEMPERATURE, {"calibrated": False}
    # calibration rows: labelled, with a prototype, and some other modality the model knows
    known = table.select([m for m in table.modalities if m in fuser.modalities])
    c = known.index(class_modality)
    others = np.delete(np.arange(len(known.modalities)), c)
    usable = np.flatnonzero(np.isin(codes, kept) & known.present[:, others].any(1))
    if len(usable) >= 10:
        rows = np.sort(np.random.default_rng(seed).permutation(usable)[:CALIBRATION_ROWS])
        sub = known.take(rows)
        sub.present[:, c] = False  # the query: every modality but the class modality
        with torch.inference_mode():
            rec = fuser.reconstruct(sub.check_schema(fuser.modalities, fuser.dims),
                                    targets=[class_modality])[class_modality]
        scores = zs.class_scores(l2n(rec), vecs)
        col_of = {int(k): j for j, k in enumerate(kept)}
        y = torch.tensor([col_of[int(v)] for v in codes[rows]])
        temperature, loss = fit_temperature(scores, y)
        calib = {"calibrated": True, "rows": len(rows), "nll": loss,
                 "top1": float((scores.argmax(1) == y).double().mean()),
                 "query": "every modality but " + class_modality}
    return Prototypes(class_modality, labels, vecs, temperature, str(path), calib)


@dataclass
class Examples:
    table: ModalTable
    source: str

    def listing(self) -> list[dict]:
        return [{"row": r, "meta": m, "modalities": [n for j, n in enumerate(self.table.modalities)
                                                      if self.table.present[r, j]]}
                for r, m in enumerate(_meta_rows(self.table.meta, np.arange(len(self.table))))]

    def row(self, r: int) -> dict:
        t = self.table
        return {"row": r, "meta": _meta_rows(t.meta, np.array([r]))[0],
                "values": {n: (t.features[j][r].tolist() if t.present[r, j] else None)
                           for j, n in enumerate(t.modalities)}}


def load_examples(path: str | os.PathLike, modalities: list[str], dims: list[int]) -> Examples:
    """The first rows (at most :data:`MAX_EXAMPLES` with a modality) of a table; only those are read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prom3e.data.table import from_arrow

    try:
        first = next(pq.ParquetFile(path).iter_batches(batch_size=4 * MAX_EXAMPLES), None)
    except (pa.ArrowInvalid, OSError) as e:
        raise Prom3eError(f"--examples {path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    if first is None:
        raise Prom3eError(f"--examples {path}: the table is empty")
    t = from_arrow(pa.Table.from_batches([first]), str(path))
    keep = [m for m in t.modalities if m in modalities]
    if not keep:
        raise Prom3eError(f"--examples {path}: none of its modalities ({', '.join(t.modalities)}) is the model's")
    t = t.select(keep)
    for m in keep:
        if t.dims[t.index(m)] != dims[modalities.index(m)]:
            raise Prom3eError(f"--examples {path}: '{m}' is {t.dims[t.index(m)]}-d, the model's is "
                              f"{dims[modalities.index(m)]}-d")
    rows = np.flatnonzero(t.present.any(1))[:MAX_EXAMPLES]
    return Examples(t.take(rows), str(Path(path)))
