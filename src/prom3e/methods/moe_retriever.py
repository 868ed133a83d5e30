"""MoE-Retriever — a sparse mixture of experts that retrieves a missing modality's tokens.

Paper: each modality → P pseudo-tokens (pad the vector, reshape to ``[P, c]``, linear
``c → D``). For a row i missing modality t with observed set O, a *supporting group* of
|O| training samples that have t and every modality of O gives intra-modal candidates
(their t-tokens); i's own observed modalities give the inter-modal context. Multi-head
attention, then a sparse MoE (per-modality experts + shared experts, noisy top-k gate
restricted to t's experts, load-balancing loss 1e-2) produce t's tokens. Fusion:
concatenated tokens + position embedding → transformer layer → per-modality mean →
linear head. The first epochs run without the retriever (warm-up).

Here, faithfully on that design, with these choices:
- the supporting pool is the **training split only** (fixed at ``fit``; a training row
  never supports itself); groups are drawn by vectorised pattern-compatible sampling
  (bitmask of each row's modalities; ``(pool & need) == need``; CSR offsets + uniform
  draws), falling back to rows that merely have t when none has all of O;
- attention: t's learned query tokens attend over [intra candidates; inter context];
- experts are GELU MLPs, evaluated densely per target modality (one batched matmul) and
  combined with the sparse top-k weights — the same output as sparse dispatch;
- ``mode="weighted_mean"`` reproduces the released code, which overwrites the MoE output
  with ``0.5·mean(intra) + 0.5·mean(inter)``;
- P = 16 pseudo-tokens (the released code's number) of width D = the shared width
  (``FitConfig.width``, as every other method; the released code's 128 is a grid point);
  ``tokens`` and ``token_dim`` are constructor options;
- predictions are deterministic: each ``predict_proba`` / ``estimate`` call draws its
  supporting groups from a generator re-seeded at the start of the call (training draws
  come from their own seeded stream);
- with a validation set, best-epoch selection only considers epochs after the warm-up (a
  warm-up epoch's weights never learned to use the retriever).

What differs from the paper on global embeddings: the pseudo-tokens are slices of one
vector rather than encoder token sequences, so "token-level" retrieval is retrieval of
reshaped embedding chunks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError
from prom3e.methods.base import FitConfig, TorchMethod, classification_loss


def bitmask(mask: Tensor) -> Tensor:
    """``bool[N, M]`` → ``int64[N]`` with bit m set where modality m is present."""
    return (mask.long() << torch.arange(mask.shape[1], device=mask.device)).sum(1)


def sample_support(pool_bits: Tensor, need: Tensor, g: int, generator: torch.Generator | None = None,
                   exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``g`` pool rows per query whose modalities include ``need [Q]`` (bitmasks), uniformly.

    Returns ``(idx long[Q, g], ok bool[Q, g])``; ``ok`` is False where a query has no
    compatible row (or only itself, ``exclude``). Vectorised over queries: one
    ``[U, Npool]`` compatibility matrix for the U distinct needs, CSR offsets, uniform draws.
    """
    uniq, inv = torch.unique(need, return_inverse=True)
    compat = (pool_bits[None, :] & uniq[:, None]) == uniq[:, None]  # [U, Np]
    counts = compat.sum(1)
    cand = compat.nonzero()[:, 1]  # row-major: grouped by u, ascending pool row
    starts = counts.cumsum(0) - counts
    cnt, st = counts[inv][:, None], starts[inv][:, None]
    r = torch.rand(len(need), g, generator=generator).to(need.device)
    pos = (r * cnt).long().clamp_max((cnt - 1).clamp_min(0))
    safe = lambda p: cand[(st + p).clamp(0, max(len(cand) - 1, 0))] if len(cand) else torch.zeros_like(p)  # noqa: E731
    idx = safe(pos)
    ok = (cnt > 0).expand_as(idx).clone()
    if exclude is not None:
        self_hit = idx == exclude[:, None]
        idx = torch.where(self_hit, safe((pos + 1) % cnt.clamp_min(1)), idx)  # next compatible row
        ok &= ~(self_hit & (cnt <= 1))
    return idx, ok


