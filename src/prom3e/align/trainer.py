"""Stage-1 alignment: train one head per modality against the frozen anchor.

For each modality m ≠ anchor, only rows where both m and the anchor are present form
pairs (image–unimodal pairs, as in the paper). The anchor is mapped to D by a fixed
projection (see :mod:`prom3e.align.heads`); m's head is trained with the symmetric
supervised-contrastive loss (same label = positive when a label column is given), AdamW
(lr 1e-4, betas (0.9, 0.98), eps 1e-6), a learnable logit scale, early stopping on a
held-out fraction of the pairs (the best epoch's weights are kept). Seeded throughout.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from prom3e.align.aligner import ALIGNER_FILES, Aligner
from prom3e.align.heads import AnchorProjection, Head, apply
from prom3e.align.supcon import LogitScale, supcon_loss
from prom3e.config import Options
from prom3e.data.labels import encode_labels
from prom3e.data.table import ModalTable, read_table, write_parquet
from prom3e.encoders.base import resolve_device
from prom3e.encoders.embed import encoder_configs
from prom3e.errors import Prom3eError
from prom3e.io import check_output_dir, check_output_file
from prom3e.metrics import label_ranks, recall_at_k, retrieval_ranks
from prom3e.runtime import progress_bar, torch_threads
from prom3e.train.engine import Engine, Hooks, snapshot


@dataclass
class AlignConfig(Options):
    dim: int | None = None  # D; default: min(512, anchor dim)
    anchor_proj: Literal["pca", "pca_whiten", "center"] = "pca"
    head: Literal["mlp", "linear"] = "mlp"  # trainable encoders always use their tower
    hidden: int = 1024
    dropout: float = 0.1
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    val_frac: float = 0.1
    patience: int = 10
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    # CPU threads while training (0: leave torch's setting). The heads are small: one
    # thread is near the fastest, and on a busy machine multi-threaded small ops stall.
    threads: int = 1

    WHAT: ClassVar[str] = "align option"
    BOUNDS: ClassVar[dict[str, str]] = {
        "dim": ">= 1", "hidden": ">= 1", "dropout": "[0, 1)", "epochs": ">= 1", "batch_size": ">= 2", "lr": "> 0",
        "weight_decay": ">= 0", "betas": "[0, 1)", "eps": "> 0", "val_frac": "[0, 1)", "patience": ">= 0",
        "seed": ">= 0", "threads": ">= 0"}


def _batches(n: int, bs: int, g: torch.Generator | None) -> list[torch.Tensor]:
    idx = torch.randperm(n, generator=g) if g is not None else torch.arange(n)
    out = list(idx.split(bs))
    if len(out) > 1 and len(out[-1]) < 2:  # a batch of one has no negatives
        out[-2] = torch.cat(out[-2:])
        out.pop()
    return out


class _HeadHooks(Hooks):
    """One head's epochs on the engine: seeded batches of its training pairs, the logit
    scale clamped after each step, the validation loss (lower is better) as the score."""

    def __init__(self, name: str, head: Head, scale: LogitScale, xt: torch.Tensor, za: torch.Tensor,
                 lab: torch.Tensor | None, tr: torch.Tensor, va: torch.Tensor, cfg: AlignConfig,
                 g: torch.Generator, bar=None):
        self.name, self.head, self.scale, self.xt, self.za, self.lab = name, head, scale, xt, za, lab
        self.tr, self.va, self.cfg, self.g, self.bar = tr, va, cfg, g, bar
        self.hist: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
        self.best_state: tuple[dict[str, torch.Tensor], float] | None = None

    def loss_on(self, rows: torch.Tensor) -> torch.Tensor:
        return supcon_loss(self.head(self.xt[rows]), self.za[rows], self.scale(),
                           None if self.lab is None else self.lab[rows])

    def start_epoch(self, epoch: int) -> None:
        self.head.train()

    def batches(self, epoch: int):
        for b in _batches(len(self.tr), self.cfg.batch_size, self.g):
            yield self.tr[b.to(self.tr.device)]

    def loss(self, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self.loss_on(rows)
        return loss, {"loss": loss.item()}

    def diverged(self, epoch: int, index: int, loss: torch.Tensor | None) -> Prom3eError:
        return Prom3eError(f"align: head '{self.name}' diverged at epoch {epoch + 1} step {index} (loss "
                           f"{loss.item() if loss is not None else '?'}); lower the learning rate or check the data")

    def after_step(self, stats: dict[str, float]) -> None:
        self.scale.clamp_()

    def end_epoch(self, epoch: int, sums: dict[str, float], batches: int) -> tuple[dict, float | None]:
        hist = self.hist
        hist["train_loss"].append(sums.get("loss", 0.0) / max(1, batches))
        self.head.eval()
        with torch.no_grad():
            vb = _batches(len(self.va), self.cfg.batch_size, None) if len(self.va) else []
            val = float(np.mean([float(self.loss_on(self.va[b.to(self.va.device)])) for b in vb])) if vb else None
        hist["val_loss"].append(val if val is not None else float("nan"))
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{hist['train_loss'][-1]:.3f}", val=f"{val:.3f}" if val is not None else "-")
        return {}, -(hist["train_loss"][-1] if val is None else val)  # the engine maximises

    def epoch_done(self, record: dict, improved: bool) -> None:
        if improved:
            self.best_state = (snapshot(self.head), self.scale.log_scale.item())


def _train_head(name: str, head: Head, x: np.ndarray, za: torch.Tensor, labels: np.ndarray | None,
                cfg: AlignConfig, seed: int, device: str, bar=None) -> dict[str, Any]:
    """Train one head on its pairs on the engine (AdamW at a constant ``lr``; early stopping:
    the validation loss must improve by 1e-4 within ``patience`` epochs); returns its
    training record (best weights kept)."""
    rng = np.random.default_rng(seed)
    n = len(x)
    n_val = int(round(cfg.val_frac * n)) if n >= 20 else 0
    perm = rng.permutation(n)
    va, tr = perm[:n_val], perm[n_val:]
    xt = torch.from_numpy(x).to(device)
    lab = None if labels is None else torch.from_numpy(labels).to(device)
    head.norm.fit(xt[tr])
    head.to(device)
    scale = LogitScale().to(device)
    decay = [p for p in head.parameters() if p.ndim >= 2]
    no_decay = [p for p in head.parameters() if p.ndim < 2] + list(scale.parameters())
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    g = torch.Generator().manual_seed(seed)
    tr_t, va_t = torch.from_numpy(tr).to(device), torch.from_numpy(va).to(device)
    hooks = _HeadHooks(name, head, scale, xt, za, lab, tr_t, va_t, cfg, g, bar)
    engine = Engine(opt, device=torch.device(device), min_delta=1e-4, patience=cfg.patience)
    engine.run(hooks, cfg.epochs)
    hist = hooks.hist
    if bar is not None and engine.epoch < cfg.epochs:  # stopped early
        bar.update(cfg.epochs - engine.epoch)
    if hooks.best_state is not None:
        head.load_state_dict(hooks.best_state[0])
        scale.log_scale.data.fill_(hooks.best_state[1])
    head.eval()
    rec: dict[str, Any] = {"pairs": int(n), "train_pairs": int(len(tr)), "val_pairs": int(n_val),
                           "epochs_run": len(hist["train_loss"]),
                           "best_epoch": int(np.nanargmin(hist["val_loss"] if n_val
                                                          else hist["train_loss"])) + 1,
                           "logit_scale": float(scale().detach()), **hist}
    if n_val:
        rec["val_loss_best"] = float(np.nanmin(hist["val_loss"]))
        rec["val_top1"] = _val_top1(head, xt[va_t], za[va_t], None if lab is None else lab[va_t], cfg.batch_size)
    return rec


@torch.no_grad()
def _val_top1(head: Head, x: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor | None, bs: int) -> float:
    """Share of validation rows whose nearest anchor is their own (or, with labels, shares the
    label): rank 1 under :mod:`prom3e.metrics`' tie rule, chunked (no n × n matrix)."""
    z = torch.cat([head(x[i:i + bs]).float().cpu() for i in range(0, len(x), bs)])
    a = anchors.float().cpu()
    if labels is None:
        ranks = retrieval_ranks(z, a, torch.arange(len(z)))
    else:  # an unlabelled row matches only its own anchor
        lab = labels.cpu().long()
        lab = torch.where(lab >= 0, lab, -1 - torch.arange(len(lab)))
        ranks = label_ranks(z, a, lab, lab)
    return float(recall_at_k(ranks, 1))


