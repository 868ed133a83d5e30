"""Mixed precision: a bf16-autocast training run follows the fp32 loss curve."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prom3e.data.masking import sample_visible, training_targets
from prom3e.models.prom3e import Prom3e, named_config
from prom3e.train.loop import TrainConfig, make_optimizer, training_step


def _curve(precision: str, steps: int = 25) -> list[float]:
    torch.manual_seed(0)
    mods = [f"m{i}" for i in range(4)]
    model = Prom3e(named_config("base", mods, [32] * 4, embed_dim=64, mlp_dim=128)).train()
    cfg = TrainConfig(lr=3e-3, precision=precision)
    opt = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(1)
    # a learnable task: every modality is a fixed random map of one latent per row
    maps = torch.randn(4, 16, 32, generator=g)
    losses = []
    for _ in range(steps):
        latent = torch.randn(128, 16, generator=g)
        x = F.normalize(torch.einsum("bl,mld->bmd", latent, maps), dim=-1)
        present = torch.ones(128, 4, dtype=torch.bool)
        vis = sample_visible(present, (0.9, 0.1), g)
        torch.manual_seed(len(losses))  # same reparameterisation noise in both runs
        loss, _ = training_step(model, opt, x, vis, training_targets(present, vis), None, cfg,
                                torch.device("cpu"), precision)
        losses.append(loss.item())
    return losses


def test_bf16_loss_curve_matches_fp32():
    fp32, bf16 = _curve("fp32"), _curve("bf16")
    assert fp32[-1] < fp32[0] - 0.15  # it learns
    for a, b in zip(fp32, bf16, strict=True):
        assert abs(a - b) <= 0.05 * abs(a) + 0.02, (a, b)
