"""ProM3E: a masked Transformer VAE over per-modality embedding tokens.

Sequence = ``[mu] [logvar] reg_1..reg_R  v_1..v_L`` where ``v`` are the projected
*visible* modalities of each row (+ a learned modality-id vector); absent and masked
modalities are left out via a key-padding mask, so one batch mixes any patterns.
μ = normalize(out[mu]), logσ² = out[logvar]; z = μ + σ·ε feeds one decoder per modality.

Two exact shortcuts keep the work to what is needed:
- the 2 + R leading tokens are the same for every row, so the first layer projects
  their queries/keys/values once per batch, not once per row;
- the last layer computes outputs only at the [mu]/[logvar] (and register) positions,
  the only ones anything reads.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prom3e.errors import Prom3eError
from prom3e.models.config import CONFIGS, OBJECTIVE, Prom3eConfig, named_config  # noqa: F401 (re-exported)
from prom3e.models.grouped import ModalityMLP, group_pairs, remote_targets
from prom3e.models.losses import contrastive_reconstruction, kl_divergence
from prom3e.models.objectives import clip_share, csd_bce, kl_terms, mc_infonce, sigma_calibration

if TYPE_CHECKING:
    from prom3e.distributed import GlobalBatch

N_SPECIAL = 2  # [mu], [logvar]


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` for a repeated integer ``index``, deterministic in the backward pass.

    The backward of advanced indexing (``index_put_`` with accumulation) adds on CPU with
    parallel atomic adds, whose order — and so the float rounding — changes run to run with
    more than one thread; ``index_select``'s backward (``index_add_``) does not.
    """
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:])


@dataclass
class Posterior:
    mu: Tensor  # [B, E], unit norm
    logvar: Tensor  # [B, E]
    hidden: Tensor | None = None  # [B, 2 + R, E]: final outputs at [mu], [logvar], registers

    @property
    def sigma_l1(self) -> Tensor:
        """‖σ‖₁ per row: lower means a more certain (more informative) visible set."""
        return torch.exp(0.5 * self.logvar).sum(-1)


