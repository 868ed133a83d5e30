"""AOEPT — modal-contextualised prompts (MCP) with an instance-aware gate.

Paper: a frozen multimodal transformer; per layer and modality, mean-pooled modality
tokens of the *training* set are K-means-clustered into K prototypes; learnable queries
attend over them, ``P = LN(MHA(Q, prototypes) + Q)``; an instance gate
``g = σ(W₂·ReLU(W₁·mean of the other visible modality))`` (reduction 16) scales the
prompts of the missing modality, which are inserted in the first N layers; loss = task +
0.05·InfoNCE(mean prompt, stop-grad real feature), τ = 0.01, where the modality is present.

Here: tokens are the per-modality projections (``LN(Linear(x_m)) + modality id``) of the
visible modalities; each of the ``depth`` layers of a small pre-LN fusion transformer gets
its own prompts (deep prompts: a layer's prompt outputs are replaced by the next layer's
prompts), ``prompt_len`` = 16 per modality and layer (the paper's upper value);
**per-layer prototypes** (``prototypes="per-layer"``, default): the K-means centres (K =
128) of modality m's token state entering layer l, over (at most ``proto_rows`` = 2048) training
rows with all their modalities visible — recomputed at the start of every epoch, because
here the backbone trains (the paper's is frozen, so its prototypes are fixed); they are
buffers (no gradient), as the paper's. ``prototypes="input"``: one set per modality, the
K-means centres of the raw training embeddings passed through the projection, shared by
all layers. Prototypes come from the training split only (``fit``; prediction never
re-clusters). The gate of modality m reads the mean projection of the visible modalities
other than m; the [cls] output feeds an MLP head. InfoNCE compares each row's mean (gated,
first-layer) prompt of m with the stop-gradient projections of m of the batch rows that
have m. The estimate of a hidden modality is its mean first-layer prompt;
:meth:`Aoept.estimate_layers` gives every layer's (the benchmark's per-layer NM²I).

What differs from the paper on global embeddings: there is no pretrained multimodal
backbone to freeze, so the fusion transformer (2 layers, prompts in both; the paper
prompts the first 4–6 of a 12-layer ViLT) is trained with the prompts (small, from
scratch); "modality tokens" are single vectors, so a layer's prototypes summarise one
token state per row rather than mean-pooled token sequences.

``backbone="prom3e"`` (the issue's option; also registered as method ``aoept-prom3e``): the
prompted backbone is **ProM3E's trained encoder, frozen**, closer to the paper's frozen
pretrained transformer. ProM3E is first pre-trained on the training split with its own
objective (:class:`prom3e.methods.prom3e_method.Prom3eMethod`'s step 1, for
``pretrain_epochs = max(1, round(pretrain_frac · epochs))`` epochs, ``pretrain_frac`` = 0.5);
then its parameters are frozen and, for the remaining epochs (≥ 1, so the total equals the
other methods' budget), only the prompts (queries, MCP attention, gate) and the head train.
:class:`PromptedProm3e` assembles the encoder's sequence from its public pieces
(``project`` + ``modality_embed``) for the gate and the InfoNCE targets, and runs the encoder
itself (:meth:`Prom3e.encode` with ``prompts``): each hidden modality's prompts are extra
tokens of every block (deep prompts: replaced by the next block's prompts); the head reads
``[μ, prefix outputs]``. Prototypes
are K-means centres of the training split passed through the frozen projection (the
``"input"`` mode; with ProM3E's one block this *is* the per-layer set).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError
from prom3e.methods.base import FitConfig, ModalityLinear, ProxyMethod, ValidationSet, classification_loss, mlp
from prom3e.methods.prom3e_method import Prom3eMethod, split_epochs


def kmeans_prototypes(x: np.ndarray, present: np.ndarray, k: int, seed: int, init: str = "k-means++"
                      ) -> tuple[np.ndarray, np.ndarray]:
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
            km = KMeans(n_clusters=kk, n_init=1, max_iter=50, init=init, random_state=seed).fit(rows)
            protos[j, :kk] = km.cluster_centers_
        ok[j, :kk] = True
    ok[~ok.any(1), 0] = True  # a modality without rows keeps one (zero) prototype: never an all-masked key set
    return protos, ok


def token_prototypes(states: Tensor, present: Tensor, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """K-means centres of token states ``[depth, N, M, E]`` per (layer, modality): ``[depth, M, K, E]``, ok mask."""
    d, _, m, e = states.shape
    protos = torch.zeros(d, m, k, e)
    ok = torch.zeros(d, m, k, dtype=torch.bool)
    for layer in range(d):
        p, o = kmeans_prototypes(states[layer].numpy(), present.numpy(), k, seed, init="random")  # every epoch: cheap
        protos[layer], ok[layer] = torch.from_numpy(p), torch.from_numpy(o)
    return protos, ok


class AoeptNet(nn.Module):
    def __init__(self, dims: list[int], width: int, n_classes: int, protos: np.ndarray, proto_ok: np.ndarray,
                 prompt_len: int, depth: int, heads: int, reduction: int):
        super().__init__()
        m, e = len(dims), width
        self.m, self.heads, self.depth, self.prompt_len = m, heads, depth, prompt_len
        self.register_buffer("protos", torch.from_numpy(protos))  # [M, K, Dmax], training split only
        self.register_buffer("proto_ok", torch.from_numpy(proto_ok))
        self.register_buffer("layer_protos", None)  # [depth, M, K, E] per-layer token prototypes, when set
        self.register_buffer("layer_proto_ok", None)
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
        q = self.queries.flatten(0, 1)  # [depth·M, L, E]
        if self.layer_protos is not None:  # per-layer token prototypes (buffers)
            kv, pad = self.layer_protos.flatten(0, 1), ~self.layer_proto_ok.flatten(0, 1)
        else:  # raw-space prototypes through the projection, shared by every layer
            kp = self.embed(self.protos.transpose(0, 1)).transpose(0, 1)  # [M, K, E]
            kv, pad = kp.repeat(self.depth, 1, 1), ~self.proto_ok.repeat(self.depth, 1)
        att, _ = self.mha(q, kv, kv, key_padding_mask=pad, need_weights=False)
        return self.mcp_norm(att + q).unflatten(0, (self.depth, self.m))

    def gate(self, h: Tensor, visible: Tensor) -> Tensor:
        """Instance gate of each modality from the *other* visible modalities: ``[B, M, E]``."""
        w = visible.float()
        total = (h * w[..., None]).sum(1, keepdim=True)  # [B, 1, E]
        others = (total - h * w[..., None]) / (w.sum(1, keepdim=True) - w).clamp_min(1)[..., None]
        return torch.sigmoid(self.gate2(F.relu(self.gate1(others))))

    def gated_prompts(self, h: Tensor, visible: Tensor) -> Tensor:
        """``[B, depth, M, L, E]``: every layer's prompts scaled by the instance gate."""
        return self.prompts()[None] * self.gate(h, visible)[:, None, :, None, :]

    def run(self, x: Tensor, visible: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(logits, real h, gated prompts, token states entering each layer ``[depth, B, M, E]``)."""
        b = x.shape[0]
        h = self.embed(x)
        prompts = self.gated_prompts(h, visible)
        seq = torch.cat([self.cls.expand(b, -1, -1), h + self.modality], 1)
        keep = torch.cat([visible.new_ones(b, 1), visible], 1)
        prompt_pad = visible.repeat_interleave(self.prompt_len, 1)  # prompts only for hidden modalities
        states = []
        for i, layer in enumerate(self.layers):
            states.append(seq[:, 1:])
            seq = prompted_layer(layer, seq, prompts[:, i].flatten(1, 2), torch.cat([~keep, prompt_pad], 1))
        return self.head(seq[:, 0]), h, prompts, torch.stack(states)

    def forward(self, x: Tensor, visible: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, real h [B, M, E], mean first-layer prompt per modality [B, M, E])."""
        logits, h, prompts, _ = self.run(x, visible)
        return logits, h, prompts[:, 0].mean(2)


def prompted_layer(layer: nn.TransformerEncoderLayer, seq: Tensor, prompts: Tensor, pad: Tensor) -> Tensor:
    """One pre-LN encoder layer over ``[seq; prompts]``, computing only the ``seq`` outputs.

    Deep prompts: a layer's prompt outputs are discarded (the next layer has its own), so
    prompts serve only as keys/values — the same ``seq`` outputs as ``layer(cat(seq, prompts))``
    at a fraction of the cost (the queries are the 1 + M tokens, not the M·L prompts too).
    """
    n = seq.shape[1]
    kv = layer.norm1(torch.cat([seq, prompts], 1))
    att = layer.self_attn(kv[:, :n], kv, kv, key_padding_mask=pad, need_weights=False)[0]
    x = seq + layer.dropout1(att)
    return x + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(x))))))


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
        self.layer_protos = None  # the "input" prototypes (ProM3E's one block: the same set)
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
    gated_prompts = AoeptNet.gated_prompts

    def forward(self, x: Tensor, visible: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, real tokens h [B, M, E], mean first-layer prompt per modality [B, M, E])."""
        with torch.no_grad():
            h = self.embed(x)
        prompts = self.gated_prompts(h, visible)  # [B, depth, M, L, E]
        post = self.model.encode(x, visible, hidden=True, prompts=prompts.flatten(2, 3),
                                 prompts_ok=(~visible).repeat_interleave(self.prompt_len, 1))
        return self.head(torch.cat([post.mu, post.hidden.flatten(1)], 1)), h, prompts[:, 0].mean(2)


class Aoept(ProxyMethod):
    name = "aoept"

    def __init__(self, cfg: FitConfig | None = None, n_prototypes: int = 128, prompt_len: int = 16, depth: int = 2,
                 heads: int = 4, reduction: int = 16, nce_weight: float = 0.05, tau: float = 0.01,
                 backbone: str = "fusion", pretrain_frac: float = 0.5, prototypes: str = "per-layer",
                 proto_rows: int = 2048):
        super().__init__(cfg)
        if backbone not in ("fusion", "prom3e"):
            raise Prom3eError(f"backbone must be 'fusion' or 'prom3e', got {backbone!r}")
        if prototypes not in ("per-layer", "input"):
            raise Prom3eError(f"aoept prototypes must be 'per-layer' or 'input', got {prototypes!r}")
        if prompt_len < 1 or n_prototypes < 1 or depth < 1 or proto_rows < 2:
            raise Prom3eError("aoept: prompt_len, n_prototypes, depth must be ≥ 1 and proto_rows ≥ 2")
        self.n_prototypes, self.prompt_len, self.depth = n_prototypes, prompt_len, depth
        self.heads, self.reduction, self.nce_weight, self.tau = heads, reduction, nce_weight, tau
        self.backbone, self.pretrain_frac = backbone, pretrain_frac
        self.prototypes = "input" if backbone == "prom3e" else prototypes
        self.proto_rows = proto_rows

    def loop_epochs(self) -> int:
        """With ProM3E's backbone the shared loop trains prompts + head for what pre-training left."""
        if self.backbone == "fusion":
            return self.cfg.epochs
        return split_epochs(self.cfg.epochs, self.pretrain_frac)[1]

    def fit(self, train: ModalTable, y: np.ndarray, n_classes: int | None = None,
            val: ValidationSet | None = None) -> Aoept:
        if self.backbone == "prom3e":
            pre = split_epochs(self.cfg.epochs, self.pretrain_frac)[0]
            self.pretrained = Prom3eMethod(dataclasses.replace(self.cfg, epochs=pre), finetune=False)
        return super().fit(train, y, n_classes, val)

    def build(self, train: ModalTable, y: np.ndarray) -> nn.Module:
        protos, ok = kmeans_prototypes(train.padded(), train.present, self.n_prototypes, self.cfg.seed)
        if self.backbone == "prom3e":
            self.pretrained._train_fusion(train, y)
            model = self.pretrained.encoder
            e = model.cfg.embed_dim
            heads = self.heads if e % self.heads == 0 else 1
            return PromptedProm3e(model, self.n_classes, protos, ok, self.prompt_len, heads, self.reduction)
        if self.prototypes == "per-layer":  # the rows whose token states are clustered every epoch
            rows = np.random.default_rng(self.cfg.seed + 5).permutation(len(train))[:self.proto_rows]
            self.proto_x = torch.from_numpy(train.padded(np.sort(rows)))
            self.proto_present = torch.from_numpy(train.present[np.sort(rows)])
        heads = self.heads if self.cfg.width % self.heads == 0 else 1
        return AoeptNet(self.dims, self.cfg.width, self.n_classes, protos, ok, self.prompt_len, self.depth,
                        heads, self.reduction)

    @torch.no_grad()
    def on_epoch(self, epoch: int) -> None:
        """Per-layer prototypes: K-means of the current token states entering each layer."""
        if self.prototypes != "per-layer":
            return
        net: AoeptNet = self.net
        net.eval()
        states = torch.cat([net.run(self.proto_x[i:i + 1024].to(self.device),
                                    self.proto_present[i:i + 1024].to(self.device))[3].cpu()
                            for i in range(0, len(self.proto_x), 1024)], 1)  # [depth, N, M, E]
        protos, ok = token_prototypes(states, self.proto_present, self.n_prototypes, self.cfg.seed + epoch)
        net.layer_protos, net.layer_proto_ok = protos.to(self.device), ok.to(self.device)

    def loss(self, x, visible, present, y, rows):
        logits, h, p = self.net(x, visible)
        task = classification_loss(logits, y)
        nce = info_nce(p, h, present, self.tau)
        return task + self.nce_weight * nce, {"task": task.item(), "nce": nce.item()}

    @torch.no_grad()
    def estimate_layers(self, table: ModalTable, visible: np.ndarray | None, target: int,
                        batch_size: int = 4096) -> list[np.ndarray]:
        """The mean gated prompt of ``target`` at every prompted layer (layer 0 = :meth:`estimate`)."""
        x, vis = self._inputs(table, visible)
        self.net.eval()
        out = []
        for i in range(0, len(x), batch_size):
            xb, vb = x[i:i + batch_size].to(self.device), vis[i:i + batch_size].to(self.device)
            out.append(self.net.gated_prompts(self.net.embed(xb), vb)[:, :, target].mean(2).cpu())
        layers = torch.cat(out)  # [N, depth, E]
        return [layers[:, d].numpy() for d in range(layers.shape[1])]


class AoeptProm3e(Aoept):
    """AOEPT with ProM3E's trained encoder, frozen, as the prompted backbone (``backbone="prom3e"``)."""

    name = "aoept-prom3e"

    def __init__(self, cfg: FitConfig | None = None, **options):
        options.setdefault("backbone", "prom3e")
        super().__init__(cfg, **options)
