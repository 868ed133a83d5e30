"""The training loop: single process or torchrun (gloo on CPU, NCCL on GPU).

Every epoch's data order, masks and noise come from ``seed`` and the epoch number, so a
run resumed from ``last/`` continues exactly as if it had not stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open

from prom3e import distributed
from prom3e.config import Options
from prom3e.data.masking import sample_visible, training_targets
from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError
from prom3e.io import write_text
from prom3e.metrics import dedup_gallery, recall_at_k, retrieval_ranks
from prom3e.models.prom3e import CONFIGS, Prom3e, Prom3eConfig, named_config
from prom3e.runtime import autocast, progress_bar, resolve_device, resolve_precision
from prom3e.train import checkpoint as ckpt
from prom3e.train.data import BatchSource, InMemorySource, label_ids, split_rows  # noqa: F401 (re-exported)
from prom3e.train.engine import Engine, Hooks, init_distributed, optimizer_step, snapshot, warmup_cosine, wrap_ddp


@dataclass
class TrainConfig(Options):
    model: Literal["tiny", "base", "paper", "large"] = "base"  # a named architecture
    model_overrides: dict = field(default_factory=dict)  # Prom3eConfig fields, e.g. {depth: 2}
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    restart_epochs: int = 0  # cosine warm restarts every T₀ epochs; 0 = one cosine over the run
    kl_weight: float = 1e-4  # λ: the reference's packaged config (its code: 1e-3); see docs/STAGE2.md
    kl_warmup_epochs: int = 0  # β-annealing: the KL weight ramps linearly from 0 over these epochs
    noise: Literal["dim", "scalar"] = "dim"  # per-dimension ε or the reference's one ε per row
    visible_probs: tuple[float, ...] = (0.9, 0.1)  # P(1 visible), P(2 visible), …
    reconstruct_all: bool = False  # reconstruct every present modality, not only masked ones
    label_column: str | None = None  # same-label rows are not negatives
    dedup: bool = True  # identical target embeddings are not negatives
    val_fraction: float = 0.1
    split_column: str | None = None  # rows marked 'train' train, 'val' validate (others unused); else val_fraction
    val_cap: int = 4000  # rows used for the per-epoch validation R@1
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # 0 = torch's default

    WHAT: ClassVar[str] = "training option"
    BOUNDS: ClassVar[dict[str, str]] = {
        "epochs": ">= 1", "batch_size": ">= 2", "lr": "> 0", "min_lr": ">= 0", "weight_decay": ">= 0",
        "betas": "[0, 1)", "eps": "> 0", "warmup_steps": ">= 0", "restart_epochs": ">= 0", "kl_weight": ">= 0",
        "visible_probs": ">= 0", "val_fraction": "(0, 1)", "val_cap": ">= 1", "seed": ">= 0", "threads": ">= 0"}

    def check(self) -> None:
        if not self.visible_probs or sum(self.visible_probs) <= 0:
            self.fail("visible_probs", f"give non-negative probabilities with a positive sum, got {self.visible_probs}")
        if self.min_lr > self.lr:
            self.fail("min_lr", f"must be ≤ lr ({self.lr}), got {self.min_lr}")
        fixed = {"modalities", "dims"}
        known = [f.name for f in fields(Prom3eConfig) if f.name not in fixed]
        bad = sorted(str(k) for k in self.model_overrides if k not in known)
        if bad:
            self.fail("model_overrides", f"unknown model option(s) {', '.join(bad)} (known: {', '.join(known)})")
        Prom3eConfig.from_dict({**CONFIGS[self.model], **self.model_overrides, "modalities": ["a"], "dims": [1]},
                               where="model_overrides")


def lr_at(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Stage 2's schedule (:func:`prom3e.train.engine.warmup_cosine`): linear warm-up (at most
    a tenth of the run), then cosine to ``min_lr`` (restarting every ``restart_epochs``)."""
    warmup = min(cfg.warmup_steps, cfg.epochs * steps_per_epoch // 10)
    period = (cfg.restart_epochs or cfg.epochs) * steps_per_epoch
    return warmup_cosine(step, cfg.lr, cfg.min_lr, warmup, period)


@torch.no_grad()
def validation_r1(model: Prom3e, x: torch.Tensor, present: torch.Tensor, seed: int,
                  device: torch.device, precision: str, batch_size: int = 1024) -> dict[str, float]:
    """R@1 of retrieving each row's real target among the validation rows, per modality.

    One fixed visible modality per row (seeded); each masked present modality is
    reconstructed from μ and ranked by cosine against that modality's distinct real
    embeddings (:mod:`prom3e.metrics`: a tie is a miss, NaN is a miss). Encoding and
    ranking are chunked: memory grows linearly with the rows, never as rows².
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    visible = sample_visible(present, (1.0,), gen)
    mods = list(range(x.shape[1]))
    recon = torch.empty(len(mods), len(x), x.shape[2])
    for i in range(0, len(x), batch_size):
        with autocast(device, precision):
            post = model.encode(x[i:i + batch_size].to(device), visible[i:i + batch_size].to(device))
            recon[:, i:i + batch_size] = model.decode(post.mu, mods).float().cpu()
    out: dict[str, float] = {}
    for m, (name, d) in enumerate(zip(model.cfg.modalities, model.cfg.dims, strict=True)):
        rows = (present[:, m] & ~visible[:, m]).nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        have = present[:, m].nonzero().squeeze(1)
        gallery, inv = dedup_gallery(x[have, m, :d].numpy())  # a shared tile is one item
        where = torch.full((len(x),), -1, dtype=torch.long)
        where[have] = torch.arange(len(have))
        ranks = retrieval_ranks(recon[m, rows, :d], gallery, inv[where[rows]])
        out[name] = float(recall_at_k(ranks, 1))
    model.train()
    return out


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW as the training loop uses it: the fused kernel (one pass over all parameters)
    where PyTorch has one for the device, else the multi-tensor ``foreach`` version."""
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=fused or None, foreach=None if fused else True)


