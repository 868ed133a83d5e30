"""The shared interface of the missing-modality methods, and the pieces they share.

Every method works on per-modality embeddings (the data contract): a :class:`ModalTable`
plus a ``visible bool[N, M]`` mask saying which modalities a method may look at. A method

- ``fit(train, y, n_classes)`` on the training split only (labels are ``int64`` codes),
- ``predict_proba(table, visible) → float32[N, C]``,
- ``estimate(table, visible, target) → (estimate [N, k], real [N, k]) | None``: its
  representation of a (hidden) modality and the real modality in the same space, for the
  reconstruction R@1 and NM²I metrics (``None``: the method has no such estimate);
  ``estimate_space`` says which space: ``"raw"`` (the table's own embedding space, comparable
  across methods) or ``"own"`` (the method's internal space: comparable only within it).

A hidden modality's values are never read: :meth:`Method._inputs` zeroes every slot that is
not visible before a method sees the batch (garbage or NaN there cannot change an output).
``fit(..., val=ValidationSet)`` keeps the weights of the epoch with the best validation
accuracy (every method the same way: the benchmark's best-epoch selection).

:class:`TorchMethod` trains every method the same way on the library's one engine
(:mod:`prom3e.train.engine`: AdamW, seeded order and masks, training-time modality dropout
shared by all methods so that the budget and augmentation are the same); the vectorised
per-modality layers live here too.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prom3e.config import Options
from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError
from prom3e.runtime import resolve_device
from prom3e.train.engine import Engine, Hooks, snapshot, warmup_cosine


@dataclass
class FitConfig(Options):
    """Training budget and shared architecture knobs (the same for every method in a benchmark)."""

    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    width: int = 64  # hidden width E of every method
    drop_prob: float = 0.5  # training-time dropout of each present modality (≥ 1 kept)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    progress: bool = False

    WHAT: ClassVar[str] = "fit option"
    BOUNDS: ClassVar[dict[str, str]] = {"epochs": ">= 1", "batch_size": ">= 2", "lr": "> 0", "weight_decay": ">= 0",
                                        "width": ">= 4", "drop_prob": "[0, 1)", "seed": ">= 0"}


@dataclass
class ValidationSet:
    """Held-out training rows for best-epoch selection: the table, labels and visible mask."""

    table: ModalTable
    y: np.ndarray
    visible: np.ndarray


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)  # NumPy randomness in the methods uses explicit seeded Generators
    return torch.Generator().manual_seed(seed)


def drop_modalities(present: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Drop each present modality with probability ``p``; every row keeps ≥ 1 (its top score)."""
    scores = torch.rand(present.shape, generator=generator)
    keep = present & (scores >= p)
    best = scores.masked_fill(~present, -1.0).argmax(1)
    keep[torch.arange(len(present)), best] |= present.any(1)
    return keep


class ModalityLinear(nn.Module):
    """One ``Linear(d_m → out)`` per modality as one einsum over stacked weights.

    Inputs are zero-padded to ``Dmax``: the padding meets weights that never matter.
    """

    def __init__(self, dims: list[int], out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(len(dims), max(dims), out) / np.sqrt(max(dims)))
        scale = torch.tensor([np.sqrt(max(dims) / d) for d in dims], dtype=torch.float32)
        with torch.no_grad():
            self.weight.mul_(scale[:, None, None])
        self.bias = nn.Parameter(torch.zeros(len(dims), out)) if bias else None

    def forward(self, x: Tensor) -> Tensor:  # [B, M, Dmax] → [B, M, out]
        y = torch.einsum("bmd,mde->bme", x, self.weight)
        return y + self.bias if self.bias is not None else y


def mlp(i: int, h: int, o: int, dropout: float = 0.1) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(i), nn.Linear(i, h), nn.GELU(), nn.Dropout(dropout), nn.Linear(h, o))


