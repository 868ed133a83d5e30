"""AOEPT — modal-contextualised prompts (MCP) with an instance-aware gate.

Paper: a frozen multimodal transformer; per layer and modality, mean-pooled modality
tokens of the *training* set are K-means-clustered into K prototypes; learnable queries
attend over them, ``P = LN(MHA(Q, prototypes) + Q)``; an instance gate
``g = σ(W₂·ReLU(W₁·mean of the other visible modality))`` (reduction 16) scales the
prompts of the missing modality, which are inserted in the first N layers; loss = task +
0.05·InfoNCE(mean prompt, stop-grad real feature), τ = 0.01, where the modality is present.

Here: tokens are the per-modality projections (``LN(Linear(x_m)) + modality id``) of the
visible modalities; K-means prototypes are computed once, on the raw embeddings of the
training split's present rows (``fit`` only: prediction never touches them), and pass
through the same projection; each of the ``depth`` layers of a small pre-LN fusion
transformer gets its own prompts (deep prompts: a layer's prompt outputs are replaced by
the next layer's prompts); the gate of modality m reads the mean projection of the
visible modalities other than m; the [cls] output feeds an MLP head. InfoNCE compares
each row's mean (gated, first-layer) prompt of m with the stop-gradient projections of m
of the batch rows that have m.

What differs from the paper on global embeddings: there is no pretrained multimodal
backbone to freeze, so the fusion transformer is trained with the prompts (small, from
scratch); prototypes summarise one embedding per row rather than mean-pooled token
sequences per layer, and are shared by all layers; "modality tokens" are single vectors.
The default prompt length is 4 (the paper uses 6–16) to fit the CPU budget; an option.

``backbone="prom3e"`` (the issue's option; also registered as method ``aoept-prom3e``): the
prompted backbone is **ProM3E's trained encoder, frozen**, closer to the paper's frozen
pretrained transformer. ProM3E is first pre-trained on the training split with its own
objective (:class:`prom3e.methods.prom3e_method.Prom3eMethod`'s step 1, for
``pretrain_epochs = max(1, round(pretrain_frac · epochs))`` epochs, ``pretrain_frac`` = 0.5);
then its parameters are frozen and, for the remaining epochs (≥ 1, so the total equals the
other methods' budget), only the prompts (queries, MCP attention, gate) and the head train.
:class:`PromptedProm3e` assembles the encoder's sequence from its public pieces
(``project`` + ``modality_embed`` for the visible modalities, ``prefix``, ``blocks``) and adds
each hidden modality's prompts as extra key/value tokens of every block (deep prompts:
replaced by the next block's prompts); the head reads ``[μ, prefix outputs]``. Prototypes
are K-means centres of the training split passed through the frozen projection.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError
from prom3e.methods.base import FitConfig, ModalityLinear, ProxyMethod, classification_loss, mlp


def kmeans_prototypes(x: np.ndarray, present: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-modality K-means centres of the present rows: (``[M, K, Dmax]``, ``ok bool[M, K]``)."""
    from sklearn.cluster import KMeans

    m, dmax = x.shape[1], x.shape[2]
    protos = np.zeros((m, k, dmax), np.float32)
    ok = np.zeros((m, k), bool)
    for j in range(m):  # one clustering per modality
        rows = x[present[:, j], j]
        uniq = np.unique(rows, axis=0)
        kk = min(k, len(uniq))
        if kk == 0:
            continue
        if kk == len(uniq):
            protos[j, :kk] = uniq
        else:
            km = KMeans(n_clusters=kk, n_init=1, max_iter=50, random_state=seed).fit(rows)
            protos[j, :kk] = km.cluster_centers_
        ok[j, :kk] = True
    return protos, ok


