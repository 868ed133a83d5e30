"""Per-modality layers run as one batched matmul over stacked weights.

Tokens are (row, modality) pairs. :func:`group_pairs` orders them by modality and packs
them into a padded ``[U, C, D]`` buffer (U = modalities that have tokens, C = largest
group); :class:`ModalityMLP` then applies every modality's own MLP with two ``baddbmm``
calls. Only the tokens that exist are computed: no work for absent or unused modalities,
and no Python loop over modalities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from prom3e.distributed import GlobalBatch, RemoteTargets


@dataclass
class Groups:
    """(row, modality) pairs of a boolean ``[B, M]`` mask, grouped by modality."""

    rows: Tensor  # [N] row of each pair, pairs ordered by modality then row
    mods: Tensor  # [N] modality of each pair (ascending)
    used: Tensor  # [U] the modalities that have at least one pair
    group: Tensor  # [N] index of the pair's modality within `used`
    slot: Tensor  # [N] position of the pair within its group
    size: int  # C: the largest group
    counts: Tensor  # [U] pairs per used modality
    index: Tensor  # [U, C] pair at each buffer position (padding repeats a real pair)

    def pack(self, values: Tensor) -> Tensor:
        """``[N, ...]`` → zero-padded ``[U, C, ...]``."""
        buf = values.new_zeros((len(self.used), self.size, *values.shape[1:]))
        buf[self.group, self.slot] = values
        return buf

    def take(self, values: Tensor) -> Tensor:
        """``[N, ...]`` → ``[U, C, ...]`` with one gather; padding holds copies of real pairs
        (cheaper than :meth:`pack`; use it where every consumer masks with :attr:`valid`)."""
        return values[self.index]

    def unpack(self, buf: Tensor) -> Tensor:
        """``[U, C, ...]`` → ``[N, ...]`` in pair order."""
        return buf[self.group, self.slot]

    @property
    def valid(self) -> Tensor:
        """``bool[U, C]``: which buffer positions hold a real pair."""
        return torch.arange(self.size, device=self.rows.device) < self.counts[:, None]


def group_pairs(mask: Tensor) -> Groups:
    """Group the True entries of a ``bool[B, M]`` mask by modality (column)."""
    mods, rows = mask.T.nonzero(as_tuple=True)  # column-major: already sorted by modality
    counts = mask.sum(0)
    has = counts > 0
    used = has.nonzero().squeeze(1)
    group_of_mod = torch.cumsum(has.long(), 0) - 1
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(mods), device=mask.device) - starts[mods]
    size = int(counts.max()) if len(mods) else 0
    index = (starts[used][:, None] + torch.arange(size, device=mask.device)).clamp_max(max(len(mods) - 1, 0))
    return Groups(rows, mods, used, group_of_mod[mods], slot, size, counts[used], index)


class ModalityMLP(nn.Module):
    """M independent ``[LN →] Linear → GELU → Linear`` MLPs with per-modality in/out dims.

    Weights are stacked as ``[M, Din_max, H]`` and ``[M, H, Dout_max]``; a modality with a
    smaller dim uses the leading rows/columns (padding stays zero and is never read).
    """

    def __init__(self, in_dims: list[int], hidden: int, out_dims: list[int], in_norm: bool):
        super().__init__()
        m, din, dout = len(in_dims), max(in_dims), max(out_dims)
        self.in_dims, self.out_dims = list(in_dims), list(out_dims)
        self.uniform_in = len(set(in_dims)) == 1
        self.uniform_out = len(set(out_dims)) == 1
        self.w1 = nn.Parameter(torch.empty(m, din, hidden))
        self.b1 = nn.Parameter(torch.zeros(m, hidden))
        self.w2 = nn.Parameter(torch.empty(m, hidden, dout))
        self.b2 = nn.Parameter(torch.zeros(m, dout))
        self.norm_w = nn.Parameter(torch.ones(m, din)) if in_norm else None
        self.norm_b = nn.Parameter(torch.zeros(m, din)) if in_norm else None
        dims = torch.arange(din)
        self.register_buffer("in_mask", dims < torch.tensor(in_dims)[:, None], persistent=False)
        self.register_buffer("in_len", torch.tensor(in_dims, dtype=torch.float32), persistent=False)
        outs = torch.arange(dout)
        self.register_buffer("out_mask", outs < torch.tensor(out_dims)[:, None], persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for w, fan_in in ((self.w1, self.in_len[:, None, None]), (self.w2, self.w2.shape[1])):
                w.normal_().mul_(fan_in**-0.5)
            self.w1.mul_(self.in_mask[:, :, None])
            self.w2.mul_(self.out_mask[:, None, :])

    def n_effective_params(self) -> int:
        """Parameters excluding the zero padding of unequal dims."""
        h = self.w1.shape[2]
        per = [di * h + h + h * do + do + (2 * di if self.norm_w is not None else 0)
               for di, do in zip(self.in_dims, self.out_dims, strict=True)]
        return sum(per)

    def _norm(self, buf: Tensor, used: Tensor, pick) -> Tensor:
        if self.uniform_in:
            y = F.layer_norm(buf, buf.shape[-1:])
            return y * pick(self.norm_w)[:, None, :] + pick(self.norm_b)[:, None, :]
        # layer norm over each modality's own dims only; padding stays zero
        mask = pick(self.in_mask)[:, None, :].to(buf.dtype)
        n = pick(self.in_len)[:, None, None]
        buf = buf * mask
        mean = buf.sum(-1, keepdim=True) / n
        cent = (buf - mean) * mask
        y = cent * torch.rsqrt(cent.pow(2).sum(-1, keepdim=True) / n + 1e-5)
        return (y * pick(self.norm_w)[:, None, :] + pick(self.norm_b)[:, None, :]) * mask

    def weights(self, used: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(w1, b1, w2, b2)`` of modalities ``used``, optionally cast: slice and cast once when
        the same layers run many times (e.g. one decode per posterior draw)."""
        ps = (self.w1, self.b1, self.w2, self.b2)
        if len(used) != self.w1.shape[0]:  # skip the copy when every modality is used
            ps = tuple(p[used] for p in ps)
        return ps if dtype is None else tuple(p.to(dtype) for p in ps)  # type: ignore[return-value]

    def forward(self, buf: Tensor, used: Tensor, extra_bias: Tensor | None = None,
                weights: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """``buf [U, C, Din_max]`` of modalities ``used [U]`` → ``[U, C, Dout_max]``.

        ``extra_bias [M, Dout_max]`` (e.g. a modality-id vector) is folded into the output bias;
        ``weights``: :meth:`weights` of ``used``, when the caller has them already."""
        def pick(p: Tensor) -> Tensor:  # skip the copy when every modality is used
            return p if len(used) == p.shape[0] else p[used]

        if self.norm_w is not None:
            buf = self._norm(buf, used, pick)
        w1, b1, w2, b2 = weights if weights is not None else self.weights(used)
        if extra_bias is not None:
            b2 = b2 + pick(extra_bias)
        h = F.gelu(torch.baddbmm(b1[:, None, :], buf, w1))
        out = torch.baddbmm(b2[:, None, :], h, w2)
        if not self.uniform_out:
            out = out * pick(self.out_mask)[:, None, :].to(out.dtype)
        return out


def remote_targets(batch: GlobalBatch, used: Tensor) -> RemoteTargets:
    """The other ranks' targets of modalities ``used [U]`` in ``batch``, packed ``[U, K, ·]``."""
    from prom3e.distributed import RemoteTargets

    mask = batch.targets.clone()
    mask[batch.start:batch.start + batch.rows] = False
    g = group_pairs(mask[:, used])  # g.mods index into `used`
    u, k = len(used), g.size
    true = batch.x.new_zeros((u, k, batch.x.shape[2]))
    valid = torch.zeros(u, k, dtype=torch.bool, device=batch.x.device)
    true[g.mods, g.slot] = batch.x[g.rows, used[g.mods]]
    valid[g.mods, g.slot] = True
    labels = None
    if batch.labels is not None:
        labels = torch.full((u, k), -1, dtype=batch.labels.dtype, device=batch.x.device)
        labels[g.mods, g.slot] = batch.labels[g.rows]
    return RemoteTargets(true, valid, labels, int(batch.targets.sum()), batch.world)
