"""List-valued cells: tags such as ``['call', 'flight call']`` or species codes ``['houspa']``.

A cell is a list (an Arrow list column), or a string holding a Python- or JSON-style list.
Items are stripped (and lower-cased by default), de-duplicated and sorted, so the order and
spelling of the list do not matter. An empty list ``[]``, a cell that is not a list (``-``,
``?``) or a list of empty items is *missing*.

- ``minilm_list``: the MiniLM embedding of the items — the mean of each item's embedding
  (``combine: mean``, re-normalised; each distinct item encoded once) or of the items joined
  with ``", "`` (``combine: join``).
- ``multi_hot``: one bucket per item of a fixed ``vocabulary`` (+ one for any other item), or
  ``dim`` hashed buckets (crc32: stable across runs and machines); L2-normalised.
"""

from __future__ import annotations

import ast
import json
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from prom3e.encoders.base import Encoder
from prom3e.encoders.text import MiniLMEncoder
from prom3e.errors import Prom3eError


def parse_list(cell: Any, lowercase: bool = True) -> list[str] | None:
    """A list-valued cell → sorted distinct non-empty items, or ``None`` (missing)."""
    if isinstance(cell, str):
        s = cell.strip()
        if not (s.startswith("[") and s.endswith("]")):
            return None
        try:
            cell = ast.literal_eval(s)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            try:
                cell = json.loads(s)
            except ValueError:
                return None
    if not isinstance(cell, list | tuple | np.ndarray):
        return None
    items = {" ".join(str(v).split()) for v in cell if v is not None}
    items = {v.lower() if lowercase else v for v in items if v}
    return sorted(items) or None


def is_empty_list(cell: Any) -> bool:
    """``[]`` or ``['']`` (as a string or a list): an empty input, not an unusable one."""
    if isinstance(cell, str):
        s = cell.strip()
        if not (s.startswith("[") and s.endswith("]")):
            return False
        try:
            cell = ast.literal_eval(s)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return False
    return isinstance(cell, list | tuple) and all(v is None or not str(v).strip() for v in cell)


class ListTextEncoder(MiniLMEncoder):
    """MiniLM over the items of a list-valued cell (mean of item embeddings, or joined)."""

    name = "minilm_list"
    input_kind = "list"
    description = "all-MiniLM-L6-v2 of a list's items (mean or joined), 384-d, unit norm"

    def __init__(self, combine: str = "mean", lowercase: bool = True, **kwargs: Any) -> None:
        if combine not in ("mean", "join"):
            raise Prom3eError(f"minilm_list: combine must be 'mean' or 'join', not {combine!r}")
        super().__init__(**kwargs)
        self.combine, self.lowercase = combine, bool(lowercase)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "combine": self.combine, "lowercase": self.lowercase}

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        lists = [parse_list(v, self.lowercase) for v in inputs]
        ok = np.array([items is not None for items in lists], bool)
        out = np.zeros((len(inputs), self.dim), np.float32)
        if self.combine == "join":
            x, good = super()._encode([", ".join(items) if items else "" for items in lists])
            return x, good & ok
        flat = sorted({i for items in lists if items for i in items})
        if flat:
            emb, _ = super()._encode(flat)
            where = {item: k for k, item in enumerate(flat)}
            for r in np.flatnonzero(ok):
                v = emb[[where[i] for i in lists[r]]].mean(0)
                out[r] = v / max(float(np.linalg.norm(v)), 1e-12)
        return out, ok


class MultiHotEncoder(Encoder):
    """Multi-hot of a list's items over a fixed vocabulary or hashed buckets; unit norm."""

    name = "multi_hot"
    input_kind = "list"
    description = "multi-hot of a list's items (vocabulary + 'other', or hashed buckets), unit norm"

    def __init__(self, vocabulary: Sequence[str] | None = None, dim: int = 256, lowercase: bool = True,
                 device: str = "cpu", batch_size: int = 65536) -> None:
        super().__init__("cpu", batch_size)
        self.lowercase = bool(lowercase)
        self.vocabulary = None
        if vocabulary is not None:
            vocab = sorted({(" ".join(str(v).split())).lower() if lowercase else " ".join(str(v).split())
                            for v in vocabulary} - {""})
            if not vocab:
                raise Prom3eError("multi_hot: the vocabulary is empty")
            self.vocabulary = vocab
            self._index = {v: i for i, v in enumerate(vocab)}
            self.dim = len(vocab) + 1  # the last bucket: any item outside the vocabulary
        else:
            if int(dim) < 2:
                raise Prom3eError("multi_hot: dim must be ≥ 2")
            self.dim = int(dim)

    def options(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary, "dim": self.dim, "lowercase": self.lowercase}

    def _bucket(self, item: str) -> int:
        if self.vocabulary is not None:
            return self._index.get(item, self.dim - 1)
        return zlib.crc32(item.encode()) % self.dim

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(inputs), self.dim), np.float32)
        ok = np.zeros(len(inputs), bool)
        for r, v in enumerate(inputs):
            items = parse_list(v, self.lowercase)
            if items is None:
                continue
            out[r, [self._bucket(i) for i in items]] = 1.0
            out[r] /= np.linalg.norm(out[r])
            ok[r] = True
        return out, ok
