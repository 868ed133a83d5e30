"""Imputation baselines: fill the hidden modalities, then one MLP on the concatenation.

- ``zero-fill``: hidden modalities are zeros (the presence mask is an input too).
- ``mean-impute``: the training split's mean embedding of each modality.
- ``knn-impute``: the mean of the k nearest *training* rows that have the modality, by the
  average squared distance over the query's visible modalities (a candidate lacking one
  of them pays that modality's expected squared distance between two random rows).
  Training rows never count as their own neighbour.

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
        x, vis = self._inputs(table, visible)
        filled = self._fill_chunked(x, vis)
        d = self.dims[target]
        return filled[:, target, :d].numpy(), x[:, target, :d].numpy()


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

    def _fit_pool(self, x: Tensor, present: Tensor) -> None:
        counts = present.sum(0).clamp_min(1).float()
        self.mean = (x * present[..., None]).sum(0) / counts[:, None]  # [M, Dmax]

    def fill(self, x, visible, exclude=None):
        mean = self.mean.to(x.device)
        return torch.where(visible[..., None], x, mean)


class KnnImpute(ImputeMethod):
    name = "knn-impute"

    def __init__(self, cfg: FitConfig | None = None, k: int = 10):
        super().__init__(cfg)
        self.k = k

    def _fit_pool(self, x: Tensor, present: Tensor) -> None:
        self.pool_x, self.pool_present = x, present
        self.pool_sq = (x**2).sum(-1)  # [Np, M]
        counts = present.sum(0).clamp_min(1).float()
        mean = (x * present[..., None]).sum(0) / counts[:, None]
        var = ((x - mean) ** 2 * present[..., None]).sum((0, 2)) / counts
        self.penalty = 2 * var  # expected squared distance of two random rows, per modality [M]

    def fill(self, x: Tensor, visible: Tensor, exclude: Tensor | None = None) -> Tensor:
        """``exclude [B]``: each query's own pool row (training), never its neighbour."""
        px, pp = self.pool_x.to(x.device), self.pool_present.to(x.device)
        # squared distances per modality [B, Np, M] via ‖a‖² + ‖b‖² − 2ab, one einsum
        d2 = (x**2).sum(-1)[:, None, :] + self.pool_sq.to(x.device)[None] - 2 * torch.einsum("bmd,nmd->bnm", x, px)
        d2 = torch.where(pp[None], d2.clamp_min(0), self.penalty.to(x.device))
        w = visible.float()
        dist = (d2 * w[:, None, :]).sum(-1) / w.sum(-1, keepdim=True)  # [B, Np]
        if exclude is not None:
            dist[torch.arange(len(x)), exclude.to(x.device)] = float("inf")
        out = x * visible[..., None]
        for t in range(len(self.dims)):  # one top-k per modality (not per sample)
            need = ~visible[:, t]
            if not need.any() or not pp[:, t].any():
                continue
            k = min(self.k, int(pp[:, t].sum()))
            cand = dist[need].masked_fill(~pp[None, :, t], float("inf"))
            idx = cand.topk(k, largest=False).indices  # [b, k]
            out[need, t] = px[idx, t].mean(1)
        return out

