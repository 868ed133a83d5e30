"""Training-time masking over the modalities *present* in each row."""

from __future__ import annotations

import torch
from torch import Tensor


def sample_visible(
    present: Tensor,
    visible_probs: tuple[float, ...] = (0.9, 0.1),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick k visible modalities per row among its present ones, P(k = i+1) = probs[i].

    k is capped at (#present − 1) so that something is left to reconstruct, and is at
    least 1. Returns ``bool[B, M]`` ⊆ ``present``. Vectorised: one random score per entry,
    rank within the row, keep the k best (MAE-style ``argsort``).
    """
    b, _ = present.shape
    probs = torch.tensor(visible_probs, dtype=torch.float, device=present.device)
    k = torch.multinomial(probs, b, replacement=True, generator=generator) + 1
    n_present = present.sum(1)
    k = torch.minimum(k, (n_present - 1).clamp_min(1))
    scores = torch.rand(present.shape, generator=generator, device=present.device)
    scores = scores.masked_fill(~present, 2.0)
    rank = scores.argsort(1).argsort(1)
    return rank < k[:, None]


def training_targets(present: Tensor, visible: Tensor, reconstruct_all: bool = False) -> Tensor:
    """The (row, modality) pairs to reconstruct: the masked present ones, or all present."""
    return present.clone() if reconstruct_all else present & ~visible
