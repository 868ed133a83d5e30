"""Date/season: cyclic day-of-year ``[sin kθ, cos kθ]_{k=1..H}`` with θ = 2π(doy − 1)/365.25,
plus, optionally, the year as ``(year − origin) / scale``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np

from prom3e.encoders.base import Encoder


def to_days(inputs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Dates (``datetime64``, ``date``, ISO string) → ``(datetime64[D][B], bool[B] valid)``."""
    out = np.full(len(inputs), np.datetime64("NaT"), "datetime64[D]")
    for i, v in enumerate(inputs):
        if v is None or (isinstance(v, str) and not v.strip()):
            continue
        try:
            if isinstance(v, str):
                v = v.strip().replace(" ", "T")
            if isinstance(v, dt.datetime):
                v = v.date()
            out[i] = np.datetime64(v, "D")
        except (ValueError, TypeError):
            continue
    return out, ~np.isnat(out)


class DateEncoder(Encoder):
    """Season (and year) of an observation date; deterministic, no backend."""

    name = "date"
    input_kind = "date"
    description = "cyclic day-of-year (+ year)"

    def __init__(self, harmonics: int = 1, year: bool = False, year_origin: float = 2000.0,
                 year_scale: float = 10.0, device: str = "cpu", batch_size: int = 65536) -> None:
        super().__init__("cpu", batch_size)
        self.harmonics, self.year = int(harmonics), bool(year)
        self.year_origin, self.year_scale = float(year_origin), float(year_scale)
        self.dim = 2 * self.harmonics + int(self.year)

    def options(self) -> dict[str, Any]:
        return {"harmonics": self.harmonics, "year": self.year,
                "year_origin": self.year_origin, "year_scale": self.year_scale}

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        days, ok = to_days(inputs)
        d = np.where(ok, days, np.datetime64("2000-01-01"))
        years = d.astype("datetime64[Y]")
        doy = (d - years.astype("datetime64[D]")).astype(np.float64)  # 0-based
        theta = 2 * np.pi * doy / 365.25
        k = np.arange(1, self.harmonics + 1)
        feats = [np.sin(theta[:, None] * k), np.cos(theta[:, None] * k)]
        if self.year:
            y = years.astype(np.int64) + 1970
            feats.append(((y - self.year_origin) / self.year_scale)[:, None])
        x = np.concatenate(feats, 1).astype(np.float32)
        return np.where(ok[:, None], x, 0), ok
