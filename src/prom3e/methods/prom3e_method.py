"""ProM3E in the benchmark: the fusion model, then a classifier on its hidden state.

1. **Pre-training.** The fusion model — the library's named config (``model``, default
   ``base``) and :class:`~prom3e.train.loop.TrainConfig` defaults, only its width set to the
   benchmark's (:func:`width_overrides`) — is trained in memory with
   :func:`prom3e.train.loop.train_model` on
   the training split (its own masked-reconstruction objective, its own 10 % validation
   rows for choosing the best epoch; the same batch size, width, learning rate and weight
   decay as every other method — the benchmark's tuning grid applies to it as to the
   peers; the benchmark's labels are passed as the label column so same-class rows are
   not contrastive negatives).
2. **Fine-tuning** (default, ``finetune=True``). Encoder + MLP head (on ``[μ, hidden
   tokens]``: the [mu], [logvar] and register outputs, flattened) are trained jointly with
   the shared loop on ``task + λ·L_ProM3E``: the task loss reads the shared modality-dropout
   view of each batch (the same augmentation every method sees); the auxiliary is ProM3E's
   own objective, ``Prom3e.forward(x, visible, targets, labels)`` with the visible set from
   :func:`~prom3e.data.masking.sample_visible` and the masked present modalities as targets
   (label-aware negatives, as in pre-training), so the encoder keeps its reconstruction and
   the decoders stay usable for the R@1 / NM²I estimate. λ = ``aux_weight`` (default 1).

   **Budget.** The epochs are split: ``pretrain_epochs = max(1, round(pretrain_frac ·
   epochs))`` (``pretrain_frac`` = 0.5) for step 1 and the rest (≥ 1) for step 2, so the
   total number of passes over the training rows equals every other method's ``epochs``
   (with ``epochs = 1`` both phases get one epoch: the only over-budget case).
3. ``finetune=False``: the earlier protocol — step 1 for all ``epochs``, the encoder is
   then **frozen**; features of ``n_views`` views of each training row (all present +
   modality-dropout views) are computed once and an MLP head trains on them for
   ``epochs`` (a linear-probe style evaluation of the self-supervised representation).

At test time the encoder reads whatever is visible. The missing-modality estimate is the
decoder's reconstruction from μ (in the raw embedding space); zero-shot scores the
reconstructed class modality against class prototypes (mean training embedding per
class) when the table has one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prom3e.data.masking import sample_visible, training_targets
from prom3e.data.table import ModalTable
from prom3e.methods.base import (
    FitConfig,
    TorchMethod,
    ValidationSet,
    classification_loss,
    drop_modalities,
    mlp,
)
from prom3e.models.prom3e import CONFIGS, Prom3eConfig
from prom3e.train import loop as fusion_loop


def split_epochs(epochs: int, pretrain_frac: float) -> tuple[int, int]:
    """(pre-training, fine-tuning) epochs out of one budget; both ≥ 1."""
    pre = min(max(1, round(pretrain_frac * epochs)), max(1, epochs - 1))
    return pre, max(1, epochs - pre)


def width_overrides(model: str, width: int) -> dict:
    """The only departures from the library's named config ``model``: the benchmark's shared
    width (the tuning grid's axis) as ``embed_dim``, ``mlp_dim`` at the config's own ratio
    to it, and 4 heads (1 when 4 does not divide the width). Everything else — depth,
    registers, posterior head, objective, KL, clip — is the library's default, so a changed
    default reaches the benchmark without a code change here."""
    base = {**{f: getattr(Prom3eConfig(), f) for f in ("embed_dim", "mlp_dim")}, **CONFIGS[model]}
    ratio = base["mlp_dim"] / base["embed_dim"]
    return {"embed_dim": width, "heads": 4 if width % 4 == 0 else 1, "mlp_dim": max(1, round(ratio * width))}


def hidden_features(encoder: nn.Module, x: Tensor, visible: Tensor) -> Tensor:
    """``[μ, hidden tokens flattened]`` of the encoder for the visible modalities."""
    post = encoder.encode(x, visible, hidden=True)
    return torch.cat([post.mu, post.hidden.flatten(1)], 1)


class FineTuneNet(nn.Module):
    """The (trainable) ProM3E encoder + an MLP head on its hidden state."""

    def __init__(self, encoder: nn.Module, n_features: int, hidden: int, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = mlp(n_features, hidden, n_classes)

    def forward(self, x: Tensor, visible: Tensor) -> Tensor:
        return self.head(hidden_features(self.encoder, x, visible))


class Prom3eMethod(TorchMethod):
    name = "prom3e"
    n_views = 4
    estimate_space = "raw"

    def __init__(self, cfg: FitConfig | None = None, model: str = "base",
                 visible_probs: tuple[float, ...] | None = None, run_dir: str | None = None,
                 finetune: bool = True, pretrain_frac: float = 0.5,
                 aux_weight: float = 1.0, **model_overrides):
        super().__init__(cfg)
        self.defaults = fusion_loop.TrainConfig()  # the library's training defaults, whatever they are
        if visible_probs is None:
            visible_probs = self.defaults.visible_probs
        self.model_name, self.visible_probs, self.run_dir = model, tuple(visible_probs), run_dir
        self.finetune, self.aux_weight = bool(finetune), float(aux_weight)
        if self.finetune:
            self.pretrain_epochs, self.finetune_epochs = split_epochs(self.cfg.epochs, pretrain_frac)
        else:
            self.pretrain_epochs, self.finetune_epochs = self.cfg.epochs, self.cfg.epochs
        self.overrides = {**width_overrides(model, self.cfg.width), **model_overrides}

    def _train_fusion(self, train: ModalTable, y: np.ndarray) -> None:
        cfg = self.cfg
        tcfg = fusion_loop.TrainConfig(
            model=self.model_name, model_overrides=self.overrides, epochs=self.pretrain_epochs,
            batch_size=cfg.batch_size, lr=cfg.lr, min_lr=0.01 * cfg.lr, weight_decay=cfg.weight_decay,
            seed=cfg.seed, device=cfg.device, precision="fp32", visible_probs=self.visible_probs,
            label_column="__benchmark_label__")
        labelled = ModalTable(train.modalities, train.features, train.present,
                              {"__benchmark_label__": y}, train.source)
        # in memory; run_dir (if given) is this method's own scratch run folder: each fit replaces it
        self.encoder, self.fusion_summary = fusion_loop.train_model(
            labelled, tcfg, self.run_dir, progress=cfg.progress, overwrite=True)
        self.encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)  # frozen; fine-tuning (build) unfreezes it

    def loop_epochs(self) -> int:
        return self.finetune_epochs  # the shared loop runs phase 2

    def fit(self, train: ModalTable, y: np.ndarray, n_classes: int | None = None,
            val: ValidationSet | None = None) -> Prom3eMethod:
        super().fit(train, y, n_classes, val)
        self.encoder.eval()
        return self

    @torch.no_grad()
    def features(self, x: Tensor, visible: Tensor, batch_size: int = 2048) -> Tensor:
        return torch.cat([hidden_features(self.encoder, x[i:i + batch_size].to(self.device),
                                          visible[i:i + batch_size].to(self.device))
                          for i in range(0, len(x), batch_size)])

    def build(self, train: ModalTable, y: np.ndarray) -> nn.Module:
        self._train_fusion(train, y)
        x, present = torch.from_numpy(train.padded()), torch.from_numpy(train.present)
        hidden = 4 * self.cfg.width
        if self.finetune:
            self.labels = torch.from_numpy(y)
            self.mask_gen = torch.Generator().manual_seed(self.cfg.seed + 29)
            n_features = self.features(x[:2], present[:2]).shape[-1]
            for p in self.encoder.parameters():
                p.requires_grad_(True)
            return FineTuneNet(self.encoder, n_features, hidden, self.n_classes)
        gen = torch.Generator().manual_seed(self.cfg.seed + 17)
        views = [present] + [drop_modalities(present, self.cfg.drop_prob, gen) for _ in range(self.n_views - 1)]
        self.views = torch.stack([self.features(x, v) for v in views])  # [V, N, F]
        return mlp(self.views.shape[-1], hidden, self.n_classes)

    def loss(self, x, visible, present, y, rows):
        if not self.finetune:
            v = torch.randint(self.n_views, (len(rows),), device=rows.device)
            loss = classification_loss(self.net(self.views[v, rows]), y)
            return loss, {"task": loss.item()}
        task = classification_loss(self.net(x, visible), y)
        if self.aux_weight <= 0:
            return task, {"task": task.item()}
        vis = sample_visible(present.cpu(), self.visible_probs, self.mask_gen).to(present.device)
        targets = training_targets(present, vis)
        if not targets.any():  # every row has a single modality: nothing to reconstruct
            return task, {"task": task.item()}
        d = self.defaults
        aux, _ = self.net.encoder(x, vis, targets, y, kl_weight=d.kl_weight, noise=d.noise, dedup=d.dedup)
        return task + self.aux_weight * aux, {"task": task.item(), "aux": aux.item()}

    def logits(self, x: Tensor, visible: Tensor) -> Tensor:
        if self.finetune:
            return self.net(x, visible)
        return self.net(self.features(x, visible))

    @torch.no_grad()
    def reconstruct(self, table: ModalTable, visible: np.ndarray | None, target: int) -> np.ndarray:
        x, vis = self._inputs(table, visible)
        self.encoder.eval()
        out = []
        for i in range(0, len(x), 2048):
            post = self.encoder.encode(x[i:i + 2048].to(self.device), vis[i:i + 2048].to(self.device))
            out.append(self.encoder.decode(post.mu, [target])[0, :, : self.dims[target]].cpu())
        return torch.cat(out).numpy()

    def estimate(self, table: ModalTable, visible: np.ndarray | None, target: int):
        return self.reconstruct(table, visible, target), table.features[target]

    def zero_shot_proba(self, table: ModalTable, visible: np.ndarray, target: int, prototypes: np.ndarray,
                        temperature: float = 0.01) -> np.ndarray:
        """Class probabilities from the reconstructed class modality ``target`` vs ``prototypes [C, d]``."""
        rec = F.normalize(torch.from_numpy(self.reconstruct(table, visible, target)), dim=-1)
        protos = F.normalize(torch.from_numpy(prototypes).float(), dim=-1)
        empty = protos.abs().sum(1) == 0  # classes without a training prototype
        sims = (rec @ protos.T).masked_fill(empty, float("-inf"))
        return F.softmax(sims / temperature, -1).numpy()
