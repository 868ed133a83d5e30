"""The training loop: single process or torchrun (gloo on CPU, NCCL on GPU).

Every epoch's data order, masks and noise come from ``seed`` and the epoch number, so a
run resumed from ``last/`` continues exactly as if it had not stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from prom3e.data.masking import sample_visible, training_targets
from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError
from prom3e.models.prom3e import Prom3e, Prom3eConfig, named_config
from prom3e.runtime import autocast, resolve_device, resolve_precision
from prom3e.train import checkpoint as ckpt


@dataclass
class TrainConfig:
    model: str = "base"  # a named architecture: tiny | base | paper | large
    model_overrides: dict = field(default_factory=dict)
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
    noise: str = "dim"  # per-dimension ε ("dim") or the reference's one ε per row ("scalar")
    visible_probs: tuple[float, ...] = (0.9, 0.1)  # P(1 visible), P(2 visible), …
    reconstruct_all: bool = False  # reconstruct every present modality, not only masked ones
    label_column: str | None = None  # same-label rows are not negatives
    dedup: bool = True  # identical target embeddings are not negatives
    val_fraction: float = 0.1
    split_column: str | None = None  # rows marked 'train' train, 'val' validate (others unused); else val_fraction
    val_cap: int = 4000  # rows used for the per-epoch validation R@1
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16
    device: str = "auto"
    threads: int = 0  # 0 = torch's default

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise Prom3eError(f"unknown training option(s): {', '.join(unknown)}")
        d = dict(d)
        for k in ("betas", "visible_probs"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise Prom3eError("epochs must be ≥ 1 and batch_size ≥ 2")
        if not 0 < self.val_fraction < 1:
            raise Prom3eError("val_fraction must be in (0, 1)")
        if self.noise not in ("dim", "scalar"):
            raise Prom3eError("noise must be 'dim' or 'scalar'")
        if not self.visible_probs or min(self.visible_probs) < 0 or sum(self.visible_probs) <= 0:
            raise Prom3eError("visible_probs must be non-negative with a positive sum")


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split of ``n`` rows."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def lr_at(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up (at most a tenth of the run), then cosine (with optional restarts)."""
    warmup = min(cfg.warmup_steps, cfg.epochs * steps_per_epoch // 10)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    period = (cfg.restart_epochs or cfg.epochs) * steps_per_epoch
    t = ((step - warmup) % period) / period
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


def label_ids(table: ModalTable, column: str | None) -> np.ndarray | None:
    if column is None:
        return None
    _, ids = np.unique(table.label(column).astype(str), return_inverse=True)
    return ids.astype(np.int64)


@torch.no_grad()
def validation_r1(model: Prom3e, x: torch.Tensor, present: torch.Tensor, seed: int,
                  device: torch.device, precision: str) -> dict[str, float]:
    """R@1 of retrieving each row's real target among the validation rows, per modality.

    One fixed visible modality per row (seeded); each masked present modality is
    reconstructed from μ and ranked against that modality's real embeddings.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    visible = sample_visible(present, (1.0,), gen)
    out: dict[str, float] = {}
    with autocast(device, precision):
        post = model.encode(x.to(device), visible.to(device))
        recon = model.decode(post.mu, list(range(x.shape[1])))  # [M, B, D]
    for m, name in enumerate(model.cfg.modalities):  # metric only, not the training hot path
        rows = (present[:, m] & ~visible[:, m]).nonzero().squeeze(1)
        gallery = present[:, m].nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        sims = recon[m, rows].float() @ x[gallery, m].to(device).float().T
        true_pos = torch.searchsorted(gallery.to(device), rows.to(device))
        # identical gallery embeddings (a shared satellite tile) are indistinguishable: a tie counts
        hit = sims.gather(1, true_pos[:, None]).squeeze(1) >= sims.max(1).values
        out[name] = hit.float().mean().item()
    model.train()
    return out


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW as the training loop uses it: the fused kernel (one pass over all parameters)
    where PyTorch has one for the device, else the multi-tensor ``foreach`` version."""
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=fused or None, foreach=None if fused else True)


