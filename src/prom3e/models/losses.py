"""ProM3E's losses: contrastive Euclidean reconstruction and the VIB KL term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pairwise_distance(a: Tensor, b: Tensor) -> Tensor:
    """``[U, C, D] × [U, C', D] → [U, C, C']`` Euclidean distances (safe gradient at 0)."""
    sq = (a.pow(2).sum(-1)[..., :, None] + b.pow(2).sum(-1)[..., None, :]).sub_(a @ b.transpose(-1, -2), alpha=2)
    return sq.clamp_min(1e-8).sqrt()


@torch.no_grad()
def near_duplicates(x: Tensor, tol: float = 1e-3) -> Tensor:
    """``[U, C, D]`` → ``bool[U, C, C]``: pairs closer than ``tol`` (computed in fp32 even
    under autocast: bf16 products cannot resolve a distance of 1e-3)."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        n = x.pow(2).sum(-1)
        return torch.baddbmm(n[:, :, None] + n[:, None, :], x, x.transpose(-1, -2), alpha=-2) < tol * tol


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
    per group; ``valid [U, C]`` marks real entries (other entries may hold anything);
    logits = α·‖f̂ʲ − fᵏ‖ + β with α < 0. Other rows with the same label (``labels [U, C]``,
    −1 = none) or an identical target embedding (``dedup``: e.g. one satellite tile shared
    by many rows) are not negatives. Returns the mean cross-entropy over real entries and
    the in-batch top-1 accuracy.
    """
    u, c, _ = pred.shape
    if not bool(valid.any()):  # nothing to reconstruct in this batch
        zero = pred.sum() * 0.0
        return zero, zero.detach()
    logits = torch.addcmul(beta[:, None, None], pairwise_distance(pred, true), alpha[:, None, None])
    drop = ~valid[:, None, :]  # [U, 1, C]: padding columns are never candidates
    if labels is not None or dedup:
        not_negative = torch.zeros(u, c, c, dtype=torch.bool, device=pred.device)
        if labels is not None:
            not_negative |= (labels[:, :, None] == labels[:, None, :]) & (labels[:, :, None] >= 0)
        if dedup:
            not_negative |= near_duplicates(true)
        not_negative.diagonal(dim1=1, dim2=2).fill_(False)
        drop = drop | not_negative
    logits = logits.masked_fill(drop, float("-inf"))
    target = torch.arange(c, device=pred.device).expand(u, c).masked_fill(~valid, -100)  # -100: ignored
    flat, target = logits.reshape(u * c, c), target.reshape(-1)
    loss = F.cross_entropy(flat, target, ignore_index=-100)
    acc = (flat.argmax(-1) == target).sum() / valid.sum()
    return loss, acc.float().detach()


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)), averaged over rows and dimensions (as the reference)."""
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
