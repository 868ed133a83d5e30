"""The fusion model's encoder written plainly: one readable block and one readable encoder.

:class:`~prom3e.models.prom3e.Block` and :meth:`~prom3e.models.prom3e.Prom3e.encode` are
the fast path (stacked per-modality weights, a batch-constant prefix projected once, only the
read-out positions computed in the last layer). This module computes the same thing the
way the reference (mvrl/proM3E ``model.py``) reads: build each row's full sequence
``[mu] [logvar] reg_1..reg_R v_1..v_L`` and run every block over every position. It reuses
the fast model's parameters, so ``tests/test_model.py`` checks that both agree; nothing in
the product runs it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prom3e.models.prom3e import N_SPECIAL, Block, Posterior, Prom3e


class PlainBlock(nn.Module):
    """A post-LN Transformer block, as the reference writes it::

        x = norm1(attention(x) + x)
        x = norm2(mlp(x) + x),   mlp = [LayerNorm →] Linear → GELU → Linear

    ``from_block`` shares a fast :class:`Block`'s parameters (no copy).
    """

    def __init__(self, block: Block):
        super().__init__()
        self.heads = block.heads
        self.qkv, self.proj, self.ln1 = block.qkv, block.proj, block.ln1
        self.ln_mlp, self.fc1, self.fc2, self.ln2 = block.ln_mlp, block.fc1, block.fc2, block.ln2
        self.dropout = block.drop.p

    def attention(self, x: Tensor, key_ok: Tensor) -> Tensor:
        """Multi-head self-attention over ``x [B, N, E]``; ``key_ok bool[B, N]``: real tokens."""
        b, n, e = x.shape
        dh = e // self.heads
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, dh).transpose(1, 2) for t in (q, k, v))  # [B, h, N, dh]
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)  # [B, h, N, N]
        scores = scores.masked_fill(~key_ok[:, None, None, :], float("-inf"))
        weights = F.dropout(scores.softmax(-1), self.dropout, self.training)
        out = (weights @ v).transpose(1, 2).reshape(b, n, e)
        return F.dropout(self.proj(out), self.dropout, self.training)

    def mlp(self, x: Tensor) -> Tensor:
        h = self.ln_mlp(x) if self.ln_mlp is not None else x
        return F.dropout(self.fc2(F.gelu(self.fc1(h))), self.dropout, self.training)

    def forward(self, x: Tensor, key_ok: Tensor) -> Tensor:
        x = self.ln1(self.attention(x, key_ok) + x)
        return self.ln2(self.mlp(x) + x)


def project(model: Prom3e, x: Tensor, m: int) -> Tensor:
    """Modality ``m``'s projector on ``x [B, Dmax]`` + its modality-id vector → ``[B, E]``:
    ``LayerNorm → Linear → GELU → Linear`` over the modality's own ``d`` dims."""
    p, d = model.project, model.cfg.dims[m]
    h = F.layer_norm(x[:, :d], (d,), p.norm_w[m, :d], p.norm_b[m, :d])
    h = F.gelu(h @ p.w1[m, :d] + p.b1[m])
    return h @ p.w2[m] + p.b2[m] + model.modality_embed[m]


def decode(model: Prom3e, z: Tensor, m: int) -> Tensor:
    """Modality ``m``'s decoder on ``z [B, E]`` → unit-norm ``[B, d]``."""
    p, d = model.decode_mlp, model.cfg.dims[m]
    if p.norm_w is not None:
        z = F.layer_norm(z, z.shape[-1:], p.norm_w[m], p.norm_b[m])
    out = F.gelu(z @ p.w1[m] + p.b1[m]) @ p.w2[m, :, :d] + p.b2[m, :d]
    return F.normalize(out, dim=-1)


def encode(model: Prom3e, x: Tensor, visible: Tensor) -> Posterior:
    """The posterior of :meth:`Prom3e.encode`, computed plainly.

    ``x [B, M, Dmax]``, ``visible bool[B, M]``: each row's visible tokens in modality order,
    padded to the longest row; padding is never attended (a key-padding mask).
    """
    b, n_mod = visible.shape
    length = int(visible.sum(1).max())
    tokens = x.new_zeros(b, length, model.cfg.embed_dim)
    token_ok = torch.zeros(b, length, dtype=torch.bool)
    for row in range(b):
        for place, m in enumerate(visible[row].nonzero().flatten().tolist()):
            tokens[row, place] = project(model, x[row:row + 1, m], m)[0]
            token_ok[row, place] = True
    prefix = model.prefix.expand(b, -1, -1)
    seq = torch.cat([prefix, tokens], 1)
    key_ok = torch.cat([token_ok.new_ones(b, prefix.shape[1]), token_ok], 1)
    for block in model.blocks:
        seq = PlainBlock(block)(seq, key_ok)
    mu_out, lv_out = seq[:, 0], seq[:, 1]
    head = model.cfg.posterior_head
    if head == "affine":
        lv_out = lv_out * model.logvar_scale + model.logvar_shift
    elif head == "linear":
        mu_out, lv_out = model.mu_head(mu_out), model.logvar_head(lv_out)
    elif head == "poe":  # precision = prior + one expert per visible modality, read off its own token
        mu_out = model.mu_head(mu_out)
        precision = model.log_prior_precision.exp().expand(b, -1)
        for place in range(length):
            expert = model.precision_head(tokens[:, place]).exp()
            precision = precision + torch.where(token_ok[:, place, None], expert, 0.0)
        lv_out = -precision.log()
    c = model.cfg.logvar_clip
    return Posterior(F.normalize(mu_out, dim=-1), c * torch.tanh(lv_out / c), seq[:, :N_SPECIAL + model.cfg.registers])
