"""Imputation baselines: fill the hidden modalities, then one MLP on the concatenation.

- ``zero-fill``: hidden modalities are zeros (the presence mask is an input too).
- ``mean-impute``: the training split's mean embedding of each modality.
- ``knn-impute``: the mean of the k nearest *training* rows that have the modality, by the
  average squared distance over the query's visible modalities (a candidate lacking one
  of them pays that modality's expected squared distance between two random rows).
  Training rows never count as their own neighbour. The masked distance is one inner
  product of augmented vectors (query ``[−2·q_m, ‖q_m‖², 1]`` over its visible m, pool row
  ``[x_m, has_m, has_m·‖x_m‖² + (1 − has_m)·penalty_m]``), so the search is an exact
  top-k over a matrix product, chunked over queries and pool (:func:`prom3e.index.exact_topk`):
  memory stays bounded at any size.

The classifier input is ``[x_1, …, x_M, visible]`` (filled features + the mask). The
training views (the shared modality dropout) are drawn once per row (``n_views`` of them)
and imputed once, so the k-NN search is not repeated every epoch.

On global embeddings these are exactly the usual baselines: nothing differs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from prom3e.data.table import ModalTable
from prom3e.index import exact_topk
from prom3e.methods.base import FitConfig, TorchMethod, classification_loss, drop_modalities, mlp


class _Head(nn.Module):
    def __init__(self, m: int, dmax: int, width: int, n_classes: int):
        super().__init__()
        self.mlp = mlp(m * dmax + m, 4 * width, n_classes)

    def forward(self, x: Tensor, visible: Tensor) -> Tensor:
        return self.mlp(torch.cat([x.flatten(1), visible.float()], 1))


class ImputeMethod(TorchMethod):
    """Base of the three imputers: ``fill`` hides nothing it may not see."""

    n_views = 4

    def fill(self, x: Tensor, visible: Tensor, exclude: Tensor | None = None) -> Tensor:
        return x * visible[..., None]

    def build(self, train: ModalTable, y: np.ndarray) -> nn.Module:
        x, present = torch.from_numpy(train.padded()), torch.from_numpy(train.present)
        self._fit_pool(x, present)
        gen = torch.Generator().manual_seed(self.cfg.seed + 17)
        views_vis = [present] + [drop_modalities(present, self.cfg.drop_prob, gen) for _ in range(self.n_views - 1)]
        rows = torch.arange(len(x))
        self.views_vis = torch.stack(views_vis)
        self.views_x = torch.stack([self._fill_chunked(x, v, rows) for v in views_vis])
        return _Head(len(self.dims), max(self.dims), self.cfg.width, self.n_classes)

    def _fit_pool(self, x: Tensor, present: Tensor) -> None:
        pass

    @torch.no_grad()
    def _fill_chunked(self, x: Tensor, visible: Tensor, exclude: Tensor | None = None, chunk: int = 1024) -> Tensor:
        parts = []
        for i in range(0, len(x), chunk):
            ex = exclude[i:i + chunk] if exclude is not None else None
            parts.append(self.fill(x[i:i + chunk], visible[i:i + chunk], ex))
        return torch.cat(parts)

    def loss(self, x, visible, present, y, rows):
        v = torch.randint(self.n_views, (len(rows),), device=rows.device)
        xf, vis = self.views_x[v, rows.cpu()], self.views_vis[v, rows.cpu()]
        loss = classification_loss(self.net(xf.to(x.device), vis.to(x.device)), y)
        return loss, {"task": loss.item()}

    def logits(self, x: Tensor, visible: Tensor) -> Tensor:
        return self.net(self.fill(x, visible), visible)

    @torch.no_grad()
    def estimate(self, table: ModalTable, visible: np.ndarray | None, target: int):
        """The filled ``target`` (from the visible modalities) and the table's real ``target``."""
        x, vis = self._inputs(table, visible)
        filled = self._fill_chunked(x, vis)
        d = self.dims[target]
        return filled[:, target, :d].numpy(), table.features[target][:, :d]


