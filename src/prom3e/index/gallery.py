"""Top-k search over a gallery of embeddings: exact (torch) or approximate (faiss).

Scores are inner products of unit-norm vectors (cosine similarity): gallery and queries are
L2-normalised on the way in. ``spec`` picks the engine:

- ``"exact"``: chunked matmul + top-k in torch, memory bounded, no extra dependency;
- anything else is a faiss ``index_factory`` string (``pip install prom3e[faiss]``):
  ``"Flat"`` (exact, faiss's BLAS), ``"IVF1024,Flat"`` (inverted lists; tune ``nprobe``),
  ``"HNSW32"`` (graph; tune ``efSearch``), ``"IVF1024,PQ64"`` (compressed: 64 bytes a vector).

``params`` are faiss search parameters as faiss writes them (``"nprobe=16"``,
``"efSearch=128"``). Each vector carries an int64 id (default: its insertion position, e.g. a
row number); searches return ids. An index saves to one ``.safetensors`` file (written atomically).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from prom3e.errors import Prom3eError
from prom3e.io import atomic_write
from prom3e.metrics import l2n
from prom3e.runtime import progress_bar

EXACT = "exact"
FORMAT = "prom3e-gallery-index/1"


def exact_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int = 10, chunk: int = 131072,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner-product neighbours, scanning the gallery in chunks (bounded memory)."""
    q = queries.to(dtype)
    k = min(k, len(gallery))
    best_s = torch.full((len(q), k), float("-inf"))
    best_i = torch.zeros(len(q), k, dtype=torch.long)
    for start in range(0, len(gallery), chunk):
        g = gallery[start:start + chunk].to(dtype)
        s, i = (q @ g.T).float().topk(min(k, len(g)), dim=1)
        s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i + start], 1)
        best_s, pick = s.topk(k, dim=1)
        best_i = i.gather(1, pick)
    return best_s, best_i


def faiss_available() -> bool:
    """Whether the optional faiss engine imports here."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss():
    try:
        import faiss  # optional dependency
    except ImportError as e:
        raise Prom3eError("approximate indexes need faiss: pip install 'prom3e[faiss]' "
                          "(or use spec='exact')") from e
    faiss.omp_set_num_threads(torch.get_num_threads())
    return faiss


def _as_rows(x, what: str, dim: int | None = None) -> torch.Tensor:
    """Validate a ``[N, dim]`` float array and return it L2-normalised as float32."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2 or not t.is_floating_point():
        raise Prom3eError(f"{what}: expected a 2-D float array [N, dim], got shape {tuple(t.shape)} "
                          f"of {t.dtype}")
    if dim is not None and t.shape[1] != dim:
        raise Prom3eError(f"{what}: vectors have {t.shape[1]} dims, the index holds {dim}")
    bad = ~torch.isfinite(t).all(1)
    if bad.any():
        raise Prom3eError(f"{what}: row {int(bad.nonzero()[0, 0])} has NaN or infinite values")
    return l2n(t)


class IndexAdvice(UserWarning):
    """An approximate index was trained on too few vectors for its size (faiss's own warning,
    rephrased as advice: how many inverted lists suit this gallery)."""


_FAISS_FEW_POINTS = re.compile(r"WARNING clustering (\d+) points to (\d+) centroids: "
                               r"please provide at least (\d+) training points")


def suggested_lists(n: int) -> int:
    """Inverted lists for ``n`` training vectors: a power of two ≤ min(n / 39, 4·√n) (faiss
    wants ≥ 39 training vectors a list; ~4·√N lists is its usual starting point), at least 1."""
    best = max(1.0, min(n / 39, 4 * math.sqrt(n)))
    return 2 ** int(math.log2(best))


def _nlist(index) -> int | None:
    try:
        return int(_faiss().extract_index_ivf(index).nlist)
    except RuntimeError:
        return None


