"""Request rows → the model's batch ``(x float32 [B, M, Dmax], present bool [B, M])``.

A row is ``{modality: value}``; a value is one of

- a list of numbers of the modality's dim (a vector in the model's space);
- a list of numbers of the aligner head's input dim (raw encoder features, mapped by the head);
- a raw input where the modality has one (:mod:`prom3e.serve.raw`): ``[lat, lon]`` or
  ``{"lat": .., "lon": ..}``, a string, a ``YYYY-MM-DD`` date;
- ``null``: missing.

Every problem is a :class:`BadInput` naming the field (``rows[3].image``) in one line.
Raw inputs of one modality are encoded in one batch per request.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from prom3e.serve.raw import RawInput, RawValueError


class BadInput(Exception):
    """A client error: ``status`` (4xx) and a one-line reason that names the field."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.status = field, status


_NUMBER = (int, float)


def _numbers(value: list, where: str) -> np.ndarray:
    # exact types: numpy would also take "1.5" and true/false as numbers
    if not all(type(v) in _NUMBER for v in value):
        bad = next(i for i, v in enumerate(value) if type(v) not in _NUMBER)
        raise BadInput(where, f"expected a list of numbers; position {bad} is {type(value[bad]).__name__}")
    with np.errstate(over="ignore"):
        a = np.asarray(value, dtype=np.float32)
    bad = ~np.isfinite(a)
    if bad.any():
        raise BadInput(where, f"NaN or infinite value (or beyond float32) at position {int(np.flatnonzero(bad)[0])}")
    return a


class RowParser:
    """Validates rows against the model's modalities, dims, aligner heads and raw inputs."""

    def __init__(self, modalities: list[str], dims: list[int], raw: dict[str, RawInput],
                 raw_unavailable: dict[str, str], aligner: Any = None, max_rows: int = 512) -> None:
        self.modalities, self.dims = modalities, dims
        self.index = {m: i for i, m in enumerate(modalities)}
        self.raw, self.why = raw, raw_unavailable
        self.aligner = aligner
        self.max_rows = max_rows

    def _head_dim(self, m: str) -> int | None:
        """The aligner head's input dim for ``m`` when it differs from the model's dim."""
        if self.aligner is None or m not in self.aligner.modalities:
            return None
        d = self.aligner.in_dims[m]
        return d if d != self.dims[self.index[m]] else None

    def _describe_dims(self, m: str) -> str:
        d = self.dims[self.index[m]]
        h = self._head_dim(m)
        return f"{d}" + (f" (or {h} raw encoder features)" if h else "")

    def parse(self, rows: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        if not rows:
            raise BadInput("rows", "no rows (give at least one)")
        if len(rows) > self.max_rows:
            raise BadInput("rows", f"{len(rows)} rows; this server takes at most {self.max_rows} per "
                           "request (--max-rows)", 413)
        b, m_count, dmax = len(rows), len(self.modalities), max(self.dims)
        x = np.zeros((b, m_count, dmax), np.float32)
        present = np.zeros((b, m_count), bool)
        raw_todo: dict[str, list[tuple[int, Any]]] = {}
        feat_todo: dict[str, list[tuple[int, np.ndarray]]] = {}
        for r, row in enumerate(rows):
            if not isinstance(row, dict):
                raise BadInput(f"rows[{r}]", "expected an object {modality: value}")
            if not row:
                raise BadInput(f"rows[{r}]", "empty row (give at least one modality)")
            for name, value in row.items():
                where = f"rows[{r}].{name}"
                if name not in self.index:
                    raise BadInput(where, f"unknown modality '{name}' (the model knows: "
                                   f"{', '.join(self.modalities)})")
                if value is None:
                    continue
                m = self.index[name]
                d = self.dims[m]
                if isinstance(value, list) and (name not in self.raw or self.raw[name].kind != "latlon"
                                                or len(value) != 2 or d == 2):
                    a = _numbers(value, where)
                    if len(a) == d:
                        x[r, m, :d], present[r, m] = a, True
                    elif len(a) == self._head_dim(name):
                        feat_todo.setdefault(name, []).append((r, a))
                        present[r, m] = True
                    else:
                        hint = ""
                        if len(a) == 2 and name not in self.raw:  # looks like [lat, lon]
                            hint = f"; raw coordinates are not taken for it: {self.why.get(name, 'no encoder')}"
                        raise BadInput(where, f"{len(a)} values; '{name}' takes {self._describe_dims(name)}{hint}")
                    continue
                if name not in self.raw:
                    kind = "text" if isinstance(value, str) else "this value"
                    raise BadInput(where, f"{kind} is not accepted: '{name}' takes a list of "
                                   f"{self._describe_dims(name)} numbers here ({self.why.get(name, 'no raw input')})")
                try:
                    raw_todo.setdefault(name, []).append((r, self.raw[name].check(value)))
                except RawValueError as e:
                    raise BadInput(where, str(e)) from None
                present[r, m] = True
        for name, items in feat_todo.items():
            m = self.index[name]
            out = self.aligner.transform_features(name, np.stack([a for _, a in items]))
            x[[r for r, _ in items], m, : self.dims[m]] = out
        for name, items in raw_todo.items():
            m = self.index[name]
            vecs, ok = self.raw[name].encode([v for _, v in items])
            if not ok.all():
                r = items[int(np.flatnonzero(~ok)[0])][0]
                raise BadInput(f"rows[{r}].{name}", f"its encoder '{self.raw[name].encoder_name}' could not use it")
            x[[r for r, _ in items], m, : self.dims[m]] = vecs
        empty = np.flatnonzero(~present.any(1))
        if len(empty):
            raise BadInput(f"rows[{int(empty[0])}]", "no visible modality (every value is null)")
        return torch.from_numpy(x), torch.from_numpy(present)
