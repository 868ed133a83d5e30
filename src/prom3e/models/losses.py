"""ProM3E's losses: contrastive Euclidean reconstruction and the VIB KL term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pairwise_distance(a: Tensor, b: Tensor) -> Tensor:
    """``[U, C, D] × [U, C', D] → [U, C, C']`` Euclidean distances (safe gradient at 0)."""
    sq = a.pow(2).sum(-1)[..., :, None] + b.pow(2).sum(-1)[..., None, :] - 2 * a @ b.transpose(-1, -2)
    return sq.clamp_min(1e-8).sqrt()


def contrastive_reconstruction(
    pred: Tensor,
    true: Tensor,
    valid: Tensor,
    alpha: Tensor,
    beta: Tensor,
    labels: Tensor | None = None,
    dedup: bool = True,
) -> tuple[Tensor, Tensor]:
    """InfoNCE over Euclidean distances, per modality, with the diagonal as positive.

    ``pred``/``true``: ``[U, C, D]`` reconstructions and real embeddings of one modality
    per group; ``valid [U, C]`` marks real entries; logits = α·‖f̂ʲ − fᵏ‖ + β with α < 0.
    Other rows with the same label (``labels [U, C]``, −1 = none) or an identical target
    embedding (``dedup``: e.g. one satellite tile shared by many rows) are not negatives.
    Returns the mean cross-entropy over real entries and the in-batch top-1 accuracy.
    """
    u, c, _ = pred.shape
    logits = alpha[:, None, None] * pairwise_distance(pred, true) + beta[:, None, None]
    eye = torch.eye(c, dtype=torch.bool, device=pred.device)
    not_negative = torch.zeros(u, c, c, dtype=torch.bool, device=pred.device)
    if labels is not None:
        not_negative |= (labels[:, :, None] == labels[:, None, :]) & (labels[:, :, None] >= 0)
    if dedup:
        with torch.no_grad():
            not_negative |= pairwise_distance(true, true) < 1e-3
    keep = valid[:, None, :] & (eye | ~not_negative)
    logits = logits.masked_fill(~keep, float("-inf"))
    target = torch.arange(c, device=pred.device).expand(u, c)
    rows = valid.reshape(-1)
    if not bool(rows.any()):  # nothing to reconstruct in this batch
        zero = pred.sum() * 0.0
        return zero, zero.detach()
    flat = logits.reshape(u * c, c)[rows]
    loss = F.cross_entropy(flat, target.reshape(-1)[rows])
    acc = (flat.argmax(-1) == target.reshape(-1)[rows]).float().mean().detach()
    return loss, acc


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)), averaged over rows and dimensions (as the reference)."""
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