def training_advice(index, n: int, centroids: set[int] | None = None) -> str:
    """One sentence: what suits ``n`` training vectors for this faiss index (``centroids``:
    the k-means sizes faiss found too big for ``n``; default: the inverted lists)."""
    nlist = _nlist(index)
    centroids = {nlist} if centroids is None else centroids
    s = suggested_lists(n)
    parts = []
    if nlist is not None and nlist in centroids:
        fix = f"use about {s} (e.g. 'IVF{s},Flat')" if s >= 2 else "too few for inverted lists: use 'exact'"
        parts.append(f"{nlist} inverted lists want ≥ {39 * nlist} training vectors (39 a list), got {n}: {fix}")
    if centroids - {nlist}:
        k = max(centroids - {nlist})
        parts.append(f"{k}-centroid PQ codebooks want ≥ {39 * k} training vectors, got {n}: use fewer bits a "
                     "code (PQ<M>x4) or a Flat index")
    text = "; ".join(parts)
    return text + (" — or 'exact', fast at this size" if n < 100_000 and "'exact'" not in text else "")


def _report_native(text: list[str], index, n: int, spec: str) -> None:
    """Pass on what faiss printed, its few-training-points warnings replaced by one advice."""
    lines = "".join(text).splitlines()
    few = {int(m.group(2)) for ln in lines if (m := _FAISS_FEW_POINTS.search(ln))}
    other = [ln for ln in lines if not _FAISS_FEW_POINTS.search(ln)]
    if other:
        sys.stderr.write("\n".join(other) + "\n")
    if few:
        warnings.warn(f"'{spec}': {training_advice(index, n, few)}", IndexAdvice, stacklevel=3)


