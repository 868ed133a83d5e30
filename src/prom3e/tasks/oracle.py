"""An *oracle* fuser: the evaluation's reference points, with the :class:`prom3e.api.Fuser` calls.

It reads the true target from the batch (so reconstruction is perfect, or perfect plus
seeded noise, or deliberately shuffled across rows), and reports a posterior whose
``‖σ‖₁ = E / √k`` for k visible modalities. Use it to check an evaluation pipeline (a
perfect model must score R@1 = 1; a shuffled one must score chance) and in tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prom3e.data.table import ModalTable


@dataclass
class OraclePosterior:
    mu: torch.Tensor
    logvar: torch.Tensor
    hidden: torch.Tensor | None = None

    @property
    def sigma_l1(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar).sum(-1)


class OracleFuser:
    """Perfect (``noise=0``), noisy or row-shuffled (``shuffle=True``) reconstructions."""

    def __init__(self, modalities: Sequence[str], dims: Sequence[int], noise: float = 0.0,
                 shuffle: bool = False, seed: int = 0):
        self.modalities, self.dims = list(modalities), list(dims)
        self.noise, self.shuffle, self.seed = noise, shuffle, seed
        self.embed_dim = max(self.dims)

    def _table(self, batch: ModalTable) -> ModalTable:
        if not isinstance(batch, ModalTable):
            raise TypeError("OracleFuser takes ModalTable batches")
        return batch.check_schema(self.modalities, self.dims)

    def _visible(self, t: ModalTable, visible: Sequence[str] | None) -> np.ndarray:
        cols = np.ones(len(self.modalities), bool) if visible is None else \
            np.isin(self.modalities, list(visible))
        return t.present & cols

    def encode(self, batch: ModalTable, visible: Sequence[str] | None = None, hidden: bool = False,
               batch_size: int = 1024) -> OraclePosterior:
        """μ = normalised mean of the visible embeddings (zero-padded); logσ² = −log k."""
        t = self._table(batch)
        vis = self._visible(t, visible)
        x = torch.from_numpy(t.padded()) * torch.from_numpy(vis)[..., None]
        k = torch.from_numpy(vis.sum(1)).clamp_min(1).float()
        mu = torch.nn.functional.normalize(x.sum(1), dim=-1)
        logvar = (-torch.log(k))[:, None].expand(-1, self.embed_dim).contiguous()
        h = torch.stack([mu, logvar, mu], 1) if hidden else None
        return OraclePosterior(mu, logvar, h)

    def reconstruct(self, batch: ModalTable, targets: Sequence[str] | None = None,
                    visible: Sequence[str] | None = None, n_samples: int = 0, seed: int = 0,
                    batch_size: int = 1024) -> dict[str, torch.Tensor]:
        """The true target embedding (+ seeded noise; rows permuted, seeded, when shuffled)."""
        t = self._table(batch)
        out = {}
        gen = torch.Generator().manual_seed(self.seed)
        for name in targets if targets is not None else self.modalities:
            x = torch.from_numpy(t.feature(name).copy())
            if self.noise:
                x = torch.nn.functional.normalize(x, dim=-1) + self.noise * torch.randn(x.shape, generator=gen)
            if self.shuffle:
                x = torch.from_numpy(np.random.default_rng(self.seed).permutation(x.numpy()))
            out[name] = torch.nn.functional.normalize(x, dim=-1)
        return out

    def features(self, batch: ModalTable, visible: Sequence[str] | None = None,
                 batch_size: int = 1024) -> dict[str, torch.Tensor]:
        post = self.encode(batch, visible, hidden=True)
        return {"mu": post.mu, "tokens": post.hidden.flatten(1)}
