"""Environment: a covariate vector (e.g. 19 bioclim variables + elevation).

The fixed front checks the vector and optionally standardises it with given statistics;
the trainable tower is a SINR-style residual MLP (``Linear → ReLU → depth × ResLayer``,
the layout of TaxaBind's ``MVRL/ecoclim``), trained by ``prom3e align``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from prom3e.encoders.base import Encoder
from prom3e.errors import Prom3eError


def residual_mlp(n_inputs: int, hidden: int = 256, depth: int = 4, dropout: float = 0.1):
    """SINR residual MLP: ``feats.0`` Linear, ``feats.1`` ReLU, ``feats.2…`` ResLayers."""
    import torch.nn as nn

    class ResLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1, self.w2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
            self.drop = nn.Dropout(dropout)

        def forward(self, x):
            return x + self.w2(self.drop(self.w1(x).relu())).relu()

    class ResidualMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.out_dim = hidden
            self.feats = nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(),
                                       *[ResLayer() for _ in range(depth)])

        def forward(self, x):
            return self.feats(x)

    return ResidualMLP()


def parse_vectors(inputs: Sequence[Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(float32[B, n], bool[B] valid)``: a row is valid when it has n finite numbers."""
    out = np.zeros((len(inputs), n), np.float32)
    ok = np.zeros(len(inputs), bool)
    for i, v in enumerate(inputs):
        if v is None:
            continue
        try:
            a = np.asarray(v, np.float64).reshape(-1)
        except (TypeError, ValueError):
            continue
        if a.size == n and np.isfinite(a).all():
            out[i], ok[i] = a, True
    return out, ok


class EnvEncoder(Encoder):
    """Covariates → (standardised) vector; tower = residual MLP."""

    name = "env_mlp"
    input_kind = "vector"
    trainable = True
    description = "covariate vector + SINR-style residual MLP tower"

    def __init__(self, n_inputs: int, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, hidden: int = 256, depth: int = 4,
                 dropout: float = 0.1, seed: int = 0, device: str = "cpu",
                 batch_size: int = 4096) -> None:
        super().__init__(device, batch_size)
        self.dim = int(n_inputs)
        if self.dim < 1:
            raise Prom3eError("env_mlp: n_inputs must be ≥ 1")
        for k, v in (("mean", mean), ("std", std)):
            if v is not None and len(v) != self.dim:
                raise Prom3eError(f"env_mlp: {k} has {len(v)} values, want {self.dim}")
        if std is not None and any(float(s) <= 0 for s in std):
            raise Prom3eError("env_mlp: std values must be positive")
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        self.hidden, self.depth, self.seed = int(hidden), int(depth), int(seed)
        self.dropout = float(dropout)

    def options(self) -> dict[str, Any]:
        return {"n_inputs": self.dim, "mean": self.mean, "std": self.std, "hidden": self.hidden,
                "depth": self.depth, "dropout": self.dropout, "seed": self.seed}

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        x, ok = parse_vectors(inputs, self.dim)
        if self.mean is not None:
            x = x - np.asarray(self.mean, np.float32)
        if self.std is not None:
            x = x / np.asarray(self.std, np.float32)
        return np.where(ok[:, None], x, 0).astype(np.float32), ok

    def tower(self):
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return residual_mlp(self.dim, self.hidden, self.depth, self.dropout)