@contextlib.contextmanager
def _native_stderr(sink: list[str]) -> Iterator[None]:
    """Collect what native code writes to file descriptor 2 while the block runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))


class GalleryIndex:
    """A searchable gallery. Build with :meth:`build`, query with :meth:`search`."""

    def __init__(self, dim: int, spec: str = EXACT, params: str = ""):
        self.dim, self.spec, self.params = dim, spec, params
        self._vectors = torch.empty(0, dim)  # exact only
        self._ids = torch.empty(0, dtype=torch.long)
        self._faiss = None
        if spec != EXACT:
            faiss = _faiss()
            try:
                self._faiss = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as e:
                raise Prom3eError(f"faiss cannot build index '{spec}': {str(e).splitlines()[-1]}") from e

    @classmethod
    def build(cls, vectors, spec: str = EXACT, params: str = "", ids=None, train_size: int = 65536,
              seed: int = 0) -> GalleryIndex:
        """Index ``vectors [N, dim]`` (``ids [N]``, default 0..N−1); trained indexes (IVF, PQ)
        learn from a seeded sample of at most ``train_size`` rows."""
        x = _as_rows(vectors, "gallery")
        index = cls(x.shape[1], spec, params)
        if index._faiss is not None and not index._faiss.is_trained:
            g = torch.Generator().manual_seed(seed)
            sample = x[torch.randperm(len(x), generator=g)[:train_size]] if len(x) > train_size else x
            nlist = _nlist(index._faiss)
            if nlist is not None and nlist > len(sample):
                raise Prom3eError(f"cannot train '{spec}': {training_advice(index._faiss, len(sample))}")
            native: list[str] = []
            try:
                with _native_stderr(native):  # faiss prints its advice from C++: ours replaces it
                    index._faiss.train(np.ascontiguousarray(sample.numpy()))
            except RuntimeError as e:
                raise Prom3eError(f"faiss could not train '{spec}' on {len(sample)} vectors: "
                                  f"{str(e).splitlines()[-1]}") from e
            _report_native(native, index._faiss, len(sample), spec)
        index._add(x, ids)
        index.set_params(params)
        return index

    def __len__(self) -> int:
        return len(self._vectors) if self._faiss is None else int(self._faiss.ntotal)

    def nbytes(self) -> int:
        """Size of the searchable data (vectors or faiss's serialised index), ids included."""
        data = self._vectors.nbytes if self._faiss is None else len(_faiss().serialize_index(self._faiss))
        return data + self._ids.nbytes

    def add(self, vectors, ids=None) -> None:
        """Append vectors with ``ids [N]`` (default: positions continuing from ``len(self)``)."""
        self._add(_as_rows(vectors, "gallery", self.dim), ids)

    def _add(self, x: torch.Tensor, ids) -> None:
        """:meth:`add` for rows already validated and normalised."""
        if ids is None:
            new = torch.arange(len(self), len(self) + len(x))
        else:
            new = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids)
            if new.shape != (len(x),) or new.is_floating_point() or new.dtype == torch.bool:
                raise Prom3eError(f"gallery ids: expected {len(x)} integers, got shape {tuple(new.shape)} "
                                  f"of {new.dtype}")
        self._ids = torch.cat([self._ids, new.long()])
        if self._faiss is None:
            self._vectors = torch.cat([self._vectors, x])
        else:
            self._faiss.add(np.ascontiguousarray(x.numpy()))

    def set_params(self, params: str) -> None:
        """faiss search parameters, e.g. ``"nprobe=16"``; ignored by the exact engine."""
        self.params = params
        if self._faiss is not None and params:
            try:
                _faiss().ParameterSpace().set_index_parameters(self._faiss, params)
            except RuntimeError as e:
                raise Prom3eError(f"index '{self.spec}' does not take '{params}': "
                                  f"{str(e).splitlines()[-1]}") from e

    def search(self, queries, k: int = 10, batch: int = 4096, progress: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores float32 [Q, k], ids int64 [Q, k])``, best first; ids are −1 where the
        gallery (or an approximate index's probed part) has fewer than k items."""
        q = _as_rows(queries, "queries", self.dim)
        if k < 1:
            raise Prom3eError(f"k must be ≥ 1, got {k}")
        scores = torch.full((len(q), k), float("-inf"))
        ids = torch.full((len(q), k), -1, dtype=torch.long)
        if len(self) == 0:
            return scores, ids
        for s in progress_bar(range(0, len(q), batch), show=progress, desc="search", unit="batch"):
            part = q[s:s + batch]
            if self._faiss is None:
                sc, ix = exact_topk(part, self._vectors, k)
            else:
                d, i = self._faiss.search(np.ascontiguousarray(part.numpy()), k)
                sc, ix = torch.from_numpy(d), torch.from_numpy(i).long()
            scores[s:s + len(part), : sc.shape[1]] = sc
            ids[s:s + len(part), : ix.shape[1]] = ix
        missing = (scores == float("-inf")) | (ids < 0)  # faiss marks a missing result with id −1
        return scores.masked_fill_(missing, float("-inf")), self._ids[ids.clamp_min(0)].masked_fill_(missing, -1)

    # --- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """One ``.safetensors`` file: the vectors (exact) or faiss's serialised index."""
        from safetensors.torch import save_file

        if self._faiss is None:
            tensors = {"vectors": self._vectors.contiguous()}
        else:
            tensors = {"faiss": torch.from_numpy(_faiss().serialize_index(self._faiss).copy())}
        tensors["ids"] = self._ids.contiguous()
        meta = {"format": FORMAT, "spec": self.spec, "params": self.params, "dim": str(self.dim),
                "count": str(len(self))}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> GalleryIndex:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except (OSError, SafetensorError) as e:
            raise Prom3eError(f"{path}: not a readable index file ({e})") from e
        if meta.get("format") != FORMAT:
            raise Prom3eError(f"{path}: not a prom3e gallery index (metadata: {json.dumps(meta)[:200]})")
        dim, spec = int(meta["dim"]), meta["spec"]
        index = cls.__new__(cls)
        index.dim, index.spec, index.params = dim, spec, ""
        index._vectors, index._faiss, index._ids = torch.empty(0, dim), None, tensors["ids"]
        if spec == EXACT:
            index._vectors = tensors["vectors"]
        else:
            index._faiss = _faiss().deserialize_index(tensors["faiss"].numpy())
        index.set_params(meta.get("params", ""))
        return index
