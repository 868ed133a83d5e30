"""A trained aligner: one head per modality (the anchor's is fixed) into one D-space.

Saved as a folder: ``config.json`` (anchor, D, each head's config, training record) and
``model.safetensors`` (tensors only, no pickle). ``load_aligner(path).transform(table)``
maps a feature table (raw encoder features, any subset of the known modalities) to the
aligned table, so a fusion model can be fed raw features through the heads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from prom3e.align.heads import apply, build
from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError
from prom3e.io import atomic_write

FORMAT = "prom3e.aligner/1"
ALIGNER_FILES = ("config.json", "model.safetensors")


class Aligner:
    def __init__(self, anchor: str, dim: int, heads: dict[str, nn.Module],
                 record: dict[str, Any] | None = None, device: str = "cpu",
                 encoders: dict[str, dict] | None = None) -> None:
        if anchor not in heads:
            raise Prom3eError(f"the aligner has no head for its anchor '{anchor}'")
        self.anchor, self.dim, self.heads = anchor, int(dim), heads
        self.record = record or {}
        # {modality: the encoder config 'prom3e embed' recorded for its feature column}: what
        # turns a raw input into this head's input (prom3e serve rebuilds it)
        self.encoders = {m: c for m, c in (encoders or {}).items() if m in heads}
        self.device = device
        for h in heads.values():
            h.to(device).eval()

    @property
    def modalities(self) -> list[str]:
        return list(self.heads)

    @property
    def in_dims(self) -> dict[str, int]:
        return {m: int(h.cfg["in_dim"]) for m, h in self.heads.items()}

    def transform_features(self, name: str, x: np.ndarray) -> np.ndarray:
        """One modality's raw features ``[N, in_dim]`` → unit vectors ``[N, D]``."""
        if name not in self.heads:
            raise Prom3eError(f"the aligner knows no modality '{name}' "
                              f"(it knows: {', '.join(self.heads)})")
        want = self.in_dims[name]
        if x.ndim != 2 or x.shape[1] != want:
            raise Prom3eError(f"modality '{name}' has dim {x.shape[-1]}, "
                              f"the aligner expects {want}")
        return apply(self.heads[name], x, self.device)

    def transform(self, table: ModalTable) -> ModalTable:
        """Every modality of ``table`` → D-dim unit vectors (missing stays missing)."""
        feats = []
        for m, name in enumerate(table.modalities):
            if name not in self.heads:
                raise Prom3eError(f"{table.source}: unknown modality '{name}' "
                                  f"(the aligner knows: {', '.join(self.heads)})")
            if table.dims[m] != self.in_dims[name]:
                raise Prom3eError(f"{table.source}: column '{name}' has dim {table.dims[m]}, "
                                  f"the aligner expects {self.in_dims[name]}")
            rows = np.flatnonzero(table.present[:, m])
            out = np.zeros((len(table), self.dim), np.float32)
            out[rows] = self.transform_features(name, table.features[m][rows])
            feats.append(out)
        return ModalTable(list(table.modalities), feats, table.present.copy(), dict(table.meta),
                          table.source)

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors, mods = {}, []
        for i, (name, h) in enumerate(self.heads.items()):
            mods.append({"name": name, **h.cfg})
            for k, v in h.state_dict().items():
                tensors[f"heads.{i}.{k}"] = v.detach().cpu().contiguous()
        cfg = {"format": FORMAT, "anchor": self.anchor, "dim": self.dim, "modalities": mods,
               "encoders": self.encoders, "train": self.record}
        atomic_write(path / "model.safetensors", lambda tmp: save_file(tensors, tmp))
        atomic_write(path / "config.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(cfg, indent=1, default=_json)))


def _json(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def load_aligner(path: str | os.PathLike, device: str = "cpu") -> Aligner:
    """Load an aligner folder written by ``prom3e align --model-out``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path, w_path = path / "config.json", path / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.exists():
            raise Prom3eError(f"{p}: missing (not an aligner folder)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise Prom3eError(f"{cfg_path}: not valid JSON ({e})") from None
    if cfg.get("format") != FORMAT:
        raise Prom3eError(f"{cfg_path}: not an aligner config (format {cfg.get('format')!r})")
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError) as e:
        raise Prom3eError(f"{w_path}: unreadable ({e})") from None
    heads: dict[str, nn.Module] = {}
    for i, m in enumerate(cfg["modalities"]):
        head = build(m)
        prefix = f"heads.{i}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            head.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise Prom3eError(f"{w_path}: weights do not fit head '{m['name']}' "
                              f"({str(e).splitlines()[0]})") from None
        heads[m["name"]] = head
    return Aligner(cfg["anchor"], cfg["dim"], heads, cfg.get("train"), device, cfg.get("encoders"))
