"""Time of day: cyclic ``[sin kθ, cos kθ]_{k=1..H}`` with θ = 2π·(minutes since midnight)/1440.

Accepts ``HH:MM`` / ``H:MM`` / ``HH:MM:SS`` strings (optionally with ``am``/``pm``), a
``datetime.time`` or ``datetime.datetime``, or minutes since midnight as a number. Anything
else (``?``, ``x``, ``25:00``, an empty cell) is *missing*, not zero: 23:59 and 00:01 are
neighbours, an unknown time is neither.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from prom3e.encoders.base import Encoder
from prom3e.errors import Prom3eError

_CLOCK = re.compile(r"^\s*(\d{1,3}):(\d{1,2})(?::(\d{1,2}))?\s*([ap])?\.?\s*m?\.?\s*$", re.I)


def to_minutes(value: Any) -> float | None:
    """Minutes since midnight in [0, 1440), or ``None`` for an unusable value."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        value = value.time()
    if isinstance(value, dt.time):
        return value.hour * 60 + value.minute + value.second / 60
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        v = float(value)
        return v if math.isfinite(v) and 0 <= v < 1440 else None
    if not isinstance(value, str):
        return None
    m = _CLOCK.match(value)
    if not m:
        return None
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    ampm = (m.group(4) or "").lower()
    if ampm:
        if not 1 <= h <= 12:
            return None
        h = h % 12 + (12 if ampm == "p" else 0)
    if h > 23 or mi > 59 or s > 59:
        return None
    return h * 60 + mi + s / 60


class TimeOfDayEncoder(Encoder):
    """Cyclic time of day; deterministic, no backend."""

    name = "time_of_day"
    input_kind = "time"
    description = "cyclic time of day (HH:MM; odd values → missing)"

    def __init__(self, harmonics: int = 1, device: str = "cpu", batch_size: int = 65536) -> None:
        super().__init__("cpu", batch_size)
        if int(harmonics) < 1:
            raise Prom3eError("time_of_day: harmonics must be ≥ 1")
        self.harmonics = int(harmonics)
        self.dim = 2 * self.harmonics

    def options(self) -> dict[str, Any]:
        return {"harmonics": self.harmonics}

    def _encode(self, inputs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        minutes = [to_minutes(v) for v in inputs]
        ok = np.array([m is not None for m in minutes], bool)
        theta = 2 * np.pi * np.array([m or 0.0 for m in minutes], np.float64) / 1440
        k = np.arange(1, self.harmonics + 1)
        x = np.concatenate([np.sin(theta[:, None] * k), np.cos(theta[:, None] * k)], 1)
        return np.where(ok[:, None], x, 0).astype(np.float32), ok
