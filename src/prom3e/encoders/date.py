"""Date/season: cyclic day-of-year ``[sin kθ, cos kθ]_{k=1..H}`` with θ = 2π(doy − 1)/365.25,
plus, optionally, the year as ``(year − origin) / scale``. Dates are read by
:func:`parse_dates` (``dateutil``): the rules for ranges, time zones and partial dates are there.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from dateutil import parser

from prom3e.encoders.base import Encoder

_NO_DEFAULT = (dt.datetime(2000, 1, 1), dt.datetime(2001, 2, 2))
# "YYYY-MM-DD" then a time ("T…", " …"), an interval's end ("/…") or nothing: the date as
# written is that prefix, whatever follows (a time, a zone: not converted)
_ISO_DAY = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[T /]|$)")


def _parse_text(s: str, dayfirst: bool) -> np.datetime64:
    """One date string → its day, or NaT. ISO 8601 first (``dateutil.parser.isoparse``), then
    free-form (``dateutil.parser.parse``: "Sun May 02 2021 07:03:11 GMT-0700", …)."""
    s = s.strip()
    m = _ISO_DAY.match(s)
    if m:  # the common case (GBIF eventDate, iNaturalist observed_on/time_observed_at): fast
        try:
            return np.datetime64(m.group(1), "D")
        except ValueError:
            return np.datetime64("NaT")
    if s.count("/") == 1:  # an ISO 8601 interval "start/end": its start
        start = s.split("/")[0].strip()
        try:
            parser.isoparse(start)
            s = start
        except (ValueError, OverflowError):
            pass
    if len(s) <= 4 and s.lstrip("+-").isdigit():
        return np.datetime64("NaT")  # a year alone: no season
    try:
        return np.datetime64(parser.isoparse(s).date(), "D")  # "2019-05" → 2019-05-01
    except (ValueError, OverflowError):
        pass
    with warnings.catch_warnings():  # "PDT" and friends: the date as written is all we use
        warnings.simplefilter("ignore")
        try:
            a = b = parser.parse(s, default=_NO_DEFAULT[0], dayfirst=dayfirst)
            if a.year == 2000 or a.month == 1 or a.day == 1:  # perhaps a default: parse again
                b = parser.parse(s, default=_NO_DEFAULT[1], dayfirst=dayfirst)
        except (ValueError, OverflowError, TypeError):
            return np.datetime64("NaT")
    if a.year != b.year or a.month != b.month:  # no year, or no month: not a date
        return np.datetime64("NaT")
    return np.datetime64(a.date() if a.day == b.day else a.date().replace(day=1), "D")


def parse_dates(values: Sequence[Any], dayfirst: bool = False) -> np.ndarray:
    """Dates as exports write them → ``datetime64[D]`` (NaT where there is no usable date).

    Strings are parsed by ``dateutil`` (each distinct value once): ISO 8601 dates, times and
    intervals (``2019-05-01/2019-05-03`` → its start), iNaturalist's ``2021-05-02 14:03:11
    UTC``, and free-form dates (``dayfirst`` for 05/06/2021 = 5 June). A value with a time
    zone keeps the date as written there (no conversion). A month (``2019-05``) stands for
    its first day; a year alone has no season and counts as no date. ``date``/``datetime``
    objects and ``datetime64`` values pass through; numbers are not dates.
    """
    out = np.full(len(values), np.datetime64("NaT"), "datetime64[D]")
    seen: dict[str, np.datetime64] = {}
    for i, v in enumerate(values):
        if v is None:
            continue
        if isinstance(v, str):
            if v.strip():
                if v not in seen:
                    seen[v] = _parse_text(v, dayfirst)
                out[i] = seen[v]
        elif isinstance(v, dt.datetime):
            out[i] = np.datetime64(v.date(), "D")
        elif isinstance(v, dt.date | np.datetime64):
            out[i] = np.datetime64(v, "D")
    return out


def to_days(inputs: Sequence[Any], dayfirst: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Dates → ``(datetime64[D][B], bool[B] valid)`` (see :func:`parse_dates`)."""
    out = parse_dates(inputs, dayfirst)
    return out, ~np.isnat(out)


class DateEncoder(Encoder):
    """Season (and year) of an observation date; deterministic, no backend."""

    name = "date"
    input_kind = "date"
    description = "cyclic day-of-year (+ year)"

    def __init__(self, harmonics: int = 1, year: bool = False, year_origin: float = 2000.0,
                 year_scale: float = 10.0, dayfirst: bool = False, device: str = "cpu",
                 batch_size: int = 65536) -> None:
        super().__init__("cpu", batch_size)
        self.harmonics, self.year, self.dayfirst = int(harmonics), bool(year), bool(dayfirst)
        self.year_origin, self.year_scale = float(year_origin), float(year_scale)
        self.dim = 2 * self.harmonics + int(self.year)

    def options(self) -> dict[str, Any]:
        return {"harmonics": self.harmonics, "year": self.year, "year_origin": self.year_origin,
                "year_scale": self.year_scale, "dayfirst": self.dayfirst}

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        days, ok = to_days(inputs, self.dayfirst)
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