def training_loss(net: torch.nn.Module, x: torch.Tensor, visible: torch.Tensor, targets: torch.Tensor,
                  labels: torch.Tensor | None, cfg: TrainConfig, kl_weight: float | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's loss on one batch; ``kl_weight`` overrides ``cfg.kl_weight`` (β-annealing).
    Under torchrun every rank's targets are gathered first: the negatives span the global batch."""
    batch = distributed.gather_batch(x, targets, labels)
    return net(x, visible, targets, labels, kl_weight=kl_weight if kl_weight is not None else cfg.kl_weight,
               noise=cfg.noise, dedup=cfg.dedup, batch=batch)


def training_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, visible: torch.Tensor,
                  targets: torch.Tensor, labels: torch.Tensor | None, cfg: TrainConfig,
                  device: torch.device, precision: str, kl_weight: float | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step on one batch, as the engine takes it (forward under autocast,
    backward, AdamW; no step on a non-finite loss)."""
    with autocast(device, precision):
        loss, stats = training_loss(net, x, visible, targets, labels, cfg, kl_weight)
    if torch.isfinite(loss):
        optimizer_step(opt, loss)
    return loss, stats


# settings that may differ on --resume without --allow-changes (they change neither the
# split nor the trajectory of the epochs already run)
RESUME_FREE = ("epochs", "device", "threads")


class Trainer(Hooks):
    """Stage 2 on the :class:`~prom3e.train.engine.Engine`. With ``run_dir``, the run folder
    (config, ``last/`` checkpoint each epoch, best weights, log, metrics, split) is written
    as training goes (and can be resumed); without, nothing is written and the best epoch's
    weights are kept in memory (:meth:`best_model`)."""

    def __init__(self, table: ModalTable | BatchSource, cfg: TrainConfig, run_dir: str | os.PathLike | None = None,
                 progress: bool = True, resume: bool = False, overwrite: bool = False,
                 allow_changes: bool = False):
        cfg.validate()
        if isinstance(table, ModalTable):
            table.check_values()  # tables built in memory are not checked by the readers
            table = InMemorySource(table, cfg.val_fraction, cfg.val_cap, cfg.seed, cfg.label_column, cfg.split_column)
        elif cfg.split_column:
            raise Prom3eError(f"{table.source}: split_column '{cfg.split_column}' needs a table in memory; a streamed "
                              "dataset splits by val_fraction")
        if table.n_train < 2:
            raise Prom3eError(f"{table.source}: {table.n_train + table.n_val} row(s) leave {table.n_train} for "
                              f"training after the validation split; need at least 2")
        if resume and run_dir is None:
            raise Prom3eError("resume needs the run folder to continue")
        self.cfg, self.source = cfg, table
        self.run = Path(run_dir) if run_dir is not None else None
        self.progress, self.allow_changes = progress, allow_changes
        self.distributed, self.rank, self.world = init_distributed(cfg.device)
        if self.rank == 0 and self.run is not None:  # before any work: refuse a run in the way, clean debris
            ckpt.prepare_run(self.run, resume, overwrite, self.source.inputs())
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.model_cfg: Prom3eConfig = named_config(
            cfg.model, self.source.modalities, self.source.dims, **cfg.model_overrides)
        self.model = Prom3e(self.model_cfg).to(self.device)
        self.opt = make_optimizer(self.model, cfg)
        self.history: list[dict] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.ddp = wrap_ddp(self.model, self.device) if self.distributed else None
        self.steps_per_epoch = self.source.steps_per_epoch(cfg.batch_size)
        self.engine = Engine(self.opt, lambda s: lr_at(s, self.steps_per_epoch, cfg), self.device, self.precision,
                             best=-1.0)

    @property
    def epoch(self) -> int:
        return self.engine.epoch

    @property
    def step(self) -> int:
        return self.engine.step

    # --- persistence ---------------------------------------------------------------------
    def _write_config(self) -> None:
        ckpt.write_json(self.run / "config.json", {
            "format_version": ckpt.FORMAT_VERSION,
            "model": self.model_cfg.to_dict(),
            "train": asdict(self.cfg),
        })
        ckpt.write_json(self.run / "schema.json", ckpt.schema_dict(self.source.modalities, self.source.dims))

    def _checkpoint(self, improved: bool) -> None:
        """``last/`` atomically (with the best so far), then the best weights if this epoch is it:
        a kill between the two is repaired on resume (:meth:`resume`)."""
        e = self.engine
        state = self.model.state_dict()
        ckpt.save_checkpoint(self.run, state, self.opt, {
            "epoch": e.epoch, "step": e.step, "best": e.best, "best_epoch": e.best_epoch,
            "history": self.history, "data": self.source.fingerprint()})
        if improved:
            ckpt.save_tensors(self.run / "model.safetensors", state, {"epoch": e.epoch})

    def _changed_settings(self, saved: dict) -> list[str]:
        new = json.loads(json.dumps(asdict(self.cfg)))
        return [f"{k} {saved[k]!r} → {new[k]!r}" for k in sorted(saved.keys() & new.keys())
                if saved[k] != new[k] and k not in RESUME_FREE]

    def resume(self) -> None:
        """Continue from ``last/``: refuse other settings or another table (unless
        ``allow_changes``), verify the checkpoint, and put ``log.jsonl`` back in step with it."""
        last = self.run / "last"
        saved = ckpt.read_json(self.run / "config.json")
        if saved.get("model") != json.loads(json.dumps(self.model_cfg.to_dict())):
            raise Prom3eError(f"{self.run}: --resume with a different model config or table schema")
        changed = self._changed_settings(saved.get("train", {}))
        if not (last / "state.json").exists():  # killed before its first checkpoint: start again
            if changed and not self.allow_changes:
                raise Prom3eError(f"{self.run}: --resume with different settings: {'; '.join(changed)} "
                                  "(pass --allow-changes to continue anyway)")
            return
        state = ckpt.read_checkpoint_state(self.run)
        data = self.source.fingerprint()
        if state.get("data") not in (None, data):
            old = state["data"]
            changed.append(f"the table ({old.get('rows')} rows → {data['rows']}" +
                           (", same row count but other contents)" if old.get("rows") == data["rows"] else ")"))
        if changed and not self.allow_changes:
            raise Prom3eError(f"{self.run}: --resume with different settings: {'; '.join(changed)} "
                              "(the split and the schedule would change; pass --allow-changes to continue anyway)")
        ckpt.load_state_into(self.model, last / "model.safetensors")
        ckpt.restore_optimizer(self.opt, ckpt.load_tensors(last / "optimizer.safetensors"),
                               state["optimizer"])
        e = self.engine
        e.epoch, e.step, e.best = state["epoch"], state["step"], state["best"]
        e.best_epoch, self.history = state.get("best_epoch", 0), state["history"]
        if self.rank == 0:
            best = self.run / "model.safetensors"
            if e.best_epoch == e.epoch and _saved_epoch(best) != e.epoch:  # killed before the copy
                ckpt.save_tensors(best, self.model.state_dict(), {"epoch": e.epoch})
            lines = "".join(json.dumps(r) + "\n" for r in self.history)  # epochs past the checkpoint: gone
            write_text(self.run / "log.jsonl", lines)

    def best_model(self) -> Prom3e:
        """The model with the best epoch's weights (kept in memory, or the run's best file)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        elif self.run is not None and (self.run / "model.safetensors").is_file():
            ckpt.load_state_into(self.model, self.run / "model.safetensors")
        return self.model

    # --- the engine's hooks --------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self.t0 = time.perf_counter()
        self.gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        torch.manual_seed(self.cfg.seed * 7_919 + epoch)
        self.model.train()

    def batches(self, epoch: int):
        cfg = self.cfg
        self.bar = progress_bar(self.source.batches(epoch, cfg.batch_size, self.gen),
                                show=self.progress and self.rank == 0, total=self.steps_per_epoch,
                                desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for batch in self.bar:
            visible = sample_visible(batch.present, cfg.visible_probs, self.gen)
            targets = training_targets(batch.present, visible, cfg.reconstruct_all)
            yield batch, visible[batch.mine], targets[batch.mine]

    def loss(self, item) -> tuple[torch.Tensor, dict]:
        batch, visible, targets = item
        cfg, dev = self.cfg, self.device
        x = batch.x.to(dev, non_blocking=True)
        lab = batch.labels.to(dev) if batch.labels is not None else None
        beta = cfg.kl_weight * min(1.0, (self.engine.step + 1) / (cfg.kl_warmup_epochs * self.steps_per_epoch)) \
            if cfg.kl_warmup_epochs else cfg.kl_weight
        return training_loss(self.ddp or self.model, x, visible.to(dev), targets.to(dev), lab, cfg, beta)

    def diverged(self, epoch: int, index: int, loss: torch.Tensor | None) -> Prom3eError:
        return Prom3eError(f"training diverged at epoch {epoch + 1} step {index} "
                           f"(loss {loss.item() if loss is not None else 'finite, gradient not'}); "
                           "lower --lr or check the data")

    def after_step(self, stats: dict) -> None:
        self.bar.set_postfix(loss=f"{float(stats['loss']):.3f}", acc=f"{float(stats['acc']):.2f}")

    def end_epoch(self, epoch: int, sums: dict[str, float], batches: int) -> tuple[dict, float | None]:
        sums = distributed.all_mean(sums)  # under torchrun: the global batches' loss, as one process logs
        spe = self.steps_per_epoch
        record = {"epoch": epoch, "step": self.engine.step, "lr": lr_at(self.engine.step, spe, self.cfg),
                  **{k: v / spe for k, v in sums.items()}, "seconds": time.perf_counter() - self.t0}
        if self.rank != 0:
            return record, None
        r1 = validation_r1(self.model, *self.source.validation(), self.cfg.seed, self.device, self.precision)
        record["val_r1"] = r1
        record["val_r1_mean"] = float(np.mean(list(r1.values()))) if r1 else 0.0
        return record, record["val_r1_mean"]

    def epoch_done(self, record: dict, improved: bool) -> None:
        if self.rank != 0:
            return
        self.history.append(record)
        if self.run is not None:
            with open(self.run / "log.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            self._checkpoint(improved)
        elif improved:
            self.best_state = snapshot(self.model)
        if self.progress:
            sigma = (f"‖σ‖₁ {record['sigma_l1']:.3g}  logσ² at clip {record['logvar_clip_share']:.0%}  "
                     if "logvar_clip_share" in record else "")
            print(f"epoch {record['epoch']}/{self.cfg.epochs}  loss {record['loss']:.4f}  "
                  f"val R@1 {record['val_r1_mean']:.3f}  {sigma}({record['seconds']:.1f}s)", flush=True)

    # --- the run -------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> dict:
        """Train to ``cfg.epochs`` (or stop after epoch ``stop_after``, as an interruption would)."""
        if self.rank == 0 and self.run is not None:
            self.run.mkdir(parents=True, exist_ok=True)
            self._write_config()
            if self.engine.epoch == 0:
                (self.run / "log.jsonl").unlink(missing_ok=True)
        self.model.train()
        self.engine.run(self, self.cfg.epochs, stop_after)
        summary = {"epochs": self.engine.epoch, "best_val_r1_mean": self.engine.best, "rank": self.rank,
                   "parameters": self.model.n_params(), "precision": self.precision,
                   "device": str(self.device), "train_rows": self.source.n_train,
                   "val_rows": self.source.n_val}
        if self.rank == 0 and self.run is not None:
            ckpt.write_json(self.run / "metrics.json", {**summary, "history": self.history})
            ckpt.write_json(self.run / "split.json", self.source.split_record())
        if self.distributed:
            dist.barrier()
        return summary


def _saved_epoch(path: Path) -> int | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {}).get("epoch", -1))
    except (OSError, ValueError, RuntimeError, SafetensorError):
        return None


