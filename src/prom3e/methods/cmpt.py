"""CMPT — cross-modal proxy tokens, on per-modality embeddings.

Paper: frozen unimodal encoders with rank-1 LoRA; for each missing modality b, a learnable
proxy token is appended to an available modality's token sequence and the encoder's output
there approximates b's class token; loss = task + 0.2·align(proxy, stop-grad real b) where
b is present; gated fusion → classifier.

Here: each modality's "encoder" is a per-modality projection ``d_m → E`` (+ LayerNorm).
The inputs are already the outputs of frozen pretrained encoders, so by default
(``base="trainable"``) the projection is trained in full — a random *frozen* map adaptable
only at LoRA rank 1 is no analogue of a frozen *pretrained* encoder (it capped CMPT's
accuracy: issue 16). ``base="frozen"`` keeps the earlier variant: a frozen random projection
with a trainable rank-``rank`` LoRA residual (``x·W + x·A·B``, B initialised to zero), for a
table whose inputs would need a real frozen model. For every modality b a
learnable proxy query attends (one multi-head attention layer + FFN, post-LN) over the
projected embeddings of the *visible* modalities other than b (plus a learned null key, so
a row with b as its only visible modality still gets a proxy). The alignment loss
``1 − cos(proxy_b, stop_grad(h_b))`` is averaged over the (row, b) pairs where b is
present in the data (the training-time modality dropout provides the missing cases).
Fusion: each modality's vector is its projection when visible, its proxy otherwise; a
softmax gate over modalities weights them; an MLP classifies the sum.

What differs from the paper on global embeddings: the proxy cannot interact with the
available modality's *token sequence* inside a deep encoder (there is one vector per
modality), so it is a single cross-attention over pooled embeddings rather than a token
refined through every encoder layer; the per-modality projection is trained in full (no
frozen encoder exists here; ``base="frozen"`` for LoRA on a frozen random map); and one
proxy query serves b whichever modality is available (the paper learns it per
available-modality encoder).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError
from prom3e.methods.base import FitConfig, ModalityLinear, ProxyMethod, classification_loss, mlp


class LoraProjection(nn.Module):
    """Frozen per-modality projection plus a trainable rank-r residual."""

    def __init__(self, dims: list[int], out: int, rank: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        m, dmax = len(dims), max(dims)
        scale = torch.tensor([1 / np.sqrt(d) for d in dims], dtype=torch.float32)[:, None, None]
        self.register_buffer("frozen", torch.randn(m, dmax, out, generator=g) * scale)  # not a parameter
        self.a = nn.Parameter(torch.randn(m, dmax, rank, generator=g) * scale)
        self.b = nn.Parameter(torch.zeros(m, rank, out))
        self.bias = nn.Parameter(torch.zeros(m, out))
        self.norm = nn.LayerNorm(out)

    def forward(self, x: Tensor) -> Tensor:  # [B, M, Dmax] → [B, M, E]
        base = torch.einsum("bmd,mde->bme", x, self.frozen)
        low = torch.einsum("bmr,mre->bme", torch.einsum("bmd,mdr->bmr", x, self.a), self.b)
        return self.norm(base + low + self.bias)


class TrainableProjection(nn.Module):
    """A fully trainable per-modality projection ``d_m → E`` + LayerNorm."""

    def __init__(self, dims: list[int], out: int):
        super().__init__()
        self.linear = ModalityLinear(dims, out)
        self.norm = nn.LayerNorm(out)

    def forward(self, x: Tensor) -> Tensor:  # [B, M, Dmax] → [B, M, E]
        return self.norm(self.linear(x))


class CmptNet(nn.Module):
    def __init__(self, dims: list[int], width: int, n_classes: int, rank: int, heads: int, seed: int,
                 base: str = "trainable"):
        super().__init__()
        m, e = len(dims), width
        self.heads = heads
        self.project = TrainableProjection(dims, e) if base == "trainable" else LoraProjection(dims, e, rank, seed)
        self.modality = nn.Parameter(torch.randn(m, e) * 0.02)
        self.proxy = nn.Parameter(torch.randn(m, e) * 0.02)  # one learnable proxy query per modality
        self.null = nn.Parameter(torch.zeros(1, e))  # always-visible key
        self.q, self.k, self.v, self.o = (nn.Linear(e, e) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(e), nn.LayerNorm(e)
        self.ffn = nn.Sequential(nn.Linear(e, 2 * e), nn.GELU(), nn.Linear(2 * e, e))
        self.gate = nn.Linear(e, 1)
        self.head = mlp(e, 4 * e, n_classes)

    def embed(self, x: Tensor) -> Tensor:
        """The (LoRA-adapted) projection of every modality: the real embedding h [B, M, E]."""
        return self.project(x)

    def proxies(self, h: Tensor, visible: Tensor) -> Tensor:
        """Proxy of every modality b from the visible modalities other than b: [B, M, E]."""
        b, m, e = h.shape
        keys = torch.cat([self.null.expand(b, 1, e), h + self.modality], 1)  # [B, 1 + M, E]
        ok = visible[:, None, :] & ~torch.eye(m, dtype=torch.bool, device=h.device)  # query b never sees b
        ok = torch.cat([ok.new_ones(b, m, 1), ok], 2)[:, None]  # [B, 1, M, 1 + M]
        split = lambda t: t.unflatten(-1, (self.heads, e // self.heads)).transpose(-3, -2)  # noqa: E731
        q = split(self.q(self.proxy + self.modality)).expand(b, -1, -1, -1)
        att = F.scaled_dot_product_attention(q, split(self.k(keys)), split(self.v(keys)), attn_mask=ok)
        p = self.ln1(self.proxy + self.o(att.transpose(1, 2).flatten(2)))
        return self.ln2(p + self.ffn(p))

    def fuse(self, h: Tensor, p: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
        """Each modality's vector (real where visible, its proxy where hidden) and the gate ``[B, M]``."""
        v = torch.where(visible[..., None], h, p)
        return v, F.softmax(self.gate(v).squeeze(-1), 1)  # gated fusion over modalities

    def forward(self, x: Tensor, visible: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, real h, proxies)."""
        h = self.embed(x)
        p = self.proxies(h, visible)
        v, g = self.fuse(h, p, visible)
        return self.head((g[..., None] * v).sum(1)), h, p


def alignment_loss(h: Tensor, proxies: Tensor, present: Tensor) -> Tensor:
    """``1 − cos(proxy_b, stop_grad(h_b))`` averaged over the pairs where b is present."""
    target = h.detach()  # stop-gradient: the proxy moves toward the real embedding, not back
    cos = F.cosine_similarity(proxies, target, dim=-1)
    w = present.float()
    return ((1 - cos) * w).sum() / w.sum().clamp_min(1)


class Cmpt(ProxyMethod):
    name = "cmpt"

    def __init__(self, cfg: FitConfig | None = None, rank: int = 1, heads: int = 4, align_weight: float = 0.2,
                 base: str = "trainable"):
        super().__init__(cfg)
        if base not in ("trainable", "frozen"):
            raise Prom3eError(f"cmpt base must be 'trainable' or 'frozen', got {base!r}")
        self.rank, self.heads, self.align_weight, self.base = rank, heads, align_weight, base

    def build(self, train: ModalTable, y: np.ndarray) -> nn.Module:
        heads = self.heads if self.cfg.width % self.heads == 0 else 1
        return CmptNet(self.dims, self.cfg.width, self.n_classes, self.rank, heads, self.cfg.seed, self.base)

    def loss(self, x, visible, present, y, rows):
        logits, h, p = self.net(x, visible)
        task = classification_loss(logits, y)
        align = alignment_loss(h, p, present)
        return task + self.align_weight * align, {"task": task.item(), "align": align.item()}