class AoeptNet(nn.Module):
    def __init__(self, dims: list[int], width: int, n_classes: int, protos: np.ndarray, proto_ok: np.ndarray,
                 prompt_len: int, depth: int, heads: int, reduction: int):
        super().__init__()
        m, e = len(dims), width
        self.m, self.heads, self.depth, self.prompt_len = m, heads, depth, prompt_len
        self.register_buffer("protos", torch.from_numpy(protos))  # [M, K, Dmax], training split only
        self.register_buffer("proto_ok", torch.from_numpy(proto_ok))
        self.project = ModalityLinear(dims, e)
        self.norm = nn.LayerNorm(e)
        self.modality = nn.Parameter(torch.randn(m, e) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, e) * 0.02)
        self.queries = nn.Parameter(torch.randn(depth, m, prompt_len, e) * 0.02)
        self.mha = nn.MultiheadAttention(e, heads, batch_first=True)
        self.mcp_norm = nn.LayerNorm(e)
        r = max(4, e // reduction)
        self.gate1 = nn.Linear(e, r)
        self.gate2 = ModalityLinear([r] * m, e)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(e, heads, 2 * e, dropout=0.1, batch_first=True, norm_first=True)
            for _ in range(depth))
        self.head = mlp(e, 4 * e, n_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.norm(self.project(x))

    def prompts(self) -> Tensor:
        """Modal-contextualised prompts ``[depth, M, L, E]`` (instance-independent part)."""
        kp = self.embed(self.protos.transpose(0, 1)).transpose(0, 1)  # [M, K, E] projected prototypes
        q = self.queries.flatten(0, 1)  # [depth·M, L, E]
        kv = kp.repeat(self.depth, 1, 1)
        pad = ~self.proto_ok.repeat(self.depth, 1)
        att, _ = self.mha(q, kv, kv, key_padding_mask=pad, need_weights=False)
        return self.mcp_norm(att + q).unflatten(0, (self.depth, self.m))

    def gate(self, h: Tensor, visible: Tensor) -> Tensor:
        """Instance gate of each modality from the *other* visible modalities: ``[B, M, E]``."""
        w = visible.float()
        total = (h * w[..., None]).sum(1, keepdim=True)  # [B, 1, E]
        others = (total - h * w[..., None]) / (w.sum(1, keepdim=True) - w).clamp_min(1)[..., None]
        return torch.sigmoid(self.gate2(F.relu(self.gate1(others))))

    def forward(self, x: Tensor, visible: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, real h [B, M, E], mean first-layer prompt per modality [B, M, E])."""
        b = x.shape[0]
        h = self.embed(x)
        g = self.gate(h, visible)
        prompts = self.prompts()[None] * g[:, None, :, None, :]  # [B, depth, M, L, E]
        tok = h + self.modality
        seq = torch.cat([self.cls.expand(b, -1, -1), tok], 1)
        keep = torch.cat([visible.new_ones(b, 1), visible], 1)
        prompt_pad = visible.repeat_interleave(self.prompt_len, 1)  # prompts only for hidden modalities
        n = seq.shape[1]
        for i, layer in enumerate(self.layers):
            s = torch.cat([seq, prompts[:, i].flatten(1, 2)], 1)
            out = layer(s, src_key_padding_mask=torch.cat([~keep, prompt_pad], 1))
            seq = out[:, :n]
        return self.head(seq[:, 0]), h, prompts[:, 0].mean(2)


def info_nce(pred: Tensor, target: Tensor, present: Tensor, tau: float) -> Tensor:
    """Per modality: each present row's prediction must pick its own (stop-grad) target in the batch."""
    p = F.normalize(pred.float(), dim=-1).transpose(0, 1)  # [M, B, E]
    t = F.normalize(target.detach().float(), dim=-1).transpose(0, 1)
    logits = p @ t.transpose(1, 2) / tau  # [M, B, B]
    cols = present.T[:, None, :]  # only rows that have m are candidates
    logits = logits.masked_fill(~cols, float("-inf"))
    rows = present.T  # [M, B]
    b = present.shape[0]
    diag = torch.arange(b, device=pred.device).expand_as(rows)
    ce = F.cross_entropy(logits[rows], diag[rows], reduction="mean") if rows.any() else logits.new_zeros(())
    return ce


class PromptedProm3e(nn.Module):
    """MCP prompts + instance gate around a **frozen** ProM3E encoder (``model``), and an MLP head.

    Sequence of every block = ProM3E's prefix ([mu], [logvar], registers) + the projected
    visible modalities (``model.project`` with ``model.modality_embed``) + the gated prompts
    of the hidden modalities (``prompt_len`` per modality, each block its own).
    """

    def __init__(self, model: nn.Module, n_classes: int, protos: np.ndarray, proto_ok: np.ndarray,
                 prompt_len: int, heads: int, reduction: int):
        super().__init__()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model.eval()
        m, e = len(model.cfg.dims), model.cfg.embed_dim
        self.m, self.depth, self.prompt_len = m, len(model.blocks), prompt_len
        self.register_buffer("protos", torch.from_numpy(protos))  # [M, K, Dmax], training split only
        self.register_buffer("proto_ok", torch.from_numpy(proto_ok))
        self.queries = nn.Parameter(torch.randn(self.depth, m, prompt_len, e) * 0.02)
        self.mha = nn.MultiheadAttention(e, heads, batch_first=True)
        self.mcp_norm = nn.LayerNorm(e)
        r = max(4, e // reduction)
        self.gate1 = nn.Linear(e, r)
        self.gate2 = ModalityLinear([r] * m, e)
        n_prefix = model.prefix.shape[0]
        self.head = mlp(e * (n_prefix + 1), 4 * e, n_classes)

    def train(self, mode: bool = True) -> PromptedProm3e:
        super().train(mode)
        self.model.eval()  # frozen: always in inference mode
        return self

    def embed(self, x: Tensor) -> Tensor:
        """Frozen per-modality tokens of every modality (absent ones are masked later): ``[B, M, E]``."""
        m = self.model
        used = torch.arange(self.m, device=x.device)
        return m.project(x.transpose(0, 1), used, m.modality_embed).transpose(0, 1)

    prompts = AoeptNet.prompts
    gate = AoeptNet.gate

    def forward(self, x: Tensor, visible: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, real tokens h [B, M, E], mean first-layer prompt per modality [B, M, E])."""
        with torch.no_grad():
            h = self.embed(x)
        g = self.gate(h, visible)
        prompts = self.prompts()[None] * g[:, None, :, None, :]  # [B, depth, M, L, E]
        ok = torch.cat([visible, (~visible).repeat_interleave(self.prompt_len, 1)], 1)
        prefix: Tensor = self.model.prefix
        seq = h
        n_pre = prefix.shape[0]
        for i, blk in enumerate(self.model.blocks):
            last = i == self.depth - 1
            out = blk(prefix, torch.cat([seq, prompts[:, i].flatten(1, 2)], 1), ok, n_pre if last else None)
            prefix, seq = out[:, :n_pre], out[:, n_pre:n_pre + self.m]
        mu_out = prefix[:, 0]
        mu_head = getattr(self.model, "mu_head", None)  # the model's optional posterior read-out of [mu]
        if mu_head is not None:
            mu_out = mu_head(mu_out)
        mu = F.normalize(mu_out.float(), dim=-1)
        return self.head(torch.cat([mu, prefix.flatten(1)], 1)), h, prompts[:, 0].mean(2)


class Aoept(ProxyMethod):
    name = "aoept"

    def __init__(self, cfg: FitConfig | None = None, n_prototypes: int = 128, prompt_len: int = 4, depth: int = 2,
                 heads: int = 4, reduction: int = 16, nce_weight: float = 0.05, tau: float = 0.01,
                 backbone: str = "fusion", pretrain_frac: float = 0.5):
        super().__init__(cfg)
        if backbone not in ("fusion", "prom3e"):
            raise Prom3eError(f"backbone must be 'fusion' or 'prom3e', got {backbone!r}")
        self.n_prototypes, self.prompt_len, self.depth = n_prototypes, prompt_len, depth
        self.heads, self.reduction, self.nce_weight, self.tau = heads, reduction, nce_weight, tau
        self.backbone, self.pretrain_frac = backbone, pretrain_frac

    def fit(self, train: ModalTable, y: np.ndarray, n_classes: int | None = None) -> Aoept:
        if self.backbone == "fusion":
            return super().fit(train, y, n_classes)
        import dataclasses

        from prom3e.methods.prom3e_method import Prom3eMethod, split_epochs

        full = self.cfg
        pre, rest = split_epochs(full.epochs, self.pretrain_frac)
        self.pretrained = Prom3eMethod(dataclasses.replace(full, epochs=pre), finetune=False)
        self.cfg = dataclasses.replace(full, epochs=rest)  # the shared loop trains prompts + head
        try:
            super().fit(train, y, n_classes)
        finally:
            self.cfg = full
        return self

    def build(self, train: ModalTable, y: np.ndarray) -> nn.Module:
        protos, ok = kmeans_prototypes(train.padded(), train.present, self.n_prototypes, self.cfg.seed)
        if self.backbone == "prom3e":
            self.pretrained._train_fusion(train, y)
            model = self.pretrained.encoder
            e = model.cfg.embed_dim
            heads = self.heads if e % self.heads == 0 else 1
            return PromptedProm3e(model, self.n_classes, protos, ok, self.prompt_len, heads, self.reduction)
        heads = self.heads if self.cfg.width % self.heads == 0 else 1
        return AoeptNet(self.dims, self.cfg.width, self.n_classes, protos, ok, self.prompt_len, self.depth,
                        heads, self.reduction)

    def loss(self, x, visible, present, y, rows):
        logits, h, p = self.net(x, visible)
        task = classification_loss(logits, y)
        nce = info_nce(p, h, present, self.tau)
        return task + self.nce_weight * nce, {"task": task.item(), "nce": nce.item()}


class AoeptProm3e(Aoept):
    """AOEPT with ProM3E's trained encoder, frozen, as the prompted backbone (``backbone="prom3e"``)."""

    name = "aoept-prom3e"

    def __init__(self, cfg: FitConfig | None = None, **options):
        options.setdefault("backbone", "prom3e")
        super().__init__(cfg, **options)
