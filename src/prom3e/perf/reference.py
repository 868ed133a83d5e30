"""A re-implementation of the *structure and costs* of the public ProM3E reference model.

Written from the description in the paper and its public code (see docs/PERFORMANCE.md),
for benchmarking only: it is not the reference code, and nothing else uses it. What it
keeps, because that is what the reference pays for:

- one MLP projector per modality (LN → Linear → GELU → Linear) run in a Python loop over
  *all* modalities for every sample, plus a learned modality-id vector;
- ``[mu] [logvar]`` + 4 register tokens, then the visible modalities (one visible set per
  batch, as the reference draws it), through ``nn.TransformerEncoder`` (post-LN, 8 heads,
  MLP 2048, depth 1) over every position;
- one noise scalar per sample; *all* decoders run on every sample;
- the contrastive Euclidean loss (``torch.cdist``, logits = α·d + β, diagonal target) for
  every decoded modality, plus the KL term; fp32, AdamW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RefProm3e(nn.Module):
    def __init__(self, n_mod: int = 6, in_dim: int = 512, embed_dim: int = 1024, depth: int = 1,
                 heads: int = 8, mlp_dim: int = 2048, registers: int = 4, dropout: float = 0.0):
        super().__init__()
        e = embed_dim
        self.projectors = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, e), nn.GELU(), nn.Linear(e, e))
            for _ in range(n_mod))
        self.modality_id = nn.Parameter(torch.randn(n_mod, e) * 0.02)
        self.mu_token = nn.Parameter(torch.randn(1, 1, e) * 0.02)
        self.logvar_token = nn.Parameter(torch.randn(1, 1, e) * 0.02)
        self.registers = nn.Parameter(torch.randn(1, registers, e) * 0.02)
        layer = nn.TransformerEncoderLayer(e, heads, mlp_dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.decoders = nn.ModuleList(
            nn.Sequential(nn.Linear(e, e), nn.GELU(), nn.Linear(e, in_dim)) for _ in range(n_mod))
        self.alpha = nn.Parameter(torch.full((n_mod,), -5.0))
        self.beta = nn.Parameter(torch.full((n_mod,), 5.0))

    def encode(self, xs: list[Tensor], visible: list[int]) -> tuple[Tensor, Tensor]:
        """``xs``: one ``[B, D]`` tensor per modality; ``visible``: the batch's visible set."""
        tokens = [proj(x) + self.modality_id[m] for m, (proj, x) in enumerate(zip(self.projectors, xs, strict=True))]
        b = xs[0].shape[0]
        seq = torch.cat([self.mu_token.expand(b, -1, -1), self.logvar_token.expand(b, -1, -1),
                         self.registers.expand(b, -1, -1), torch.stack([tokens[m] for m in visible], 1)], 1)
        out = self.encoder(seq)
        return F.normalize(out[:, 0], dim=-1), out[:, 1]

    def decode(self, z: Tensor) -> list[Tensor]:
        return [F.normalize(dec(z), dim=-1) for dec in self.decoders]

    def forward(self, xs: list[Tensor], visible: list[int], kl_weight: float = 1e-3) -> Tensor:
        mu, logvar = self.encode(xs, visible)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape[0], 1)
        recon = self.decode(z)
        target = torch.arange(mu.shape[0])
        loss = sum(F.cross_entropy(self.alpha[m] * torch.cdist(r, x) + self.beta[m], target)
                   for m, (r, x) in enumerate(zip(recon, xs, strict=True)))
        kl = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
        return loss + kl_weight * kl


def reference_visible(n_mod: int, probs: tuple[float, ...], generator: torch.Generator) -> list[int]:
    """The reference's masking: one visible set for the whole batch."""
    k = int(torch.multinomial(torch.tensor(probs), 1, generator=generator)) + 1
    return sorted(torch.randperm(n_mod, generator=generator)[:k].tolist())


def reference_params(model: RefProm3e) -> int:
    return sum(p.numel() for p in model.parameters())
