"""The one training engine (prom3e.train.engine): schedule, best epoch, patience, divergence."""

from __future__ import annotations

import math

import pytest
import torch

from prom3e.errors import Prom3eError
from prom3e.train.engine import Engine, Hooks, warmup_cosine


def test_warmup_cosine_schedule() -> None:
    lrs = [warmup_cosine(s, 1.0, 0.1, 4, 20) for s in range(30)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up
    assert lrs[4] == 1.0 and math.isclose(lrs[14], 0.55) and lrs[4:24] == sorted(lrs[4:24], reverse=True)
    assert lrs[24] == 1.0  # restart after one period
    assert warmup_cosine(0, 2.0, 0.0, 0, 10) == 2.0  # no warm-up


class _Scripted(Hooks):
    """A one-parameter model; the validation scores come from a script."""

    def __init__(self, scores, bad_step=None):
        self.w = torch.nn.Parameter(torch.ones(1))
        self.scores, self.bad_step, self.done = scores, bad_step, []

    def batches(self, epoch):
        return range(3)

    def loss(self, i):
        if i == 1 and len(self.done) == 0 and self.bad_step == "skip":
            return None, {}
        scale = float("nan") if self.bad_step == (len(self.done), i) else 1.0
        loss = (self.w * scale) ** 2
        return loss.sum(), {"loss": loss.item()}

    def end_epoch(self, epoch, sums, batches):
        return {"epoch": epoch, "batches": batches, **sums}, self.scores[epoch - 1]

    def epoch_done(self, record, improved):
        self.done.append((record, improved))


def _engine(h: _Scripted, **kw) -> Engine:
    return Engine(torch.optim.SGD([h.w], lr=0.1), **kw)


def test_best_epoch_min_delta_and_patience() -> None:
    h = _Scripted([0.1, 0.5, 0.5, 0.50005, 0.4, 0.45, 0.9])
    e = _engine(h, min_delta=1e-4, patience=3)
    e.run(h, epochs=7)
    assert [imp for _, imp in h.done] == [True, True, False, False, False]  # +5e-5 is not an improvement
    assert (e.epoch, e.best_epoch, e.best, e.step) == (5, 2, 0.5, 15)  # stopped after 3 epochs without one


def test_stop_after_and_resume_continue_the_counters() -> None:
    h = _Scripted([0.1, 0.2, 0.3, 0.4])
    e = _engine(h, schedule=lambda s: 0.01 * (s + 1))
    e.run(h, epochs=4, stop_after=2)
    assert (e.epoch, e.step, e.best_epoch) == (2, 6, 2)
    e.run(h, epochs=4)
    assert (e.epoch, e.step, e.best_epoch) == (4, 12, 4) and h.done[-1][0]["epoch"] == 4
    assert e.opt.param_groups[0]["lr"] == pytest.approx(0.12)  # the schedule at the last step


def test_skipped_batch_and_divergence() -> None:
    h = _Scripted([0.0], bad_step="skip")
    e = _engine(h)
    e.run(h, epochs=1)
    assert e.step == 2 and h.done[0][0]["batches"] == 3  # skipped: no step, still counted as a batch
    h = _Scripted([0.0, 0.0], bad_step=(1, 2))
    with pytest.raises(Prom3eError, match="diverged at epoch 2 step 2"):
        _engine(h).run(h, epochs=2)

    class InfiniteGradient(_Scripted):
        def loss(self, i):
            return torch.sqrt(self.w - 1).sum(), {}  # finite loss (0), infinite gradient

    h = InfiniteGradient([0.0])
    with pytest.raises(Prom3eError, match=r"epoch 1 step 0 \(non-finite gradient\)"):
        _engine(h, clip=1.0).run(h, epochs=1)
    assert h.w.item() == 1.0  # the step was not taken
