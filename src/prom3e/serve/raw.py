"""Raw inputs: which stage-1 encoder built each modality, and rebuilding it to serve requests.

Where the record lives (first found wins, per modality):

1. ``--encoders FILE``: JSON ``{modality: {"encoder": NAME, "options": {...}}}`` (the
   operator's explicit choice; e.g. for an aligner written before aligners recorded them);
2. the aligner folder's ``config.json`` ``"encoders"`` (``prom3e align`` copies the configs
   that ``prom3e embed`` writes into each feature column's Parquet field metadata); the
   aligner's head for the modality then maps the encoder's output into the model's space;
3. the run folder's ``encoders.json`` (same layout; written by ``prom3e train`` when the
   training table's columns carry embed metadata, i.e. a model trained straight on
   ``prom3e embed`` features): the encoder's output *is* the model's input, no head.

A modality gets a raw input when its recorded encoder takes coordinates (``latlon``),
text or a date, builds here (its package is installed) and its output fits (the head's
input dim, or the model's dim without a head). Otherwise it takes vectors only, and
``/schema`` says why; a raw value sent for it is answered with a 422 naming the modality
and the reason. Images and sounds are never accepted raw: the server opens no file a
client names.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prom3e.errors import Prom3eError

RAW_KINDS = ("latlon", "text", "date")
ENCODERS_FILE = "encoders.json"
MAX_TEXT = 2000  # characters of one text input


class RawValueError(ValueError):
    """A raw value the modality's encoder cannot take (message names no field: callers add it)."""


@dataclass
class RawInput:
    """One modality's raw-input path: encoder → (aligner head) → the model's space."""

    modality: str
    kind: str
    encoder_name: str
    source: str  # where the record came from
    encoder: Any = field(repr=False)
    aligner: Any = field(default=None, repr=False)

    def describe(self) -> dict:
        return {"kind": self.kind, "encoder": self.encoder_name, "source": self.source,
                "head": self.aligner is not None}

    def check(self, value: Any) -> Any:
        """Validate one raw JSON value; returns what the encoder takes."""
        if self.kind == "latlon":
            if isinstance(value, dict):
                if set(value) != {"lat", "lon"}:
                    raise RawValueError('coordinates must be {"lat": ..., "lon": ...} or [lat, lon]')
                value = [value["lat"], value["lon"]]
            if not (isinstance(value, list) and len(value) == 2
                    and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
                raise RawValueError("coordinates must be [lat, lon] in degrees")
            lat, lon = float(value[0]), float(value[1])
            if not (math.isfinite(lat) and -90 <= lat <= 90):
                raise RawValueError(f"latitude {value[0]} is outside [-90, 90]")
            if not (math.isfinite(lon) and -180 <= lon <= 180):
                raise RawValueError(f"longitude {value[1]} is outside [-180, 180]")
            return (lat, lon)
        if not isinstance(value, str):
            raise RawValueError(f"expected a {'date string' if self.kind == 'date' else 'string'}")
        text = value.strip()
        if not text:
            raise RawValueError("empty text (use null for a missing modality)")
        if len(text) > MAX_TEXT:
            raise RawValueError(f"text of {len(text)} characters; the limit is {MAX_TEXT}")
        if self.kind == "date":
            try:
                return np.datetime64(dt.date.fromisoformat(text), "D")
            except ValueError:
                raise RawValueError(f"'{text[:40]}' is not a date (YYYY-MM-DD)") from None
        return text

    def encode(self, values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Checked values → ``(float32 [n, dim] in the model's space, bool [n] usable)``."""
        x, ok = self.encoder.encode_masked(values)
        if self.aligner is not None:
            out = np.zeros((len(values), self.aligner.dim), np.float32)
            if ok.any():
                out[ok] = self.aligner.transform_features(self.modality, x[ok])
            return out, ok
        return x, ok


def _read_records(path: Path, what: str) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise Prom3eError(f"{path}: cannot read {what} ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "encoder" in v for v in data.values()):
        raise Prom3eError(f'{path}: expected {{modality: {{"encoder": NAME, "options": {{...}}}}}}')
    return data


def recorded_encoders(run: str | os.PathLike, aligner: Any = None, encoders_file: str | os.PathLike | None = None
                      ) -> dict[str, tuple[dict, str, bool]]:
    """``{modality: (encoder config, source, through_head)}`` from the three places above."""
    found: dict[str, tuple[dict, str, bool]] = {}
    run_file = Path(run) / ENCODERS_FILE
    if run_file.exists():
        for m, c in _read_records(run_file, "the run's encoder records").items():
            found[m] = (c, str(run_file), False)
    if aligner is not None:
        for m, c in (getattr(aligner, "encoders", None) or {}).items():
            found[m] = (c, "aligner", True)
    if encoders_file is not None:
        for m, c in _read_records(Path(encoders_file), "--encoders").items():
            found[m] = (c, str(encoders_file), aligner is not None and m in aligner.modalities)
    return found


def build_raw_inputs(modalities: list[str], dims: list[int], run: str | os.PathLike, aligner: Any = None,
                     encoders_file: str | os.PathLike | None = None, device: str = "cpu"
                     ) -> tuple[dict[str, RawInput], dict[str, str]]:
    """The raw inputs this server can take, and for every other modality the reason why not."""
    import inspect

    from prom3e.encoders.registry import encoder_factory, encoder_info, get_encoder

    records = recorded_encoders(run, aligner, encoders_file)
    raw: dict[str, RawInput] = {}
    why: dict[str, str] = {}
    for m, d in zip(modalities, dims, strict=True):
        if m not in records:
            why[m] = ("no encoder recorded for it (serve with --aligner from 'prom3e align' on an "
                      "'prom3e embed' table, or --encoders FILE)")
            continue
        cfg, source, through_head = records[m]
        name = str(cfg["encoder"])
        try:
            kind = encoder_info(name).input_kind
        except Prom3eError as e:
            why[m] = str(e)
            continue
        if kind not in RAW_KINDS:
            why[m] = (f"its encoder '{name}' takes {kind} inputs, which the server does not accept raw "
                      "(it opens no file a client names); send vectors")
            continue
        opts = {k: v for k, v in (cfg.get("options") or {}).items() if k != "device"}
        try:
            if "device" in inspect.signature(encoder_factory(name)).parameters:
                opts["device"] = device
            enc = get_encoder(name, **opts)
            enc.prepare()
        except Exception as e:  # noqa: BLE001 - any backend failure: this modality takes vectors only
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            why[m] = f"its encoder '{name}' cannot be built here: {reason}"
            continue
        want = aligner.in_dims[m] if through_head else d
        if enc.dim != want:
            why[m] = (f"its encoder '{name}' gives {enc.dim}-d vectors, the "
                      f"{'aligner head' if through_head else 'model'} takes {want}-d")
            continue
        raw[m] = RawInput(m, kind, name, source, enc, aligner if through_head else None)
    return raw, why
