"""Training objectives in which the posterior's σ has something to do.

With one posterior draw and softmax InfoNCE (the reference), noise can only hurt the
reconstruction, so σ sinks to its floor unless the KL pushes back. Two matching losses over
K draws ``z_k = μ + σ·ε_k`` give σ a job, and a KL with the usual VAE controls keeps it honest:

- ``mc_infonce``: ``−log (1/K)·Σ_k p(true | z_k)`` with p the softmax over the batch's
  candidates. A mixture over draws *rewards* spread when the input is ambiguous (one place,
  many species): covering several candidates beats committing to a wrong one (PCME's argument).
- ``csd_bce``: PCME++'s loss on its closed-form sampled distance, estimated through the
  decoder: ``d²(i, j) = (1/K)·Σ_k ‖f̂(z_k,i) − f_j‖² = ‖f̄_i − f_j‖² + v_i`` (distance of the
  mean decoded draw plus the draws' spread), logits ``α·d² + β`` (α < 0), sigmoid BCE over all
  pairs; same-label / identical targets are positives (PCME++'s pseudo-positives). The spread
  ``v_i`` shifts every logit of row i equally, which a softmax would ignore: under BCE it buys
  margin against confusable negatives at the price of the positive, so it grows exactly when
  the row's negatives are close.
- ``sigma_calibration``: ties the posterior's mean logσ² to the row's expected
  reconstruction loss (a proper scoring rule for a positive mean, ``e·exp(−s) + s``, minimised
  at ``s = log E[e | visible]``; only the spread between rows, not the overall level, which
  stays the KL's and the reconstruction's), so ‖σ‖₁ ranks rows — and visible sets — by how
  hard their targets are to recover.
- ``kl_terms``: KL(N(μ, σ²) ‖ N(0, I)) averaged (the reference) or summed over dimensions,
  with optional free bits (no penalty for a dimension's batch-mean KL below a floor).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from prom3e.models.losses import candidates, distance_logits, same_target

if TYPE_CHECKING:
    from prom3e.distributed import RemoteTargets


def mc_infonce(pred: Tensor, true: Tensor, valid: Tensor, alpha: Tensor, beta: Tensor,
               labels: Tensor | None = None, dedup: bool = True, remote: RemoteTargets | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
    """``−log mean_k softmax_j(α·‖f̂(z_k,i) − f_j‖ + β)[i]`` over real rows.

    ``pred [K, U, C, D]`` (K draws), ``true [U, C, D]``, ``valid [U, C]``; other same-label /
    identical-target rows are not candidates (as in the one-draw loss), and under torchrun
    (``remote``) the other ranks' targets are candidates too. K = 1 is the one-draw loss
    exactly. Returns the loss, the in-batch top-1 accuracy of the first draw and each
    entry's loss ``[U, C]`` (0 at padding).
    """
    k, u, c, _ = pred.shape
    if not bool(valid.any()):
        zero = pred.sum() * 0.0
        return zero, zero.detach(), torch.zeros_like(valid, dtype=zero.dtype)
    keys, drop = candidates(true, valid, labels, dedup, remote)
    logits = distance_logits(pred.flatten(0, 1), keys.expand(k, -1, -1, -1).flatten(0, 1),
                             alpha.repeat(k), beta.repeat(k), drop.repeat(k, 1, 1))  # [K·U, C, N]
    # padding rows: finite logits (an all −∞ row would send NaN through log-softmax's backward)
    logits = logits.masked_fill(~valid.repeat(k, 1)[:, :, None], 0.0)
    logp = logits.log_softmax(-1)[..., :c].diagonal(dim1=-2, dim2=-1).reshape(k, u, c)
    logp = logp.masked_fill(~valid, 0.0)
    mix = torch.logsumexp(logp, 0) - math.log(k)  # log of the mean probability over draws
    each = -mix.masked_fill(~valid, 0.0)
    first = logits[:u]
    acc = (first.argmax(-1) == torch.arange(c, device=pred.device))[valid].float().mean()
    loss = remote.mean(each.sum()) if remote is not None else each.sum() / valid.sum()
    return loss, acc.detach(), each


def csd_bce(pred: Tensor, true: Tensor, valid: Tensor, alpha: Tensor, beta: Tensor,
            labels: Tensor | None = None, dedup: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """PCME++-style sigmoid loss on the sampled distance ``d² = ‖f̄ − f‖² + v`` (see module doc).

    ``pred [K, U, C, D]``; the loss is the BCE summed over a row's real candidates, averaged
    over real rows (a per-row scale comparable to cross-entropy); also each entry's ``[U, C]``.
    """
    k, u, c, _ = pred.shape
    if not bool(valid.any()):
        zero = pred.sum() * 0.0
        return zero, zero.detach(), torch.zeros_like(valid, dtype=zero.dtype)
    pred, true = pred.float(), true.float()
    mean = pred.mean(0)  # [U, C, D]
    sq_pred = pred.pow(2).sum(-1).mean(0)  # E_k ‖f̂_k‖²  [U, C]
    d2 = sq_pred[:, :, None] + true.pow(2).sum(-1)[:, None, :] - 2 * mean @ true.transpose(-1, -2)
    d2 = d2.clamp_min(0.0)
    logits = alpha[:, None, None] * d2 + beta[:, None, None]
    target = torch.eye(c, dtype=torch.bool, device=pred.device).expand(u, c, c).clone()
    same = same_target(true, labels, dedup)
    if same is not None:
        target |= same
    pair_ok = valid[:, :, None] & valid[:, None, :]
    bce = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
    each = (bce * pair_ok).sum(-1)  # [U, C]: 0 at padding rows
    acc = (logits.masked_fill(~pair_ok, float("-inf")).argmax(-1)
           == torch.arange(c, device=pred.device))[valid].float().mean()
    return each.sum() / valid.sum(), acc.detach(), each


def sigma_calibration(logvar: Tensor, entry_loss: Tensor, rows: Tensor, valid: Tensor) -> Tensor:
    """``mean_i [e_i·exp(−s_i) + s_i]``, ``s_i = (ℓ_i − ℓ̄) + c``: ℓ_i the row's mean logσ², ℓ̄
    its batch mean (no gradient), ``e_i`` the row's mean reconstruction loss over its targets
    (detached), c the best offset in closed form (no gradient). The optimum is
    ``ℓ_i − ℓ̄ = log E[e_i | visible] − const``: the term shapes how σ *varies* between rows
    and leaves its overall level to the KL and the reconstruction (a learned offset would let
    the level chase the loss instead). ``entry_loss``/``rows``/``valid``: ``[U, C]`` loss, row
    and realness of each (modality, row) entry; rows with no target are left out."""
    b = logvar.shape[0]
    total = logvar.new_zeros(b).index_add(0, rows[valid], entry_loss.detach()[valid].float())
    count = logvar.new_zeros(b).index_add(0, rows[valid], torch.ones_like(entry_loss[valid], dtype=logvar.dtype))
    has = count > 0
    if int(has.sum()) < 2:
        return logvar.sum() * 0.0
    err = (total[has] / count[has]).clamp_min(1e-6)
    ell = logvar[has].mean(-1)
    d = ell - ell.detach().mean()
    c = torch.log(torch.mean(err * torch.exp(-d.detach())))
    s = d + c
    return (err * torch.exp(-s) + s).mean()


def kl_terms(mu: Tensor, logvar: Tensor, reduction: str = "mean", free_bits: float = 0.0) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)): per dimension, averaged over rows; free bits clamp each
    dimension's batch-mean KL from below (no gradient under the floor); then the mean
    (the reference) or the sum over dimensions."""
    per_dim = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean(0)  # [E]
    if free_bits > 0:
        per_dim = torch.clamp_min(per_dim, free_bits)
    return per_dim.mean() if reduction == "mean" else per_dim.sum()


def clip_share(logvar: Tensor, clip: float, within: float = 0.5) -> Tensor:
    """Share of logσ² values within ``within`` of ±``clip`` (a collapsed σ sits there)."""
    return ((clip - logvar.detach().abs()) < within).float().mean()