class ZeroFill(ImputeMethod):
    name = "zero-fill"
    n_views = 1

    def build(self, train: ModalTable, y: np.ndarray) -> nn.Module:
        return _Head(len(self.dims), max(self.dims), self.cfg.width, self.n_classes)

    def loss(self, x, visible, present, y, rows):  # fresh dropout each batch (filling is free)
        loss = classification_loss(self.net(self.fill(x, visible), visible), y)
        return loss, {"task": loss.item()}

    def estimate(self, table, visible, target):
        return None  # zeros are no estimate


class MeanImpute(ImputeMethod):
    name = "mean-impute"
    estimate_space = "raw"

    def _fit_pool(self, x: Tensor, present: Tensor) -> None:
        counts = present.sum(0).clamp_min(1).float()
        self.mean = (x * present[..., None]).sum(0) / counts[:, None]  # [M, Dmax]

    def fill(self, x, visible, exclude=None):
        mean = self.mean.to(x.device)
        return torch.where(visible[..., None], x, mean)


class KnnImpute(ImputeMethod):
    name = "knn-impute"
    estimate_space = "raw"

    def __init__(self, cfg: FitConfig | None = None, k: int = 10):
        super().__init__(cfg)
        self.k = k

    def _fit_pool(self, x: Tensor, present: Tensor) -> None:
        self.pool_x, self.pool_present = x, present
        counts = present.sum(0).clamp_min(1).float()
        mean = (x * present[..., None]).sum(0) / counts[:, None]
        var = ((x - mean) ** 2 * present[..., None]).sum((0, 2)) / counts
        self.penalty = 2 * var  # expected squared distance of two random rows, per modality [M]
        sq = (x**2).sum(-1)  # [Np, M]
        has = present.float()
        self.pool_aug = torch.cat([x.flatten(1), has, has * sq + (1 - has) * self.penalty], 1)  # [Np, M·D + 2M]

    @torch.no_grad()
    def _fill_chunked(self, x: Tensor, visible: Tensor, exclude: Tensor | None = None, chunk: int = 2048) -> Tensor:
        return self.fill(x, visible, exclude, chunk)  # the search chunks itself (one gallery per target)

    @torch.no_grad()
    def fill(self, x: Tensor, visible: Tensor, exclude: Tensor | None = None, chunk: int = 2048) -> Tensor:
        """``exclude [B]``: each query's own pool row (training), never its neighbour."""
        w = visible.float()
        x = x * visible[..., None]
        query = torch.cat([2 * x.flatten(1), -w * (x**2).sum(-1), -w], 1)  # ⟨query, pool_aug⟩ = −|S|·distance
        pp = self.pool_present
        out = x.clone()
        for t in range(len(self.dims)):  # one exact top-k search per target modality
            need = (~visible[:, t]).nonzero().squeeze(1)
            cand = pp[:, t].nonzero().squeeze(1)
            if not len(need) or not len(cand):
                continue
            k = min(self.k, len(cand))
            extra = 1 if exclude is not None and len(cand) > k else 0  # room to drop the row itself
            gallery = self.pool_aug[cand]
            for i in range(0, len(need), chunk):
                rows = need[i:i + chunk]
                _, idx = exact_topk(query[rows], gallery, k + extra, chunk=16384)
                idx = cand[idx]  # pool row ids [b, k + extra]
                if extra:
                    own = idx == exclude[rows, None].to(idx.device)
                    drop = torch.where(own.any(1), own.float().argmax(1), torch.full_like(rows, k))
                    keep = torch.ones_like(idx, dtype=torch.bool).scatter(1, drop[:, None], False)
                    idx = idx[keep].view(len(rows), k)
                out[rows, t] = self.pool_x[idx, t].mean(1)
        return out