def fit_aligner(table: ModalTable, anchor: str, label: str | None = None,
                config: AlignConfig | None = None, encoders: dict[str, dict] | None = None,
                progress: bool = True) -> Aligner:
    """Fit the anchor projection and every other modality's head on ``table``'s rows."""

    cfg = config or AlignConfig()
    cfg.validate()
    table.check_values()  # huge or NaN inputs: one clear line, not a failure inside eigh
    device = resolve_device(cfg.device)
    encoders = encoders or {}
    a = table.index(anchor)
    a_dim = table.dims[a]
    dim = int(cfg.dim or min(512, a_dim))
    if len(table.modalities) < 2:
        raise Prom3eError(f"{table.source}: nothing to align: only the anchor '{anchor}'")
    arows = np.flatnonzero(table.present[:, a])
    if len(arows) < 2:
        raise Prom3eError(f"{table.source}: anchor '{anchor}' is present in {len(arows)} row(s)")
    proj = AnchorProjection(a_dim, dim, cfg.anchor_proj)
    proj.fit(torch.from_numpy(table.features[a][arows]))
    za_all = np.zeros((len(table), dim), np.float32)
    za_all[arows] = apply(proj, table.features[a][arows])
    codes = None if label is None else encode_labels(table.label(label))[0]  # −1: no label

    heads: dict[str, Any] = {}
    record: dict[str, Any] = {"config": asdict(cfg), "label": label,
                              "modalities": {anchor: {"rows": int(len(arows)),
                                                      "projection": cfg.anchor_proj}}}
    others = [m for m in range(len(table.modalities)) if m != a]
    torch_state = torch.random.get_rng_state()
    bar = progress_bar(total=cfg.epochs * len(others), show=progress, unit="epoch", desc="align")
    try:
        with torch_threads(cfg.threads if cfg.threads and device == "cpu" else None):
            for m in range(len(table.modalities)):
                name = table.modalities[m]
                if m == a:
                    heads[name] = proj
                    continue
                rows = np.flatnonzero(table.present[:, m] & table.present[:, a])
                if len(rows) < 4:
                    raise Prom3eError(f"{table.source}: modality '{name}' has {len(rows)} row(s) "
                                      f"paired with the anchor '{anchor}'; need at least 4")
                enc = encoders.get(name) or {}
                tower = {"encoder": enc["encoder"], "options": enc.get("options", {})} \
                    if enc.get("trainable") else None
                seed = cfg.seed * 1000 + m
                torch.manual_seed(seed)
                head = Head(table.dims[m], dim, "tower" if tower else cfg.head, cfg.hidden,
                            cfg.dropout, tower)
                bar.set_description(f"align {name}")
                rec = _train_head(name, head, table.features[m][rows], torch.from_numpy(za_all[rows]).to(
                    device), None if codes is None else codes[rows], cfg, seed, device, bar)
                heads[name] = head.cpu()
                record["modalities"][name] = {"head": head.cfg["kind"], **rec}
    finally:
        bar.close()
        torch.random.set_rng_state(torch_state)
    return Aligner(anchor, dim, heads, record, device, encoders)