def training_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, visible: torch.Tensor,
                  targets: torch.Tensor, labels: torch.Tensor | None, cfg: TrainConfig,
                  device: torch.device, precision: str, kl_weight: float | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step on one batch (forward under autocast, backward, AdamW);
    ``kl_weight`` overrides ``cfg.kl_weight`` (β-annealing)."""
    with autocast(device, precision):
        loss, stats = net(x, visible, targets, labels, kl_weight=kl_weight if kl_weight is not None else cfg.kl_weight,
                          noise=cfg.noise, dedup=cfg.dedup)
    if not torch.isfinite(loss):
        return loss, stats
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, stats


class Trainer:
    def __init__(self, table: ModalTable, cfg: TrainConfig, run_dir: str | os.PathLike,
                 progress: bool = True):
        cfg.validate()
        self.cfg, self.table, self.run = cfg, table, Path(run_dir)
        self.progress = progress
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
            dist.init_process_group(backend)
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if self.distributed and torch.cuda.is_available() and cfg.device != "cpu":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.model_cfg: Prom3eConfig = named_config(
            cfg.model, table.modalities, table.dims, **cfg.model_overrides)
        self.model = Prom3e(self.model_cfg).to(self.device)
        self.opt = make_optimizer(self.model, cfg)
        if cfg.split_column:
            part = np.asarray(table.label(cfg.split_column)).astype(str)
            self.train_rows, self.val_rows = np.flatnonzero(part == "train"), np.flatnonzero(part == "val")
            if not len(self.train_rows) or not len(self.val_rows):
                raise Prom3eError(f"split column '{cfg.split_column}': need rows marked 'train' and 'val'")
        else:
            self.train_rows, self.val_rows = split_rows(len(table), cfg.val_fraction, cfg.seed)
        self.x = torch.from_numpy(table.padded())
        self.present = torch.from_numpy(table.present)
        labels = label_ids(table, cfg.label_column)
        self.labels = torch.from_numpy(labels) if labels is not None else None
        self.epoch, self.step, self.best = 0, 0, -1.0
        self.history: list[dict] = []
        self.ddp = None
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    # --- persistence ---------------------------------------------------------------------
    def _save(self, which: str) -> None:
        if self.rank != 0:
            return
        self.run.mkdir(parents=True, exist_ok=True)
        ckpt.write_json(self.run / "config.json", {
            "format_version": ckpt.FORMAT_VERSION,
            "model": self.model_cfg.to_dict(),
            "train": asdict(self.cfg),
        })
        ckpt.write_json(self.run / "schema.json", ckpt.schema_dict(self.table.modalities, self.table.dims))
        state = self.model.state_dict()
        if which == "best":
            ckpt.save_tensors(self.run / "model.safetensors", state)
            return
        last = self.run / "last"
        opt_tensors, opt_meta = ckpt.optimizer_tensors(self.opt)
        ckpt.save_tensors(last / "model.safetensors", state)
        ckpt.save_tensors(last / "optimizer.safetensors", opt_tensors)
        ckpt.write_json(last / "state.json", {
            "epoch": self.epoch, "step": self.step, "best": self.best,
            "history": self.history, "optimizer": opt_meta,
        })

    def resume(self) -> None:
        last = self.run / "last"
        state = ckpt.read_json(last / "state.json")
        saved = ckpt.read_json(self.run / "config.json")
        if saved.get("model") != json.loads(json.dumps(self.model_cfg.to_dict())):
            raise Prom3eError(f"{self.run}: --resume with a different model config or table schema")
        ckpt.load_state_into(self.model, last / "model.safetensors")
        ckpt.restore_optimizer(self.opt, ckpt.load_tensors(last / "optimizer.safetensors"),
                               state["optimizer"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        self.history = state["history"]

    # --- the loop ------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        if self.rank != 0:
            return
        self.history.append(record)
        with open(self.run / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def fit(self, stop_after: int | None = None) -> dict:
        """Train to ``cfg.epochs`` (or stop after epoch ``stop_after``, as an interruption would)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.run.mkdir(parents=True, exist_ok=True)
        if self.rank == 0 and self.epoch == 0:
            (self.run / "log.jsonl").unlink(missing_ok=True)
        n_train = len(self.train_rows)
        per_rank = cfg.batch_size // self.world
        steps_per_epoch = max(1, n_train // cfg.batch_size)
        val_rows = self.val_rows[: cfg.val_cap]
        net = self.ddp or self.model
        self.model.train()
        while self.epoch < min(cfg.epochs, stop_after or cfg.epochs):
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.epoch)
            torch.manual_seed(cfg.seed * 7_919 + self.epoch)
            order = torch.from_numpy(self.train_rows)[torch.randperm(n_train, generator=gen)]
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                       disable=not self.progress or self.rank != 0, leave=False)
            sums: dict[str, float] = {}
            for i in bar:
                idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                present = self.present[idx]
                visible = sample_visible(present, cfg.visible_probs, gen)
                targets = training_targets(present, visible, cfg.reconstruct_all)
                mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
                idx, visible, targets = idx[mine], visible[mine], targets[mine]
                for g in self.opt.param_groups:
                    g["lr"] = lr_at(self.step, steps_per_epoch, cfg)
                x = self.x[idx].to(self.device, non_blocking=True)
                lab = self.labels[idx].to(self.device) if self.labels is not None else None
                beta = cfg.kl_weight * min(1.0, (self.step + 1) / (cfg.kl_warmup_epochs * steps_per_epoch)) \
                    if cfg.kl_warmup_epochs else cfg.kl_weight
                loss, stats = training_step(net, self.opt, x, visible.to(self.device), targets.to(self.device),
                                            lab, cfg, self.device, self.precision, beta)
                if not torch.isfinite(loss):
                    raise Prom3eError(f"training diverged at epoch {self.epoch + 1} step {i} "
                                      f"(loss {loss.item()}); lower --lr or check the data")
                self.step += 1
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                bar.set_postfix(loss=f"{float(stats['loss']):.3f}", acc=f"{float(stats['acc']):.2f}")
            self.epoch += 1
            record = {"epoch": self.epoch, "step": self.step, "lr": lr_at(self.step, steps_per_epoch, cfg),
                      **{k: v / steps_per_epoch for k, v in sums.items()},
                      "seconds": time.perf_counter() - t0}
            if self.rank == 0:
                r1 = validation_r1(self.model, self.x[val_rows], self.present[val_rows], cfg.seed,
                                   self.device, self.precision)
                record["val_r1"] = r1
                record["val_r1_mean"] = float(np.mean(list(r1.values()))) if r1 else 0.0
                self._log(record)
                if record["val_r1_mean"] > self.best:
                    self.best = record["val_r1_mean"]
                    self._save("best")
                self._save("last")
                if self.progress:
                    sigma = (f"‖σ‖₁ {record['sigma_l1']:.3g}  logσ² at clip {record['logvar_clip_share']:.0%}  "
                             if "logvar_clip_share" in record else "")
                    print(f"epoch {self.epoch}/{cfg.epochs}  loss {record['loss']:.4f}  "
                          f"val R@1 {record['val_r1_mean']:.3f}  {sigma}({record['seconds']:.1f}s)", flush=True)
        summary = {"epochs": self.epoch, "best_val_r1_mean": self.best, "rank": self.rank,
                   "parameters": self.model.n_params(), "precision": self.precision,
                   "device": str(self.device), "train_rows": len(self.train_rows),
                   "val_rows": len(self.val_rows)}
        if self.rank == 0:
            ckpt.write_json(self.run / "metrics.json", {**summary, "history": self.history})
            ckpt.write_json(self.run / "split.json", {"seed": self.cfg.seed,
                                                      "val_rows": self.val_rows.tolist()})
        if self.distributed:
            dist.barrier()
        return summary


def train(table: ModalTable, run_dir: str | os.PathLike, cfg: TrainConfig,
          resume: bool = False, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train ProM3E on a validated table; write the run folder; return a summary."""
    trainer = Trainer(table, cfg, run_dir, progress)
    if progress and trainer.rank == 0:
        print(f"prom3e: {cfg.model} model, {trainer.model.n_params():,} parameters, "
              f"{len(table.modalities)} modalities, device {trainer.device}, {trainer.precision}",
              flush=True)
    if resume:
        trainer.resume()
    return trainer.fit(stop_after)