class Method(abc.ABC):
    """A missing-modality classifier (see the module docstring for the contract)."""

    name: str = "?"
    estimate_space: str = "own"  # "raw": estimates live in the table's embedding space

    def __init__(self, cfg: FitConfig | None = None):
        self.cfg = cfg or FitConfig()
        self.cfg.validate()
        self.modalities: list[str] = []
        self.dims: list[int] = []
        self.n_classes = 0

    # --- contract checks -----------------------------------------------------------------
    def _remember(self, train: ModalTable, y: np.ndarray, n_classes: int | None) -> np.ndarray:
        y = np.asarray(y)
        if len(y) != len(train):
            raise Prom3eError(f"{len(y)} labels for {len(train)} training rows")
        if not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
            raise Prom3eError("labels must be non-negative integer class codes")
        if not 2 <= len(train.modalities) <= 64:
            raise Prom3eError(f"need 2..64 modalities, got {len(train.modalities)}")
        self.modalities, self.dims = list(train.modalities), list(train.dims)
        self.n_classes = int(n_classes if n_classes is not None else y.max() + 1)
        if self.n_classes < 2 or y.max() >= self.n_classes:
            raise Prom3eError(f"need ≥ 2 classes and labels < n_classes ({self.n_classes})")
        return y.astype(np.int64)

    def _inputs(self, table: ModalTable, visible: np.ndarray | None) -> tuple[Tensor, Tensor]:
        """``(x [N, M, Dmax], visible bool[N, M])`` after checking the schema and the mask."""
        if not self.modalities:
            raise Prom3eError(f"{self.name}: call fit() before predicting")
        if table.modalities != self.modalities or table.dims != self.dims:
            have = ", ".join(f"{n}:{d}" for n, d in zip(table.modalities, table.dims, strict=True))
            want = ", ".join(f"{n}:{d}" for n, d in zip(self.modalities, self.dims, strict=True))
            raise Prom3eError(f"{self.name}: table modalities ({have}) differ from the training table's ({want})")
        vis = table.present if visible is None else np.asarray(visible, bool)
        if vis.shape != table.present.shape:
            raise Prom3eError(f"visible mask has shape {vis.shape}, want {table.present.shape}")
        if (vis & ~table.present).any():
            raise Prom3eError("visible mask marks a modality that the table lacks")
        if not vis.any(1).all():
            raise Prom3eError(f"{int((~vis.any(1)).sum())} row(s) have no visible modality")
        vis_t = torch.from_numpy(vis)
        # hidden slots are zeroed here, once: no method can read a value it may not see
        return torch.from_numpy(table.padded()).masked_fill(~vis_t[..., None], 0.0), vis_t

    # --- the interface -------------------------------------------------------------------
    @abc.abstractmethod
    def fit(self, train: ModalTable, y: np.ndarray, n_classes: int | None = None,
            val: ValidationSet | None = None) -> Method: ...

    @abc.abstractmethod
    def predict_proba(self, table: ModalTable, visible: np.ndarray | None = None) -> np.ndarray: ...

    def estimate(self, table: ModalTable, visible: np.ndarray | None, target: int
                 ) -> tuple[np.ndarray, np.ndarray] | None:
        """(Estimate of modality ``target`` from the visible ones, real ``target`` in that space)."""
        return None


