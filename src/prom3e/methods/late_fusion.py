"""Late fusion: one classifier per modality, probabilities averaged over the visible ones.

Each modality's MLP (LN → Linear → GELU → Linear, all modalities as one stacked einsum)
is trained on every training row where that modality is present; at test time the
prediction is the mean of the visible modalities' class probabilities. It never
estimates a missing modality. On global embeddings nothing differs from the usual baseline.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prom3e.data.table import ModalTable
from prom3e.methods.base import ModalityLinear, TorchMethod


class _PerModality(nn.Module):
    def __init__(self, dims: list[int], width: int, n_classes: int):
        super().__init__()
        self.inp = ModalityLinear(dims, 4 * width)
        self.out = ModalityLinear([4 * width] * len(dims), n_classes)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: Tensor) -> Tensor:  # [B, M, Dmax] → logits [B, M, C]
        return self.out(self.drop(F.gelu(self.inp(x))))


class LateFusion(TorchMethod):
    name = "late-fusion"

    def build(self, train: ModalTable, y: np.ndarray) -> nn.Module:
        return _PerModality(self.dims, self.cfg.width, self.n_classes)

    def loss(self, x, visible, present, y, rows):
        logits = self.net(x)  # every present modality trains its own classifier
        ce = F.cross_entropy(logits.flatten(0, 1).float(), y.repeat_interleave(x.shape[1]), reduction="none")
        w = present.flatten().float()
        loss = (ce * w).sum() / w.sum()
        return loss, {"task": loss.item()}

    def logits(self, x: Tensor, visible: Tensor) -> Tensor:
        p = F.softmax(self.net(x).float(), -1) * visible[..., None]
        return torch.log(p.sum(1) / visible.sum(1, keepdim=True) + 1e-12)  # log of the mean probability
