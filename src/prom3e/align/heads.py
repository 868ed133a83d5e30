"""Projection heads into the shared D-space (outputs are unit vectors).

- ``Head``: standardise (statistics of the training rows) → body → ``Linear(·, D)``; the
  body is an MLP (default), nothing (``linear``), or a trainable encoder's tower.
- ``AnchorProjection``: the frozen anchor's fixed map to D: centre, project on the top-D
  principal axes of the training rows (``pca``; ``pca_whiten`` also scales each axis to
  unit variance), or only centre (``center``, needs D = anchor dim).

Every head is rebuilt from its JSON config; weights live in safetensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prom3e.errors import Prom3eError

HEAD_KINDS = ("mlp", "linear", "tower")
ANCHOR_KINDS = ("pca", "pca_whiten", "center")


class Standardize(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        self.mean.copy_(x.mean(0))
        std = x.std(0, unbiased=False)
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _tower(encoder: dict[str, Any]) -> nn.Module:
    from prom3e.encoders.registry import get_encoder

    enc = get_encoder(encoder["encoder"], **encoder.get("options", {}))
    tower = enc.tower()
    if tower is None:
        raise Prom3eError(f"encoder '{encoder['encoder']}' has no trainable tower")
    return tower


class Head(nn.Module):
    """One modality's trainable projection to the D-space."""

    def __init__(self, in_dim: int, dim: int, kind: str = "mlp", hidden: int = 1024,
                 dropout: float = 0.1, encoder: dict[str, Any] | None = None) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise Prom3eError(f"unknown head kind '{kind}' (choose from {', '.join(HEAD_KINDS)})")
        self.cfg = {"type": "head", "kind": kind, "in_dim": int(in_dim), "dim": int(dim),
                    "hidden": int(hidden), "dropout": float(dropout), "encoder": encoder}
        self.norm = Standardize(in_dim)
        if kind == "mlp":
            self.body: nn.Module = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(),
                                                 nn.Dropout(dropout))
            width = hidden
        elif kind == "linear":
            self.body, width = nn.Identity(), in_dim
        else:
            if not encoder:
                raise Prom3eError("a 'tower' head needs its encoder's config")
            self.body = _tower(encoder)
            width = int(self.body.out_dim)
        self.proj = nn.Linear(width, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.proj(self.body(self.norm(x))), dim=-1)


class AnchorProjection(nn.Module):
    """The frozen anchor's fixed linear map to the D-space (no trainable parameters)."""

    def __init__(self, in_dim: int, dim: int, kind: str = "pca") -> None:
        super().__init__()
        if kind not in ANCHOR_KINDS:
            raise Prom3eError(f"unknown anchor projection '{kind}' "
                              f"(choose from {', '.join(ANCHOR_KINDS)})")
        if kind == "center" and dim != in_dim:
            raise Prom3eError(f"anchor projection 'center' keeps the anchor's dim {in_dim}; "
                              f"D = {dim} needs 'pca'")
        if dim > in_dim:
            raise Prom3eError(f"D = {dim} exceeds the anchor's dim {in_dim}")
        self.cfg = {"type": "anchor", "kind": kind, "in_dim": int(in_dim), "dim": int(dim)}
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("weight", torch.eye(in_dim)[:, :dim].contiguous())

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        mean = x.mean(0)
        self.mean.copy_(mean)
        kind, dim = self.cfg["kind"], self.cfg["dim"]
        if kind == "center":
            return
        xc = (x - mean).double()
        cov = (xc.T @ xc / max(1, x.shape[0] - 1)).float()
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]
        evecs = evecs * torch.sign(evecs[evecs.abs().argmax(0), torch.arange(dim)])  # fix signs
        if kind == "pca_whiten":
            evecs = evecs / evals.clamp(min=1e-8 * float(evals[0])).sqrt()
        self.weight.copy_(evecs.float())

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize((x - self.mean) @ self.weight, dim=-1)


def build(cfg: dict[str, Any]) -> nn.Module:
    """A head or anchor projection from its saved config."""
    if cfg.get("type") == "anchor":
        return AnchorProjection(cfg["in_dim"], cfg["dim"], cfg["kind"])
    return Head(cfg["in_dim"], cfg["dim"], cfg["kind"], cfg.get("hidden", 1024),
                cfg.get("dropout", 0.0), cfg.get("encoder"))


@torch.no_grad()
def apply(module: nn.Module, x: np.ndarray, device: str = "cpu",
          batch_size: int = 8192) -> np.ndarray:
    """Run a head on ``float32[N, in_dim]`` in batches → ``float32[N, D]``."""
    module.eval()
    out = [module(torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size], np.float32))
                  .to(device)).cpu().numpy() for s in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, module.cfg["dim"]), np.float32)
