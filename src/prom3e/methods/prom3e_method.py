"""ProM3E in the benchmark: the fusion model, then a classifier on its hidden state.

1. The fusion model is trained with :func:`prom3e.train.loop.train` on the training split
   (its own masked-reconstruction objective, its own 10 % validation rows for choosing the
   best epoch; same epochs, batch size and width as every other method; the benchmark's
   labels are passed as the label column so same-class rows are not contrastive
   negatives).
2. The encoder is then **frozen**; features = ``[μ, hidden tokens]`` (the [mu], [logvar]
   and register outputs, flattened) of the visible modalities, computed for ``n_views``
   views of each training row (all present + modality-dropout views, as the other
   methods see), and an MLP head is trained on them with the shared loop.
3. At test time the encoder reads whatever is visible. The missing-modality estimate is
   the decoder's reconstruction from μ (in the raw embedding space); zero-shot scores the
   reconstructed class modality against class prototypes (mean training embedding per
   class) when the table has one.

Nothing differs from the paper's use: ProM3E is built for per-modality global embeddings.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prom3e.data.table import ModalTable
from prom3e.methods.base import FitConfig, TorchMethod, classification_loss, drop_modalities, mlp


class Prom3eMethod(TorchMethod):
    name = "prom3e"
    n_views = 4

    def __init__(self, cfg: FitConfig | None = None, model: str = "base", visible_probs: tuple[float, ...] = (0.9, 0.1),
                 run_dir: str | None = None, **model_overrides):
        super().__init__(cfg)
        self.model_name, self.visible_probs, self.run_dir = model, tuple(visible_probs), run_dir
        w = self.cfg.width
        self.overrides = {"embed_dim": w, "heads": 4 if w % 4 == 0 else 1, "mlp_dim": 2 * w, "registers": 4,
                          **model_overrides}

    def _train_fusion(self, train: ModalTable, y: np.ndarray) -> None:
        from prom3e.api import Fuser
        from prom3e.train.loop import TrainConfig
        from prom3e.train.loop import train as train_fusion

        cfg = self.cfg
        tcfg = TrainConfig(model=self.model_name, model_overrides=self.overrides, epochs=cfg.epochs,
                           batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device, precision="fp32",
                           visible_probs=self.visible_probs, label_column="__benchmark_label__")
        labelled = ModalTable(train.modalities, train.features, train.present,
                              {"__benchmark_label__": y}, train.source)
        with tempfile.TemporaryDirectory(prefix="prom3e-bench-") as tmp:
            run = Path(self.run_dir) if self.run_dir else Path(tmp) / "run"
            self.fusion_summary = train_fusion(labelled, run, tcfg, progress=cfg.progress)
            self.fuser = Fuser.load(run, device=cfg.device, precision="fp32")
        self.encoder = self.fuser.model.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def features(self, x: Tensor, visible: Tensor, batch_size: int = 2048) -> Tensor:
        out = []
        for i in range(0, len(x), batch_size):
            post = self.encoder.encode(x[i:i + batch_size].to(self.device), visible[i:i + batch_size].to(self.device),
                                       hidden=True)
            out.append(torch.cat([post.mu, post.hidden.flatten(1)], 1))
        return torch.cat(out)

    def build(self, train: ModalTable, y: np.ndarray) -> nn.Module:
        self._train_fusion(train, y)
        x, present = torch.from_numpy(train.padded()), torch.from_numpy(train.present)
        gen = torch.Generator().manual_seed(self.cfg.seed + 17)
        views = [present] + [drop_modalities(present, self.cfg.drop_prob, gen) for _ in range(self.n_views - 1)]
        self.views = torch.stack([self.features(x, v) for v in views])  # [V, N, F]
        return mlp(self.views.shape[-1], 4 * self.cfg.width, self.n_classes)

    def loss(self, x, visible, present, y, rows):
        v = torch.randint(self.n_views, (len(rows),), device=rows.device)
        loss = classification_loss(self.net(self.views[v, rows]), y)
        return loss, {"task": loss.item()}

    def logits(self, x: Tensor, visible: Tensor) -> Tensor:
        return self.net(self.features(x, visible))

    @torch.no_grad()
    def reconstruct(self, table: ModalTable, visible: np.ndarray | None, target: int) -> np.ndarray:
        x, vis = self._inputs(table, visible)
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