class Block(nn.Module):
    """Post-LN Transformer block (as the reference) with SDPA attention: the fast path.

    ``x = ln1(x + attn(x)); x = ln2(x + mlp(x))``, ``mlp = [LN →] Linear → GELU → Linear``;
    :class:`prom3e.models.plain.PlainBlock` is the same block written plainly.
    """

    def __init__(self, cfg: Prom3eConfig):
        super().__init__()
        e = cfg.embed_dim
        self.heads = cfg.heads
        self.qkv = nn.Linear(e, 3 * e)
        self.proj = nn.Linear(e, e)
        self.ln1 = nn.LayerNorm(e)
        self.ln_mlp = nn.LayerNorm(e) if cfg.block_mlp_norm else None
        self.fc1 = nn.Linear(e, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, e)
        self.ln2 = nn.LayerNorm(e)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, prefix: Tensor, rest: Tensor, rest_ok: Tensor, n_out: int | None) -> Tensor:
        """Attend over ``[prefix; rest]`` and return outputs at the first ``n_out`` positions.

        ``prefix`` is ``[P, E]`` (the same for every row: projected once) or ``[B, P, E]``;
        ``rest`` is ``[B, L, E]`` with ``rest_ok bool[B, L]`` marking real tokens (prefix
        tokens are always attended). ``n_out=None``: all positions.
        """
        if prefix.dim() == 2 and n_out is not None and n_out <= prefix.shape[0]:
            return self._constant_queries(prefix, rest, rest_ok, n_out)
        b, e, h = rest.shape[0], rest.shape[-1], self.heads
        qkv_rest = self.qkv(rest)
        qkv_pre = self.qkv(prefix)
        if prefix.dim() == 2:
            qkv_pre, prefix = qkv_pre.expand(b, -1, -1), prefix.expand(b, -1, -1)
        qkv = torch.cat([qkv_pre, qkv_rest], 1)
        x = torch.cat([prefix, rest], 1)
        n = x.shape[1] if n_out is None else n_out
        q, k, v = qkv.split(e, -1)
        q, k, v = (t.unflatten(-1, (h, e // h)).transpose(1, 2) for t in (q[:, :n], k, v))
        p = self.drop.p if self.training else 0.0
        key_ok = torch.cat([rest_ok.new_ones(b, prefix.shape[1]), rest_ok], 1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=key_ok[:, None, None, :], dropout_p=p)
        x = x[:, :n]
        x = self.ln1(x + self.drop(self.proj(att.transpose(1, 2).flatten(2))))
        return self._mlp(x)

    def _mlp(self, x: Tensor) -> Tensor:
        h = self.ln_mlp(x) if self.ln_mlp is not None else x
        return self.ln2(x + self.drop(self.fc2(F.gelu(self.fc1(h)))))

    def _constant_queries(self, prefix: Tensor, rest: Tensor, rest_ok: Tensor, n: int) -> Tensor:
        """The same result when the queries are batch-constant prefix tokens (a 1-layer model).

        Queries, keys and values of the prefix are computed once per batch; only the keys and
        values of each row's own tokens are per row; no ``[B, P + L, ·]`` buffers are built.
        """
        b, e, h = rest.shape[0], rest.shape[-1], self.heads
        dh = e // h
        qkv_pre = self.qkv(prefix)  # [P, 3E]
        q, k_pre, v_pre = (t.unflatten(-1, (h, dh)) for t in qkv_pre.split(e, -1))
        q = q[:n] * dh**-0.5  # [n, h, dh]
        kv = F.linear(rest, self.qkv.weight[e:], self.qkv.bias[e:])  # [B, L, 2E]: no queries needed
        k, v = kv.unflatten(-1, (2, h, dh)).unbind(2)  # [B, L, h, dh]
        s_pre = torch.einsum("nhd,phd->hnp", q, k_pre).expand(b, -1, -1, -1)
        s_rest = torch.einsum("nhd,blhd->bhnl", q, k).masked_fill(~rest_ok[:, None, None, :], float("-inf"))
        w = torch.cat([s_pre, s_rest.to(s_pre.dtype)], -1).float().softmax(-1).to(v.dtype)  # [B, h, n, P + L]
        if self.training and self.drop.p > 0:
            w = F.dropout(w, self.drop.p)
        p = prefix.shape[0]
        att = torch.einsum("bhnp,phd->bnhd", w[..., :p], v_pre.to(v.dtype)) + torch.einsum(
            "bhnl,blhd->bnhd", w[..., p:], v)
        x = self.ln1(prefix[:n] + self.drop(self.proj(att.flatten(2))))
        return self._mlp(x)


class Prom3e(nn.Module):
    def __init__(self, cfg: Prom3eConfig):
        super().__init__()
        if not 1 <= len(cfg.modalities) <= 64 or len(cfg.modalities) != len(cfg.dims):
            raise ValueError("need 1..64 modalities with one dim each")
        self.cfg = cfg
        m, e = len(cfg.modalities), cfg.embed_dim
        self.project = ModalityMLP(cfg.dims, e, [e] * m, in_norm=True)
        self.modality_embed = nn.Parameter(torch.randn(m, e) * cfg.token_init_std)
        self.prefix = nn.Parameter(torch.randn(N_SPECIAL + cfg.registers, e) * cfg.token_init_std)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.decode_mlp = ModalityMLP([e] * m, e, cfg.dims, in_norm=cfg.decoder_norm)
        # contrastive reconstruction logits = α·distance + β, α < 0 kept by construction;
        # one pair per modality, or one shared by all (shared_logit_scale)
        n_scale = 1 if cfg.shared_logit_scale else m
        self.alpha_raw = nn.Parameter(torch.full((n_scale,), math.log(math.expm1(5.0))))  # α = −5
        self.beta = nn.Parameter(torch.full((n_scale,), 5.0))
        if cfg.posterior_head == "affine":
            self.logvar_scale = nn.Parameter(torch.full((e,), 0.1))
            self.logvar_shift = nn.Parameter(torch.full((e,), cfg.init_logvar))
        elif cfg.posterior_head == "linear":
            self.mu_head = nn.Linear(e, e)
            self.logvar_head = nn.Linear(e, e)
            with torch.no_grad():
                self.logvar_head.weight.mul_(0.1)
                self.logvar_head.bias.fill_(cfg.init_logvar)
        elif cfg.posterior_head == "poe":
            self.mu_head = nn.Linear(e, e)
            self.precision_head = nn.Linear(e, e)  # log-precision of each visible modality's expert
            # prior and one expert each start at half the precision exp(−init_logvar)
            self.log_prior_precision = nn.Parameter(torch.full((e,), -cfg.init_logvar - math.log(2)))
            with torch.no_grad():
                self.precision_head.weight.mul_(0.1)
                self.precision_head.bias.fill_(-cfg.init_logvar - math.log(2))

    @property
    def alpha(self) -> Tensor:
        """α ``[M]`` (or ``[1]`` when shared by the modalities), negative by construction."""
        return -F.softplus(self.alpha_raw)

    def logit_scale(self, used: Tensor) -> tuple[Tensor, Tensor]:
        """(α, β) of the contrastive logits for modalities ``used [U]`` → two ``[U]`` tensors."""
        alpha = self.alpha
        if self.cfg.shared_logit_scale:
            return alpha.expand(len(used)), self.beta.expand(len(used))
        return alpha[used], self.beta[used]

    def n_params(self) -> int:
        """Trainable parameters, not counting the zero padding of unequal modality dims."""
        grouped = self.project.n_effective_params() + self.decode_mlp.n_effective_params()
        rest = sum(p.numel() for n, p in self.named_parameters()
                   if not n.startswith(("project.", "decode_mlp.")))
        return grouped + rest

    # --- encoder -------------------------------------------------------------------------
    def encode(self, x: Tensor, visible: Tensor, hidden: bool = False, prompts: Tensor | None = None,
               prompts_ok: Tensor | None = None) -> Posterior:
        """``x [B, M, Dmax]``, ``visible bool[B, M]`` (≥ 1 per row) → posterior.

        ``prompts [B, depth, K, E]`` with ``prompts_ok bool[B, K]``: extra tokens attended by
        every block (deep prompts: each block its own, their outputs discarded), for
        prompt-tuning methods (:class:`prom3e.methods.aoept.PromptedProm3e`)."""
        b, m = x.shape[:2]
        g = group_pairs(visible)
        src = g.rows * m + g.mods  # each visible pair's row in x viewed as [B·M, D]
        tokens = self.project(x.reshape(b * m, -1)[src[g.index]], g.used, self.modality_embed)  # [U, C, E]
        count = visible.sum(1)
        length = int(count.max())
        pos = (visible.cumsum(1) - 1)[g.rows, g.mods]  # place of each pair in its row's sequence
        where = torch.zeros(b, length, dtype=torch.long, device=x.device)
        where[g.rows, pos] = g.group * g.size + g.slot
        seq = _gather_rows(tokens.flatten(0, 1), where)  # [B, L, E]; positions past a row's count are masked
        rest_ok = torch.arange(length, device=x.device) < count[:, None]
        p = self.prefix.shape[0]
        n_keep = p if hidden else N_SPECIAL
        prefix: Tensor = self.prefix.to(seq.dtype)
        first_seq = seq  # each visible modality's own token (the PoE experts read it)
        for i, blk in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            rest, ok = (seq, rest_ok) if prompts is None else (
                torch.cat([seq, prompts[:, i].to(seq.dtype)], 1), torch.cat([rest_ok, prompts_ok], 1))
            out = blk(prefix, rest, ok, n_keep if last else None)
            prefix, seq = out[:, :p], out[:, p:p + length]
        mu_out, lv_out = prefix[:, 0], prefix[:, 1]
        if self.cfg.posterior_head == "affine":
            lv_out = lv_out * self.logvar_scale + self.logvar_shift
        elif self.cfg.posterior_head == "linear":
            mu_out, lv_out = self.mu_head(mu_out), self.logvar_head(lv_out)
        elif self.cfg.posterior_head == "poe":
            mu_out = self.mu_head(mu_out)
            expert_in = first_seq.detach() if self.cfg.poe_detach else first_seq
            log_prec = self.precision_head(expert_in).float().masked_fill(~rest_ok[..., None], float("-inf"))
            log_prec = torch.cat([self.log_prior_precision.expand(b, 1, -1), log_prec], 1)
            lv_out = -torch.logsumexp(log_prec, 1)  # logσ² = −log(prior + Σ experts' precisions)
        mu = F.normalize(mu_out.float(), dim=-1)
        c = self.cfg.logvar_clip
        logvar = c * torch.tanh(lv_out.float() / c)  # smooth clip: finite KL, live gradient
        return Posterior(mu, logvar, prefix.float() if hidden else None)

    @staticmethod
    def sample(post: Posterior, n: int, generator: torch.Generator | None = None,
               noise: str = "dim", within: tuple[int, int] | None = None) -> Tensor:
        """``[n, B, E]`` reparameterised draws; ``noise='scalar'`` is the reference's one ε per row.

        ``within=(start, total)``: these B rows are rows ``start …`` of a global batch of
        ``total`` (one rank's slice under torchrun): ε is drawn for the global batch and
        sliced, so N ranks draw what one process would."""
        b, e = post.mu.shape
        start, total = within or (0, b)
        shape = (n, total, e) if noise == "dim" else (n, total, 1)
        eps = torch.randn(shape, generator=generator, device=post.mu.device)[:, start:start + b]
        return post.mu + torch.exp(0.5 * post.logvar) * eps

    # --- decoders ------------------------------------------------------------------------
    def decode(self, z: Tensor, mods: list[int] | Tensor, weights: tuple[Tensor, ...] | None = None) -> Tensor:
        """``z [B', E]`` → ``[len(mods), B', Dmax]`` L2-normalised reconstructions.

        ``weights``: ``decode_mlp.weights(mods, dtype)``, when decoding many times."""
        used = torch.as_tensor(mods, device=z.device, dtype=torch.long)
        kind = z.device.type
        if torch.is_autocast_enabled(kind):  # cast once here, not once per decoded modality
            z = z.to(torch.get_autocast_dtype(kind))
        out = self.decode_mlp(z.expand(len(used), -1, -1), used, weights=weights)
        return F.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def decode_mean(self, post: Posterior, mods: list[int] | Tensor, n: int,
                    generator: torch.Generator | None = None, keep_draws: bool = False
                    ) -> tuple[Tensor, Tensor | None]:
        """Average of ``n`` decoded draws z = μ + σ·ε → (unit-norm mean ``[T, B, Dmax]``,
        the draws ``[T, n, B, Dmax]`` if ``keep_draws``).

        With ``sample_average: latent`` (the reference) the mean is instead the decoding of
        the mean of the ``n`` draws of z (the draws, if kept, are still each draw decoded).
        The draws are decoded one at a time: buffers of one batch stay small and hot,
        where one ``[T, n·B, ·]`` pass spends much of its time moving memory.
        """
        if n < 1:
            raise ValueError(f"need at least one draw, got n={n}")
        device = post.mu.device
        used = torch.as_tensor(mods, device=device, dtype=torch.long)
        cast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        weights = self.decode_mlp.weights(used, cast)  # sliced and cast once, not per draw
        eps = torch.randn((n, *post.mu.shape), generator=generator, device=device)
        std = torch.exp(0.5 * post.logvar)
        if self.cfg.sample_average == "latent":
            mean = self.decode(torch.addcmul(post.mu, std, eps.mean(0)), used, weights)
            if not keep_draws:
                return mean, None
            draws = [self.decode(torch.addcmul(post.mu, std, eps[i]), used, weights) for i in range(n)]
            return mean, torch.stack(draws, 1)
        draws = [self.decode(torch.addcmul(post.mu, std, eps[0]), used, weights)]  # [T, B, Dmax] each
        total = draws[0].clone()
        for i in range(1, n):
            d = self.decode(torch.addcmul(post.mu, std, eps[i]), used, weights)
            total.add_(d)
            if keep_draws:
                draws.append(d)
        return F.normalize(total, dim=-1), torch.stack(draws, 1) if keep_draws else None

    # --- training objective --------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        visible: Tensor,
        targets: Tensor,
        labels: Tensor | None = None,
        kl_weight: float = 1e-3,
        noise: str = "dim",
        dedup: bool = True,
        batch: GlobalBatch | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss for one batch: contrastive reconstruction of ``targets`` + λ·KL.

        ``targets bool[B, M]``: the (row, modality) pairs to reconstruct; ``labels [B]``
        (optional, −1 = none): rows with the same label are not each other's negatives.
        ``batch`` (under torchrun, :func:`prom3e.distributed.gather_batch`): every rank's
        targets, so that the negatives and the noise are those of the global batch.
        """
        post = self.encode(x, visible)
        cfg = self.cfg
        g = group_pairs(targets)
        b, m = x.shape[:2]
        pick = g.rows[g.index]  # [U, C] row of each buffer position (padding: a copy, masked by valid)
        true = x.reshape(b * m, -1)[(g.rows * m + g.mods)[g.index]].float()
        lab = labels[pick] if labels is not None else None
        remote = remote_targets(batch, g.used) if batch is not None else None
        within = (batch.start, batch.size) if batch is not None else None
        calibrate = cfg.sigma_calibration > 0
        scale = self.logit_scale(g.used)
        if cfg.recon_loss == "infonce" and cfg.n_draws == 1 and not cfg.draw_mean and not cfg.mu_loss:  # reference
            z = self.sample(post, 1, noise=noise, within=within)[0]
            pred = F.normalize(self.decode_mlp(_gather_rows(z, pick), g.used).float(), dim=-1)
            out = contrastive_reconstruction(
                pred, true, g.valid, *scale, lab, dedup, remote, per_entry=calibrate
            )
            recon, acc, each = out if calibrate else (*out, None)
        elif pick.numel() == 0:  # nothing to reconstruct in this batch
            recon = post.mu.sum() * 0.0
            acc, each = recon.detach(), recon.new_zeros(pick.shape)
        else:
            if cfg.recon_loss == "csd_bce" and remote is not None:
                raise Prom3eError("recon_loss 'csd_bce' scores the local batch only: it is not supported under "
                                  "torchrun (use 'mc_infonce' or 'infonce')")
            k = cfg.n_draws
            z = self.sample(post, k, noise=noise, within=within)  # [K, B, E]
            if cfg.draw_mean:
                z = torch.cat([post.mu[None], z[1:]])
            u, c = pick.shape
            zk = _gather_rows(z.transpose(0, 1), pick)  # [U, C, K, E]
            zk = zk.transpose(1, 2).reshape(u, k * c, -1)  # draws side by side per group
            pred = F.normalize(self.decode_mlp(zk, g.used).float(), dim=-1)
            pred = pred.view(u, k, c, -1).transpose(0, 1)  # [K, U, C, D]
            # csd_bce scores the local batch (refused under torchrun above); mc_infonce every rank's targets
            loss_fn = csd_bce if cfg.recon_loss == "csd_bce" else functools.partial(mc_infonce, remote=remote)
            recon, acc, each = loss_fn(pred, true, g.valid, *scale, lab, dedup)
            if cfg.mu_loss > 0:
                pred_mu = F.normalize(self.decode_mlp(_gather_rows(post.mu, pick), g.used).float(), dim=-1)[None]
                recon = recon + cfg.mu_loss * loss_fn(pred_mu, true, g.valid, *scale, lab, dedup)[0]
        if cfg.kl_reduction == "mean" and cfg.free_bits == 0:
            kl = kl_divergence(post.mu, post.logvar)
        else:
            kl = kl_terms(post.mu, post.logvar, cfg.kl_reduction, cfg.free_bits)
        loss = recon + kl_weight * kl
        stats = {"recon": recon.detach(), "kl": kl.detach(), "acc": acc,
                 "sigma_l1": post.sigma_l1.mean().detach(),
                 "logvar_clip_share": clip_share(post.logvar, cfg.logvar_clip)}
        if calibrate:
            cal = sigma_calibration(post.logvar, each, pick, g.valid)
            loss = loss + cfg.sigma_calibration * cal
            stats["sigma_calibration"] = cal.detach()
        return loss, {"loss": loss.detach(), **stats}
