"""Symmetric supervised-contrastive loss (CLIP-style; same label = positive), TaxaBind's
stage-1 objective, and the learnable, clamped logit scale."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


class LogitScale(nn.Module):
    """``exp(s)`` with ``s`` learnable, initialised at log(1/0.07) and clamped to ≤ log 100."""

    def __init__(self, init: float = LOGIT_SCALE_INIT, max_log: float = LOGIT_SCALE_MAX) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(init)))
        self.max_log = float(max_log)

    def forward(self) -> Tensor:
        return self.log_scale.clamp(max=self.max_log).exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Call after each optimiser step (as CLIP does) so the stored value stays in range."""
        self.log_scale.clamp_(max=self.max_log)


def positives(labels: Tensor | None, n: int, device: torch.device) -> Tensor:
    """``bool[n, n]``: same label (or only the diagonal without labels); a row with label
    −1 (no label) is only its own positive."""
    eye = torch.eye(n, dtype=torch.bool, device=device)
    if labels is None:
        return eye
    return eye | ((labels[:, None] == labels[None, :]) & (labels[:, None] >= 0))


def supcon_loss(z: Tensor, anchor: Tensor, scale: Tensor, labels: Tensor | None = None) -> Tensor:
    """Symmetric supervised contrastive loss between paired rows.

    ``z`` and ``anchor`` are ``[B, D]`` unit vectors (row i of each is a pair); ``scale`` is
    the (exponentiated) logit scale; with ``labels`` (``int[B]``, −1 = none), every
    same-label pair is a positive, so duplicates of a class are not pushed apart. Each direction averages
    ``-log softmax`` over a row's positives; the loss is the mean of both directions.
    """
    logits = scale * z @ anchor.T
    pos = positives(labels, z.shape[0], z.device).float()
    z_to_a = -(pos * F.log_softmax(logits, 1)).sum(1) / pos.sum(1)
    a_to_z = -(pos.T * F.log_softmax(logits.T, 1)).sum(1) / pos.sum(0)
    return 0.5 * (z_to_a.mean() + a_to_z.mean())
