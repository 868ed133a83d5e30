"""The ``prom3e embed`` spec: which observation columns feed which encoder.

YAML (or JSON)::

    batch_size: 64          # rows per checkpointed batch (a killed run loses at most one)
    id_column: inat_id      # optional unique id; resuming matches rows by it (else by row)
    keep: [inat_id, species]  # metadata columns to copy (default: every column)
    modalities:
      image: {encoder: efficientnet_lite0, column: photo, root: photos/}
      text:  {encoder: minilm, template: "{family} {genus} {species} ({common_name})"}
      loc:   {encoder: geoclip, columns: [lat, lon]}
      date:  {encoder: date, column: observed_on, options: {year: true}}
      env:   {encoder: env_mlp, columns: [bio1, bio2, bio3]}
      time:  {encoder: time_of_day, column: time, options: {harmonics: 2}}
      calls: {encoder: minilm_list, column: type}            # "['call', 'song']"; [] = missing
      with:  {encoder: multi_hot, column: secondary_labels, options: {dim: 512}}

``column`` (one) or ``columns`` (several) name the inputs; text may instead use a
``template`` over any columns (or join several ``columns`` with spaces). Relative paths
(images, sounds) are resolved against ``root``, which defaults to the observation file's
folder (a relative ``root`` is itself taken from there). ``options`` go to the encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prom3e.encoders.registry import encoder_info
from prom3e.errors import Prom3eError

_TOP_KEYS = {"batch_size", "id_column", "keep", "modalities"}
_MOD_KEYS = {"encoder", "column", "columns", "template", "root", "options"}


@dataclass
class ModalitySpec:
    name: str
    encoder: str
    columns: list[str]
    template: str | None = None
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EmbedSpec:
    modalities: list[ModalitySpec]
    batch_size: int = 64
    id_column: str | None = None
    keep: list[str] | None = None
    source: str = "<spec>"

    def fingerprint(self) -> str:
        """Identifies what the output holds (not how it is batched): resuming requires a match."""
        d = {"id": self.id_column, "modalities": [asdict(m) for m in self.modalities]}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def template_fields(template: str) -> list[str]:
    return re.findall(r"\{([^{}:!]+)", template)


def parse_spec(raw: Any, source: str = "<spec>") -> EmbedSpec:
    """Validate a spec dict (as loaded from YAML/JSON)."""
    if not isinstance(raw, dict):
        raise Prom3eError(f"{source}: the spec must be a mapping with a 'modalities' key")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise Prom3eError(f"{source}: unknown key(s) {sorted(unknown)} "
                          f"(allowed: {sorted(_TOP_KEYS)})")
    mods = raw.get("modalities")
    if not isinstance(mods, dict) or not mods:
        raise Prom3eError(f"{source}: 'modalities' must map modality names to encoder settings")
    out = []
    for name, m in mods.items():
        where = f"{source}: modality '{name}'"
        if not isinstance(m, dict):
            raise Prom3eError(f"{where}: expected a mapping with 'encoder' and 'column(s)'")
        bad = set(m) - _MOD_KEYS
        if bad:
            raise Prom3eError(f"{where}: unknown key(s) {sorted(bad)} "
                              f"(allowed: {sorted(_MOD_KEYS)})")
        if "encoder" not in m:
            raise Prom3eError(f"{where}: no 'encoder'")
        try:
            info = encoder_info(str(m["encoder"]))
        except Prom3eError as e:
            raise Prom3eError(f"{where}: {e}") from None
        cols = m.get("columns", [m["column"]] if "column" in m else [])
        if isinstance(cols, str):
            cols = [cols]
        if "column" in m and "columns" in m:
            raise Prom3eError(f"{where}: give 'column' or 'columns', not both")
        template = m.get("template")
        if template is not None:
            if info.input_kind != "text":
                raise Prom3eError(f"{where}: 'template' is only for text encoders")
            if cols:
                raise Prom3eError(f"{where}: give 'template' or 'column(s)', not both")
            cols = template_fields(str(template))
            if not cols:
                raise Prom3eError(f"{where}: the template names no {{column}}")
        if not cols:
            raise Prom3eError(f"{where}: no input 'column' (or 'columns'/'template')")
        want = {"latlon": (2, 2), "image": (1, 1), "audio": (1, 1), "date": (1, 1), "time": (1, 1),
                "list": (1, 1)}
        lo, hi = want.get(info.input_kind, (1, 10**9))
        if not lo <= len(cols) <= hi:
            need = "[lat, lon]" if info.input_kind == "latlon" else "one column"
            raise Prom3eError(f"{where}: encoder '{info.name}' takes {need}, got {cols}")
        options = m.get("options") or {}
        if not isinstance(options, dict):
            raise Prom3eError(f"{where}: 'options' must be a mapping")
        out.append(ModalitySpec(str(name), info.name, [str(c) for c in cols],
                                None if template is None else str(template),
                                None if m.get("root") is None else str(m["root"]), dict(options)))
    bs = raw.get("batch_size", 64)
    if not isinstance(bs, int) or bs < 1:
        raise Prom3eError(f"{source}: batch_size must be a positive integer, got {bs!r}")
    keep = raw.get("keep")
    if keep is not None and not (isinstance(keep, list) and all(isinstance(k, str) for k in keep)):
        raise Prom3eError(f"{source}: 'keep' must be a list of column names")
    idc = raw.get("id_column")
    return EmbedSpec(out, bs, None if idc is None else str(idc), keep, source)


def load_spec(path: str | os.PathLike) -> EmbedSpec:
    path = Path(path)
    if not path.exists():
        raise Prom3eError(f"{path}: no such spec file")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise Prom3eError(f"{path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from None
    return parse_spec(raw, str(path))
