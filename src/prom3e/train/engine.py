"""The one training engine: the epoch/step loop shared by stage 2 (:mod:`prom3e.train.loop`),
stage-1 alignment (:mod:`prom3e.align.trainer`) and the benchmark's methods
(:mod:`prom3e.methods.base`).

A caller supplies :class:`Hooks` (its batches, its loss, what an epoch's record is, what to
do with it); the :class:`Engine` owns what every loop shares: the learning-rate schedule,
precision (autocast), the optimiser step (with an optional gradient-norm clip), the
divergence check, best-epoch selection (a validation score, higher is better, with an
optional minimum improvement and patience) and the counters a resumed run restores
(``epoch``, ``step``, ``best``, ``best_epoch``). Process-group and DDP set-up for torchrun
live here too (:func:`init_distributed`, :func:`wrap_ddp`).

**The schedule** (:func:`warmup_cosine`): a linear warm-up over ``warmup`` steps
(``lr·(s+1)/warmup``), then a cosine from ``lr`` to ``min_lr`` over ``period`` steps,
restarting every ``period`` steps. Stage 2 uses ``warmup = min(warmup_steps, steps/10)``,
``period`` = the run (or ``restart_epochs``), ``min_lr`` its option; the methods use
``warmup = max(1, steps/20)``, ``period`` = the run, ``min_lr = lr/100``; alignment a
constant ``lr`` (no schedule).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from prom3e.errors import Prom3eError
from prom3e.runtime import autocast


def warmup_cosine(step: int, lr: float, min_lr: float, warmup: int, period: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine ``lr → min_lr`` restarting every ``period``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = ((step - warmup) % period) / period
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``module``'s state (the best epoch's weights, kept in memory)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def optimizer_step(opt: torch.optim.Optimizer, loss: Tensor, clip: float | None = None,
                   params: Iterable[Tensor] | None = None) -> Tensor | None:
    """Backward and one optimiser step; with ``clip``, the gradient norm of ``params`` is
    clipped first and returned (the step is not taken when it is not finite)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = None
    if clip is not None:
        norm = nn.utils.clip_grad_norm_(list(params or ()), clip)
        if not torch.isfinite(norm):
            return norm
    opt.step()
    return norm


def init_distributed(device: str) -> tuple[bool, int, int]:
    """``(distributed, rank, world size)``; under torchrun the process group is started once
    (NCCL on a GPU, gloo otherwise) and the local GPU selected."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False, 0, 1
    gpu = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo")
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return True, dist.get_rank(), dist.get_world_size()


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged across the ranks)."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class Hooks:
    """What one training loop supplies to the :class:`Engine` (override what you need)."""

    def start_epoch(self, epoch: int) -> None:
        """Before epoch ``epoch`` (0-based): seed, switch to training mode, …"""

    def batches(self, epoch: int) -> Iterable[Any]:
        """The epoch's batches (consumed lazily, one per step)."""
        raise NotImplementedError

    def loss(self, batch: Any) -> tuple[Tensor | None, dict[str, float]]:
        """The batch's loss (run under the engine's autocast) and its statistics;
        ``(None, {})`` skips the batch."""
        raise NotImplementedError

    def diverged(self, epoch: int, index: int, loss: Tensor | None) -> Prom3eError:
        """The error for a non-finite loss (``loss``) or gradient (``loss is None``)."""
        what = f"loss {loss.item()}" if loss is not None else "non-finite gradient"
        return Prom3eError(f"training diverged at epoch {epoch + 1} step {index} ({what})")

    def after_step(self, stats: dict[str, float]) -> None:
        """After each optimiser step (clamp a parameter, update a progress bar, …)."""

    def end_epoch(self, epoch: int, sums: dict[str, float], batches: int) -> tuple[dict, float | None]:
        """After epoch ``epoch`` (now 1-based: the number done): its record and its
        validation score (higher is better; ``None``: no selection this epoch)."""
        return {k: v / max(1, batches) for k, v in sums.items()}, None

    def selectable(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (1-based) may be chosen as the best."""
        return True

    def epoch_done(self, record: dict, improved: bool) -> None:
        """After the engine's counters are updated: log, checkpoint, keep the best weights."""


class Engine:
    """The loop: ``epoch``, ``step``, ``best``, ``best_epoch`` are its state (restored on resume)."""

    def __init__(self, opt: torch.optim.Optimizer, schedule: Callable[[int], float] | None = None,
                 device: torch.device | None = None, precision: str = "fp32", clip: float | None = None,
                 params: Iterable[Tensor] | None = None, best: float = float("-inf"),
                 min_delta: float = 0.0, patience: int = 0):
        self.opt, self.schedule, self.clip = opt, schedule, clip
        self.device, self.precision = device or torch.device("cpu"), precision
        self.params = list(params) if params is not None else [
            p for g in opt.param_groups for p in g["params"]]
        self.min_delta, self.patience = min_delta, patience
        self.epoch, self.step, self.best, self.best_epoch, self.bad = 0, 0, best, 0, 0

    def run(self, hooks: Hooks, epochs: int, stop_after: int | None = None) -> None:
        """Train until ``epochs`` are done (or after epoch ``stop_after``, or when the score
        has not improved for ``patience`` epochs)."""
        while self.epoch < min(epochs, stop_after or epochs):
            hooks.start_epoch(self.epoch)
            sums: dict[str, float] = {}
            count = 0
            for i, batch in enumerate(hooks.batches(self.epoch)):
                count += 1
                if self.schedule is not None:
                    for g in self.opt.param_groups:
                        g["lr"] = self.schedule(self.step)
                with autocast(self.device, self.precision):
                    loss, stats = hooks.loss(batch)
                if loss is None:
                    continue
                if not torch.isfinite(loss):
                    raise hooks.diverged(self.epoch, i, loss)
                norm = optimizer_step(self.opt, loss, self.clip, self.params)
                if norm is not None and not torch.isfinite(norm):
                    raise hooks.diverged(self.epoch, i, None)
                self.step += 1
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                hooks.after_step(stats)
            self.epoch += 1
            record, score = hooks.end_epoch(self.epoch, sums, count)
            improved = False
            if score is not None:
                if hooks.selectable(self.epoch) and score > self.best + self.min_delta:
                    self.best, self.best_epoch, self.bad, improved = score, self.epoch, 0, True
                else:
                    self.bad += 1
            hooks.epoch_done(record, improved)
            if self.patience and self.bad >= self.patience:
                break