def train_model(table: ModalTable | BatchSource, cfg: TrainConfig, run_dir: str | os.PathLike | None = None,
                resume: bool = False, progress: bool = True, stop_after: int | None = None,
                overwrite: bool = False, allow_changes: bool = False) -> tuple[Prom3e, dict]:
    """Train ProM3E on a validated table (or a batch source, :mod:`prom3e.train.data`);
    return the model with its best epoch's weights, in memory, and a summary.

    With ``run_dir`` the run folder is written as training goes; an existing run there is
    refused unless ``resume`` (continue it: same settings and table, unless
    ``allow_changes``) or ``overwrite`` (replace it). Without, nothing is written."""
    trainer = Trainer(table, cfg, run_dir, progress, resume=resume, overwrite=overwrite,
                      allow_changes=allow_changes)
    if progress and trainer.rank == 0:
        print(f"prom3e: {cfg.model} model, {trainer.model.n_params():,} parameters, "
              f"{len(trainer.source.modalities)} modalities, device {trainer.device}, {trainer.precision}",
              flush=True)
    if resume:
        trainer.resume()
    summary = trainer.fit(stop_after)
    return trainer.best_model(), summary


def train(table: ModalTable | BatchSource, run_dir: str | os.PathLike, cfg: TrainConfig,
          resume: bool = False, progress: bool = True, stop_after: int | None = None,
          overwrite: bool = False, allow_changes: bool = False) -> dict:
    """``prom3e train``: :func:`train_model` writing the run folder ``run_dir``; returns the summary."""
    return train_model(table, cfg, run_dir, resume, progress, stop_after, overwrite, allow_changes)[1]
