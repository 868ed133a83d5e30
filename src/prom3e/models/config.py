"""The fusion model's options (:class:`Prom3eConfig`) and its named configs (``tiny`` … ``large``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from prom3e.config import Options
from prom3e.errors import Prom3eError


@dataclass
class Prom3eConfig(Options):
    modalities: list[str] = field(default_factory=list)
    dims: list[int] = field(default_factory=list)
    embed_dim: int = 256  # E
    depth: int = 1
    heads: int = 8
    mlp_dim: int = 512
    registers: int = 4
    dropout: float = 0.0
    logvar_clip: float = 8.0  # guard: |logσ²| ≤ clip keeps the KL finite
    # How logσ² is read off the [logvar] output. "none" (the reference): the post-LayerNorm
    # token itself, whose scale the shared LN fixes, so σ stays near 1 and the noise swamps
    # the unit-norm μ. "affine": a learned per-dimension scale and shift (+2E parameters),
    # shift initialised at init_logvar. "linear": Linear heads on both [mu] and [logvar]. "poe": μ as
    # "linear"; σ as a product of Gaussian experts — 1/σ² = prior precision + Σ over the visible
    # modalities of a precision read off each modality's own token — so adding a modality can
    # only lower σ, and how much it lowers it is learned per modality and per input.
    posterior_head: Literal["none", "affine", "linear", "poe"] = "linear"
    # "poe" only: the experts read each modality's token without steering it (no gradient from
    # σ's objectives into the shared projectors, which then serve μ alone)
    poe_detach: bool = False
    init_logvar: float = -4.0
    # The training objective (models/objectives.py). recon_loss: "infonce" (the reference: one
    # draw, softmax over the batch), "mc_infonce" (−log of the mean probability over n_draws
    # draws) or "csd_bce" (PCME++'s sigmoid loss on the sampled distance over n_draws draws).
    recon_loss: Literal["infonce", "mc_infonce", "csd_bce"] = "infonce"
    n_draws: int = 1  # posterior draws per row and step
    draw_mean: bool = False  # the first of the n_draws draws is μ itself: a noise-free path for the decoders
    mu_loss: float = 0.0  # weight of an extra one-draw loss (recon_loss's form) on μ itself: keeps μ sharp
    kl_reduction: Literal["mean", "sum"] = "mean"  # KL over dims: "mean" (the reference) or "sum" (the VAE's)
    free_bits: float = 0.0  # per-dimension KL floor (nats), 0 = off
    # weight of the term tying each row's mean logσ² to its expected reconstruction loss
    # (objectives.sigma_calibration); 0 = off
    sigma_calibration: float = 0.0
    # The reference's structure (mvrl/proM3E model.py; docs/MODEL.md lists every difference).
    # `paper` sets all of these; the defaults keep the optimised form.
    block_mlp_norm: bool = False  # a LayerNorm before the block MLP's first Linear (the reference's LN-first MLP)
    decoder_norm: bool = False  # decoders start with a LayerNorm, as the projectors do (the reference)
    shared_logit_scale: bool = False  # one α and one β for all modalities (the reference), not one per modality
    # inference with n draws: average the n decoded draws ("decoded"), or average the n draws of z
    # and decode once ("latent", the reference)
    sample_average: Literal["decoded", "latent"] = "decoded"
    token_init_std: float = 0.02  # initial std of the modality-id, [mu]/[logvar] and register vectors (reference: 1)

    WHAT: ClassVar[str] = "model option"
    BOUNDS: ClassVar[dict[str, str]] = {"dims": ">= 1", "embed_dim": ">= 1", "depth": ">= 1", "heads": ">= 1",
                                        "mlp_dim": ">= 1", "registers": ">= 0", "dropout": "[0, 1)",
                                        "logvar_clip": "> 0", "n_draws": ">= 1", "mu_loss": ">= 0",
                                        "free_bits": ">= 0", "sigma_calibration": ">= 0",
                                        "token_init_std": ">= 0"}

    def check(self) -> None:
        if len(self.dims) != len(self.modalities) or len(set(self.modalities)) != len(self.modalities):
            self.fail("dims", f"need one dim per distinct modality, got {len(self.dims)} dims for "
                              f"{len(self.modalities)} modalities")
        if self.embed_dim % self.heads:
            self.fail("heads", f"must divide embed_dim ({self.embed_dim}), got {self.heads}")


# The objective of the study in docs/STAGE2.md (the reference's is the dataclass default): σ from a
# product of per-modality experts, a 4-draw mixture likelihood with μ as one of the draws plus a
# loss on μ, the KL summed over dimensions, logσ² clipped at ±12.
OBJECTIVE = dict(posterior_head="poe", recon_loss="mc_infonce", n_draws=4, draw_mean=True, mu_loss=1.0,
                 kl_reduction="sum", logvar_clip=12.0)

# Named configs: architecture and objective; modalities and dims come from the data.
CONFIGS: dict[str, dict] = {
    "tiny": dict(embed_dim=32, depth=1, heads=2, mlp_dim=64, registers=2, **OBJECTIVE),
    "base": dict(embed_dim=256, depth=1, heads=8, mlp_dim=512, registers=4, **OBJECTIVE),
    # the reference's model (27,328,514 parameters at 6 × 512-d), its posterior read-out and objective included;
    # its training settings (one ε per row, reconstruct all, λ = 1e-3) are TrainConfig options (docs/MODEL.md)
    "paper": dict(embed_dim=1024, depth=1, heads=8, mlp_dim=2048, registers=4, posterior_head="none",
                  block_mlp_norm=True, decoder_norm=True, shared_logit_scale=True, sample_average="latent",
                  token_init_std=1.0),
    # the paper's shapes with this study's posterior and objective: the recommended large model
    "large": dict(embed_dim=1024, depth=1, heads=8, mlp_dim=2048, registers=4, **OBJECTIVE),
}


def named_config(name: str, modalities: list[str], dims: list[int], **overrides) -> Prom3eConfig:
    if name not in CONFIGS:
        raise Prom3eError(f"unknown model config '{name}' (have: {', '.join(CONFIGS)})")
    return Prom3eConfig.from_dict({**CONFIGS[name], **overrides, "modalities": list(modalities), "dims": list(dims)})
