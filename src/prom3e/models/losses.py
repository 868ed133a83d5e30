"""ProM3E's losses: contrastive Euclidean reconstruction and the VIB KL term."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from prom3e.distributed import RemoteTargets

EPS = 1e-8  # squared distances are clamped here: finite gradient of √ at 0


class _DistanceLogits(torch.autograd.Function):
    """``α·√max(‖a‖² + ‖b‖² − 2·ab, ε) + β`` per group, dropped entries −∞, in few passes.

    The same function as autograd through ``cdist``-style distances, ``addcmul`` and
    ``masked_fill``, with a hand-written backward: it keeps one ``[U, C, C']`` tensor
    (the distances) instead of autograd's several, and folds the chain rule's scalings into
    one division (the loss is element-wise bound here, not matmul bound).
    """

    @staticmethod
    def forward(ctx, na: Tensor, nb: Tensor, ab: Tensor, alpha: Tensor, beta: Tensor,
                drop: Tensor | None) -> Tensor:
        d = (na[:, :, None] + nb[:, None, :]).sub_(ab, alpha=2).clamp_min_(EPS).sqrt_()
        logits = torch.addcmul(beta[:, None, None], d, alpha[:, None, None])
        if drop is not None:
            logits.masked_fill_(drop, float("-inf"))
        ctx.save_for_backward(d, alpha)
        return logits

    @staticmethod
    def backward(ctx, g: Tensor):
        d, alpha = ctx.saved_tensors
        need_na, need_nb, need_ab, need_alpha, need_beta, _ = ctx.needs_input_grad
        g_alpha = torch.linalg.vecdot(g.flatten(1), d.flatten(1)) if need_alpha else None
        g_beta = g.sum((1, 2)) if need_beta else None
        # ∂/∂ab = g·α·(−2)/(2d) = −α·g/d; zero where the clamp held (as clamp_min's gradient)
        g_ab = torch.div(g, d).mul_(-alpha[:, None, None])
        floor = torch.tensor(EPS, dtype=d.dtype).sqrt().item()  # √ε exactly as the forward rounds it
        if float(d.amin()) <= floor:
            g_ab.masked_fill_(d <= floor, 0.0)
        g_na = g_ab.sum(2).mul_(-0.5) if need_na else None
        g_nb = g_ab.sum(1).mul_(-0.5) if need_nb else None
        return g_na, g_nb, g_ab if need_ab else None, g_alpha, g_beta, None


def distance_logits(a: Tensor, b: Tensor, alpha: Tensor, beta: Tensor, drop: Tensor | None = None) -> Tensor:
    """``α[u]·‖a[u,i] − b[u,j]‖ + β[u]`` → ``[U, C, C']``, −∞ where ``drop`` (broadcastable)."""
    na, nb = _wide(a).pow(2).sum(-1), _wide(b).pow(2).sum(-1)
    return _DistanceLogits.apply(na, nb, a @ b.transpose(-1, -2), _wide(alpha), _wide(beta), drop)


def _wide(t: Tensor) -> Tensor:
    """At least fp32 (float64 stays float64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


@torch.no_grad()
def near_duplicates(x: Tensor, tol: float = 1e-3) -> Tensor:
    """``[U, C, D]`` → ``bool[U, C, C]``: pairs closer than ``tol``.

    bf16 products cannot resolve a distance of 1e-3, so the decision is made in fp32. Under
    autocast, a low-precision Gram matrix first proposes candidate pairs (with a margin far
    above its rounding error, so none is missed) and exact fp32 differences decide those; with
    no autocast, or when candidates are many, one fp32 Gram matrix decides.
    """
    kind, (u, c, _) = x.device.type, x.shape
    low = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    with torch.autocast(kind, enabled=False):
        x = x.float()
        n = x.pow(2).sum(-1)
        both = n[:, :, None] + n[:, None, :]
        if low is not None:
            xl = x.to(low)
            sq = both.sub_(torch.bmm(xl, xl.transpose(-1, -2)), alpha=2)  # error ≲ 2⁻⁷·‖a‖‖b‖
            candidate = sq < tol * tol + 0.05 * n.amax(1)[:, None, None]
            candidate.diagonal(dim1=1, dim2=2).fill_(False)  # a row is its own duplicate: no check
            g, i, j = candidate.nonzero(as_tuple=True)
            if len(g) <= 16 * u * c:  # true duplicates and a few near misses
                close = (x[g, i] - x[g, j]).pow(2).sum(-1) < tol * tol
                out = torch.zeros(u, c, c, dtype=torch.bool, device=x.device)
                out[g[close], i[close], j[close]] = True
                out.diagonal(dim1=1, dim2=2).fill_(True)
                return out
            both = n[:, :, None] + n[:, None, :]
        return torch.baddbmm(both, x, x.transpose(-1, -2), alpha=-2) < tol * tol


@torch.no_grad()
def near_duplicates_between(x: Tensor, y: Tensor, tol: float = 1e-3) -> Tensor:
    """``[U, C, D]``, ``[U, K, D]`` → ``bool[U, C, K]``: pairs closer than ``tol`` (fp32)."""
    with torch.autocast(x.device.type, enabled=False):
        x, y = x.float(), y.float()
        both = x.pow(2).sum(-1)[:, :, None] + y.pow(2).sum(-1)[:, None, :]
        return torch.baddbmm(both, x, y.transpose(-1, -2), alpha=-2) < tol * tol


def same_target(true: Tensor, labels: Tensor | None, dedup: bool, remote: RemoteTargets | None = None
                ) -> Tensor | None:
    """``bool[U, C, K]``: pairs of an entry and a candidate (the local targets, then the other
    ranks' under torchrun) that share a label (``labels [U, C]``, −1 = none) or an identical
    target embedding (``dedup``), the diagonal excluded; ``None`` when neither applies."""
    if labels is None and not dedup:
        return None
    u, c = true.shape[:2]
    k = c + (remote.true.shape[1] if remote is not None else 0)
    same = torch.zeros(u, c, k, dtype=torch.bool, device=true.device)
    if labels is not None:
        keys = labels if remote is None else torch.cat([labels, remote.labels], 1)
        same |= (labels[:, :, None] == keys[:, None, :]) & (labels[:, :, None] >= 0)
    if dedup:
        same[:, :, :c] |= near_duplicates(true)
        if remote is not None and k > c:
            same[:, :, c:] |= near_duplicates_between(true, remote.true)
    same.diagonal(dim1=1, dim2=2).fill_(False)
    return same


def candidates(true: Tensor, valid: Tensor, labels: Tensor | None, dedup: bool,
               remote: RemoteTargets | None = None) -> tuple[Tensor, Tensor]:
    """The contrastive candidates of each group: ``keys [U, K, D]`` (the local targets first,
    then the other ranks' under torchrun) and ``drop bool[U, C, K]``, the pairs that are not
    negatives: padding columns and :func:`same_target` pairs. A padding row keeps its own
    column, so no row is all −∞ (log-softmax's backward would turn it into NaN)."""
    c = valid.shape[1]
    keys, key_valid = true, valid
    if remote is not None:
        keys = torch.cat([true, remote.true.to(true.dtype)], 1)
        key_valid = torch.cat([valid, remote.valid], 1)
    drop = ~key_valid[:, None, :] & ~torch.eye(c, keys.shape[1], dtype=torch.bool, device=true.device)
    same = same_target(true, labels, dedup, remote)
    return keys, drop if same is None else drop | same


def contrastive_reconstruction(
    pred: Tensor,
    true: Tensor,
    valid: Tensor,
    alpha: Tensor,
    beta: Tensor,
    labels: Tensor | None = None,
    dedup: bool = True,
    remote: RemoteTargets | None = None,
    per_entry: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """InfoNCE over Euclidean distances, per modality, with the diagonal as positive.

    ``pred``/``true``: ``[U, C, D]`` reconstructions and real embeddings of one modality
    per group; ``valid [U, C]`` marks real entries (other entries may hold anything);
    logits = α·‖f̂ʲ − fᵏ‖ + β with α < 0. Other rows with the same label (``labels [U, C]``,
    −1 = none) or an identical target embedding (``dedup``: e.g. one satellite tile shared
    by many rows) are not negatives. Returns the mean cross-entropy over real entries and
    the in-batch top-1 accuracy (and, with ``per_entry``, each entry's cross-entropy ``[U, C]``,
    0 at padding).

    ``remote`` (under torchrun, :func:`prom3e.distributed.gather_batch`): the other ranks'
    targets join the candidates, and the loss is this rank's share of the global batch's
    mean, so that the ranks' averaged gradient is one process's on the global batch.
    """
    u, c, _ = pred.shape
    if not bool(valid.any()):  # nothing to reconstruct in this batch
        zero = pred.sum() * 0.0
        return (zero, zero.detach(), torch.zeros_like(valid, dtype=zero.dtype)) if per_entry else (zero, zero.detach())
    keys, drop = candidates(true, valid, labels, dedup, remote)
    k = keys.shape[1]
    logits = distance_logits(pred, keys, alpha, beta, drop)
    target = torch.arange(c, device=pred.device).expand(u, c).masked_fill(~valid, -100)  # -100: ignored
    flat, target = logits.reshape(u * c, k), target.reshape(-1)
    # an ignored row may have every column masked (−inf): its log-softmax is NaN and, although
    # ignored in the loss, its gradient (NaN·0) would poison every weight — give it finite logits
    flat = flat.masked_fill((target < 0)[:, None], 0.0)
    acc = ((flat.argmax(-1) == target).sum() / valid.sum()).float().detach()
    if per_entry or remote is not None:
        each = F.cross_entropy(flat, target, ignore_index=-100, reduction="none")
        loss = remote.mean(each.sum()) if remote is not None else each.sum() / valid.sum()
        return (loss, acc, each.view(u, c)) if per_entry else (loss, acc)
    return F.cross_entropy(flat, target, ignore_index=-100), acc


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)), averaged over rows and dimensions (as the reference)."""
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