def parse_where(expr: str | None, table: ModalTable) -> np.ndarray:
    """``COL=VALUE`` → ``bool[N]`` rows whose metadata column equals VALUE (as text)."""
    if not expr:
        return np.ones(len(table), bool)
    col, sep, value = expr.partition("=")
    if not sep:
        raise Prom3eError(f"--fit-where wants COLUMN=VALUE, got '{expr}'")
    vals = np.asarray(table.label(col.strip()), dtype=object).astype(str)
    mask = vals == value.strip()
    if not mask.any():
        raise Prom3eError(f"{table.source}: no row has {col.strip()} = '{value.strip()}'")
    return mask


def align_file(data: str | os.PathLike, anchor: str, out: str | os.PathLike,
               model_out: str | os.PathLike, label: str | None = None,
               config: AlignConfig | None = None, fit_where: str | None = None,
               modalities: list[str] | None = None, progress: bool = True,
               overwrite: bool = False) -> Aligner:
    """The ``prom3e align`` command: read, fit (on ``fit_where`` rows), transform, write.

    Both outputs are checked before the work (an input is never replaced; an existing output
    only with ``overwrite``)."""
    cfg = config or AlignConfig()
    cfg.validate()
    check_output_file(out, inputs=[data], overwrite=overwrite)
    check_output_dir(model_out, products=ALIGNER_FILES, inputs=[data, out], overwrite=overwrite, what="--model-out")
    table = read_table(data, modalities)
    table.index(anchor)  # a clear error for an unknown anchor
    if label is not None:
        table.label(label)
    fit = parse_where(fit_where, table)
    aligner = fit_aligner(table.take(np.flatnonzero(fit)), anchor, label, cfg,
                          encoder_configs(data), progress)
    aligner.record["fit_rows"] = int(fit.sum())
    aligner.record["fit_where"] = fit_where
    write_parquet(aligner.transform(table), out)
    aligner.save(model_out)
    return aligner