class Experts(nn.Module):
    """``n`` GELU MLPs per group (modality), stacked: ``[G, n, D, H]``."""

    def __init__(self, groups: int, n: int, d: int, h: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(groups, n, d, h) / math.sqrt(d))
        self.b1 = nn.Parameter(torch.zeros(groups, n, 1, h))
        self.w2 = nn.Parameter(torch.randn(groups, n, h, d) / math.sqrt(h) * 0.1)
        self.b2 = nn.Parameter(torch.zeros(groups, n, 1, d))

    def forward(self, x: Tensor, group: int) -> Tensor:  # [N, D] → [n, N, D]
        return F.gelu(x @ self.w1[group] + self.b1[group]) @ self.w2[group] + self.b2[group]


def top_k_gate(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Sparse weights ``[N, E]`` (softmax over the top-k, zero elsewhere) and the load-balance loss.

    Loss (Switch/GShard form) = E · Σ_e f_e · P_e, with f_e the share of top-k slots routed
    to expert e and P_e its mean full-softmax probability; 1 when routing is uniform.
    """
    n_exp = logits.shape[-1]
    top, idx = logits.topk(k, -1)
    w = torch.zeros_like(logits).scatter(-1, idx, F.softmax(top, -1))
    frac = torch.zeros_like(logits).scatter(-1, idx, 1.0).mean(0) / k
    prob = F.softmax(logits, -1).mean(0)
    return w, n_exp * (frac * prob).sum()


class MoeNet(nn.Module):
    def __init__(self, dims: list[int], n_classes: int, p: int, d: int, heads: int, n_experts: int,
                 n_shared: int, k: int, mode: str):
        super().__init__()
        m = len(dims)
        self.m, self.p, self.d, self.k, self.mode = m, p, d, k, mode
        self.chunk = -(-max(dims) // p)
        self.tok_w = nn.Parameter(torch.randn(m, self.chunk, d) / math.sqrt(self.chunk))
        self.tok_b = nn.Parameter(torch.zeros(m, 1, d))
        self.pos = nn.Parameter(torch.randn(m, p, d) * 0.02)  # modality × token position
        self.query = nn.Parameter(torch.randn(m, p, d) * 0.02)  # t's retrieval queries
        self.att = nn.MultiheadAttention(d, heads, batch_first=True)
        self.att_norm = nn.LayerNorm(d)
        self.gate = nn.Parameter(torch.zeros(m, d, n_experts))
        self.noise = nn.Parameter(torch.zeros(m, d, n_experts))
        self.experts = Experts(m, n_experts, d, d)
        self.shared = Experts(1, n_shared, d, d)
        self.moe_norm = nn.LayerNorm(d)
        self.fusion = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.1, batch_first=True, norm_first=True)
        self.head = nn.Sequential(nn.LayerNorm(m * d), nn.Linear(m * d, n_classes))

    def tokens(self, x: Tensor) -> Tensor:
        """``[..., M, Dmax]`` → ``[..., M, P, D]``: pad, reshape to P chunks, per-modality linear."""
        x = F.pad(x, (0, self.p * self.chunk - x.shape[-1])).unflatten(-1, (self.p, self.chunk))
        return torch.einsum("...mpc,mcd->...mpd", x, self.tok_w) + self.tok_b

    def tokens_of(self, x: Tensor, mods: Tensor) -> Tensor:
        """``[Q, G, Dmax]`` embeddings of modality ``mods [Q]`` → ``[Q, G, P, D]``."""
        x = F.pad(x, (0, self.p * self.chunk - x.shape[-1])).unflatten(-1, (self.p, self.chunk))
        return torch.einsum("qgpc,qcd->qgpd", x, self.tok_w[mods]) + self.tok_b[mods][:, None]

    def moe(self, h: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Per target modality: noisy top-k over t's experts + shared experts. ``h [Q, P, D]``."""
        out = torch.zeros_like(h)
        lb, n_groups = h.new_zeros(()), 0
        shared = self.shared(h.flatten(0, 1), 0).mean(0).view_as(h)
        for mod in torch.unique(t).tolist():  # one group per target modality, not per sample
            sel = t == mod
            z = h[sel].flatten(0, 1)
            logits = z @ self.gate[mod]
            if self.training:
                logits = logits + torch.randn_like(logits) * F.softplus(z @ self.noise[mod])
            w, loss = top_k_gate(logits, min(self.k, logits.shape[-1]))
            y = (w.T[..., None] * self.experts(z, mod)).sum(0)  # [N, D]
            out[sel] = y.view(-1, self.p, self.d)
            lb, n_groups = lb + loss, n_groups + 1
        return self.moe_norm(h + out + shared), lb / max(n_groups, 1)

    def retrieve(self, tok: Tensor, visible: Tensor, q_rows: Tensor, q_mod: Tensor, support_tok: Tensor,
                 support_ok: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens ``[Q, P, D]`` of modality ``q_mod`` for rows ``q_rows`` (+ load-balance loss).

        ``support_tok [Q, G, P, D]``: the supporting group's ``q_mod`` tokens (intra-modal);
        the row's own visible tokens are the inter-modal context.
        """
        q, g = support_tok.shape[:2]
        inter = tok[q_rows]  # [Q, M, P, D]
        inter_ok = visible[q_rows]
        if self.mode == "weighted_mean":  # the released code's behaviour
            intra_mean = (support_tok * support_ok[..., None, None]).sum(1) / support_ok.sum(1).clamp_min(1)[
                :, None, None]
            inter_mean = (inter * inter_ok[..., None, None]).sum(1) / inter_ok.sum(1).clamp_min(1)[:, None, None]
            return 0.5 * intra_mean + 0.5 * inter_mean, tok.new_zeros(())
        intra = support_tok + self.pos[q_mod][:, None]
        ctx = torch.cat([intra.flatten(1, 2), (inter + self.pos).flatten(1, 2)], 1)
        ok = torch.cat([support_ok.repeat_interleave(self.p, 1), inter_ok.repeat_interleave(self.p, 1)], 1)
        qt = self.query[q_mod]
        att, _ = self.att(qt, ctx, ctx, key_padding_mask=~ok, need_weights=False)
        return self.moe(self.att_norm(qt + att), q_mod)

    def classify(self, tok: Tensor, has: Tensor) -> Tensor:
        """Fusion transformer over ``[B, M·P, D]`` (absent modalities masked) → head."""
        b = tok.shape[0]
        seq = (tok + self.pos).flatten(1, 2)
        pad = ~has.repeat_interleave(self.p, 1)
        out = self.fusion(seq, src_key_padding_mask=pad).view(b, self.m, self.p, self.d).mean(2)
        return self.head((out * has[..., None]).flatten(1))


class MoeRetriever(TorchMethod):
    name = "moe-retriever"

    def __init__(self, cfg: FitConfig | None = None, tokens: int = 16, token_dim: int | None = None, heads: int = 4,
                 n_experts: int = 8, n_shared: int = 4, top_k: int = 4, balance_weight: float = 1e-2,
                 warmup_frac: float = 0.25, mode: str = "moe"):
        super().__init__(cfg)
        if mode not in ("moe", "weighted_mean"):
            raise Prom3eError(f"moe-retriever mode must be 'moe' or 'weighted_mean', got '{mode}'")
        token_dim = self.cfg.width if token_dim is None else token_dim
        if tokens < 1 or token_dim < 1 or token_dim % heads:
            raise Prom3eError(f"moe-retriever: tokens ≥ 1 and token_dim divisible by heads ({heads}), got "
                              f"{tokens} × {token_dim}")
        self.p, self.d, self.heads, self.n_experts, self.n_shared = tokens, token_dim, heads, n_experts, n_shared
        self.top_k, self.balance_weight, self.warmup_frac, self.mode = top_k, balance_weight, warmup_frac, mode
        self.retrieving = True
        self.last_support: Tensor | None = None  # pool rows of the latest supporting groups

    def build(self, train: ModalTable, y: np.ndarray) -> nn.Module:
        if len(self.dims) > 62:
            raise Prom3eError("moe-retriever supports at most 62 modalities")
        self.pool_x = torch.from_numpy(train.padded())  # the training split only
        self.pool_present = torch.from_numpy(train.present)
        self.pool_bits = bitmask(self.pool_present)
        self.gen = torch.Generator().manual_seed(self.cfg.seed + 101)
        return MoeNet(self.dims, self.n_classes, self.p, self.d, self.heads, self.n_experts, self.n_shared,
                      self.top_k, self.mode)

    @property
    def warmup_epochs(self) -> int:
        return min(round(self.warmup_frac * self.cfg.epochs), self.cfg.epochs - 1)

    def on_epoch(self, epoch: int) -> None:
        self.retrieving = epoch >= self.warmup_epochs

    def selectable(self, epoch: int) -> bool:
        return epoch >= self.warmup_epochs

    def _eval_generator(self) -> None:
        """Re-seed the prediction-time draws: the same call gives the same supporting groups."""
        self.eval_gen = torch.Generator().manual_seed(self.cfg.seed + 303)

    def predict_proba(self, table: ModalTable, visible: np.ndarray | None = None, batch_size: int = 2048):
        self._eval_generator()
        return super().predict_proba(table, visible, batch_size)

    def _forward(self, x: Tensor, visible: Tensor, rows: Tensor | None, targets: Tensor | None = None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(logits, load-balance loss, tokens with retrievals [B, M, P, D], query rows/mods)."""
        net: MoeNet = self.net
        tok = net.tokens(x)
        lb = tok.new_zeros(())
        has = visible.clone()
        if not self.retrieving:
            return net.classify(tok * visible[..., None, None], has), lb, tok, None
        want = ~visible if targets is None else targets
        q_rows, q_mod = want.nonzero(as_tuple=True)
        if len(q_rows):
            dev = x.device
            bits = bitmask(visible)[q_rows]
            g = max(1, int(visible.sum(1).max()))
            need = bits | (1 << q_mod)
            pool_bits = self.pool_bits.to(dev)
            exclude = rows[q_rows] if rows is not None else None
            gen = self.gen if self.net.training else self.eval_gen
            idx, ok = sample_support(pool_bits, need, g, gen, exclude)
            none = ~ok.any(1)  # no row has all of O: fall back to rows that have t
            if none.any():
                idx2, ok2 = sample_support(pool_bits, (1 << q_mod[none]), g, gen,
                                           exclude[none] if exclude is not None else None)
                idx[none], ok[none] = idx2, ok2
            ok &= torch.arange(g, device=dev) < visible.sum(1)[q_rows, None]  # |O| supporting samples
            self.last_support = idx[ok].detach().cpu()
            sup_x = self.pool_x.to(dev)[idx, q_mod[:, None]]  # [Q, G, Dmax]: t-embeddings of the group
            sup_tok = net.tokens_of(sup_x, q_mod)  # [Q, G, P, D]
            got, lb = net.retrieve(tok, visible, q_rows, q_mod, sup_tok, ok)
            tok = tok * visible[..., None, None]
            tok = tok.index_put((q_rows, q_mod), got)
            has = has.index_put((q_rows, q_mod), ok.any(1))
        else:
            tok = tok * visible[..., None, None]
        return net.classify(tok, has), lb, tok, (q_rows, q_mod)

    def loss(self, x, visible, present, y, rows):
        logits, lb, _, _ = self._forward(x, visible, rows)
        task = classification_loss(logits, y)
        return task + self.balance_weight * lb, {"task": task.item(), "balance": lb.item()}

    def logits(self, x: Tensor, visible: Tensor) -> Tensor:
        return self._forward(x, visible, None)[0]

    @torch.no_grad()
    def estimate(self, table: ModalTable, visible: np.ndarray | None, target: int):
        x, vis = self._inputs(table, visible)
        x_real = self._inputs(table, table.present)[0]
        self._eval_generator()
        self.net.eval()
        est, real = [], []
        for i in range(0, len(x), 2048):
            xb, vb = x[i:i + 2048].to(self.device), vis[i:i + 2048].to(self.device)
            want = torch.zeros_like(vb)
            want[:, target] = True
            _, _, tok, _ = self._forward(xb, vb & ~want, None, want)
            est.append(tok[:, target].mean(1).cpu())
            real.append(self.net.tokens(x_real[i:i + 2048].to(self.device))[:, target].mean(1).cpu())
        return torch.cat(est).numpy(), torch.cat(real).numpy()