class TorchMethod(Method):
    """A method trained end to end with the shared loop; subclasses build ``self.net``."""

    net: nn.Module

    @abc.abstractmethod
    def build(self, train: ModalTable, y: np.ndarray) -> nn.Module:
        """Create the network (the training table is available for prototypes or pools)."""

    @abc.abstractmethod
    def loss(self, x: Tensor, visible: Tensor, present: Tensor, y: Tensor, rows: Tensor
             ) -> tuple[Tensor, dict[str, float]]:
        """Training loss of one batch; ``present`` is the truth, ``rows`` the training-row ids."""

    @abc.abstractmethod
    def logits(self, x: Tensor, visible: Tensor) -> Tensor: ...

    def on_epoch(self, epoch: int) -> None:
        """Called before each epoch (e.g. to end a warm-up)."""

    def selectable(self, epoch: int) -> bool:
        """Whether the weights after ``epoch`` may be chosen as the best (False during a warm-up)."""
        return True

    def loop_epochs(self) -> int:
        """Epochs the shared loop runs (a method with its own pre-training runs fewer)."""
        return self.cfg.epochs

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    def fit(self, train: ModalTable, y: np.ndarray, n_classes: int | None = None,
            val: ValidationSet | None = None) -> TorchMethod:
        """Train on the :class:`~prom3e.train.engine.Engine`: AdamW, linear warm-up over 5 % of
        the steps then cosine to 1 % of ``lr``, gradient norm clipped at 5, the best
        validation epoch's weights kept (the first best wins a tie)."""
        y = self._remember(train, y, n_classes)
        cfg, epochs = self.cfg, self.loop_epochs()
        gen = seed_everything(cfg.seed)
        self.net = self.build(train, y).to(self.device)
        opt = torch.optim.AdamW([p for p in self.net.parameters() if p.requires_grad],
                                lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = max(1, -(-len(train) // cfg.batch_size))
        total, warm = epochs * steps, max(1, epochs * steps // 20)
        engine = Engine(opt, lambda s: warmup_cosine(s, cfg.lr, 0.01 * cfg.lr, warm, total), self.device,
                        clip=5.0, params=self.net.parameters(), best=-1.0)
        self.history: list[dict[str, float]] = []
        hooks = _FitHooks(self, train, y, gen, val, steps, epochs)
        engine.run(hooks, epochs)
        if hooks.best_state is not None:
            self.net.load_state_dict(hooks.best_state)
        self.best_epoch = engine.best_epoch if hooks.best_state is not None else epochs
        self.best_val_acc = engine.best if val is not None else None
        self.net.eval()
        return self

    @torch.no_grad()
    def predict_proba(self, table: ModalTable, visible: np.ndarray | None = None,
                      batch_size: int = 2048) -> np.ndarray:
        x, vis = self._inputs(table, visible)
        self.net.eval()
        out = [F.softmax(self.logits(x[i:i + batch_size].to(self.device), vis[i:i + batch_size].to(self.device))
                         .float(), -1).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out).numpy()


class ProxyMethod(TorchMethod):
    """A method whose net returns ``(logits, real [B, M, d], estimate [B, M, d])`` (CMPT, AOEPT)."""

    def logits(self, x: Tensor, visible: Tensor) -> Tensor:
        return self.net(x, visible)[0]

    @torch.no_grad()
    def estimate(self, table: ModalTable, visible: np.ndarray | None, target: int, batch_size: int = 4096):
        """The net's estimate of modality ``target`` and the real embedding in the same space.

        The estimate reads only the visible modalities; the real embedding is the net's
        projection of the table's present ``target`` values (zeros where absent).
        """
        x, vis = self._inputs(table, visible)
        x_real = self._inputs(table, table.present)[0]
        est, real = [], []
        for i in range(0, len(x), batch_size):
            _, _, p = self.net(x[i:i + batch_size].to(self.device), vis[i:i + batch_size].to(self.device))
            est.append(p[:, target].cpu())
            real.append(self.net.embed(x_real[i:i + batch_size].to(self.device))[:, target].cpu())
        return torch.cat(est).numpy(), torch.cat(real).numpy()


class _FitHooks(Hooks):
    """The methods' epochs: seeded order, modality dropout, best validation accuracy."""

    def __init__(self, m: TorchMethod, train: ModalTable, y: np.ndarray, gen: torch.Generator,
                 val: ValidationSet | None, steps: int, epochs: int):
        self.m, self.gen, self.val, self.steps, self.epochs = m, gen, val, steps, epochs
        self.present = torch.from_numpy(train.present)
        self.x = torch.from_numpy(train.padded()).masked_fill(~self.present[..., None], 0.0)  # absent: no value
        self.y = torch.from_numpy(y)
        self.best_state: dict[str, Tensor] | None = None

    def start_epoch(self, epoch: int) -> None:
        self.m.on_epoch(epoch)
        self.m.net.train()

    def batches(self, epoch: int):
        bs = self.m.cfg.batch_size
        order = torch.randperm(len(self.x), generator=self.gen)
        for i in range(self.steps):
            yield order[i * bs:(i + 1) * bs]

    def loss(self, idx: Tensor):
        if len(idx) < 2:
            return None, {}
        m, dev = self.m, self.m.device
        vis = drop_modalities(self.present[idx], m.cfg.drop_prob, self.gen)
        return m.loss(self.x[idx].to(dev), vis.to(dev), self.present[idx].to(dev), self.y[idx].to(dev), idx.to(dev))

    def diverged(self, epoch: int, index: int, loss: Tensor | None) -> Prom3eError:
        if loss is None:
            return Prom3eError(f"{self.m.name}: non-finite gradient at epoch {epoch + 1}")
        return Prom3eError(f"{self.m.name}: training diverged at epoch {epoch + 1} (loss {loss.item()})")

    def end_epoch(self, epoch: int, sums: dict[str, float], batches: int) -> tuple[dict, float | None]:
        record = {k: v / self.steps for k, v in sums.items()}
        self.m.history.append(record)
        if self.val is None:
            return record, None
        v = self.val
        record["val_acc"] = float((self.m.predict_proba(v.table, v.visible).argmax(1) == v.y).mean())
        return record, record["val_acc"]

    def selectable(self, epoch: int) -> bool:
        return self.m.selectable(epoch - 1)

    def epoch_done(self, record: dict, improved: bool) -> None:
        if improved:
            self.best_state = snapshot(self.m.net)
        if self.m.cfg.progress:
            print(f"  {self.m.name} epoch {len(self.m.history)}/{self.epochs} " +
                  " ".join(f"{k} {v:.3f}" for k, v in record.items()), flush=True)


def classification_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), y)
