"""The loss kernels: fused distance logits (forward, gradients, clamp) and duplicate detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prom3e.models.losses import distance_logits, near_duplicates


def reference_logits(a, b, alpha, beta, drop=None):
    """The plain autograd formula the fused function replaces."""
    sq = (a.pow(2).sum(-1)[..., :, None] + b.pow(2).sum(-1)[..., None, :]).sub(a @ b.transpose(-1, -2), alpha=2)
    out = alpha[:, None, None] * sq.clamp_min(1e-8).sqrt() + beta[:, None, None]
    return out if drop is None else out.masked_fill(drop, float("-inf"))


def inputs(dtype=torch.float64, u=3, c=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(u, c, d, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(u, c, d, generator=g, dtype=dtype).requires_grad_()
    alpha = torch.tensor([-5.0, -2.0, -9.0], dtype=dtype).requires_grad_()
    beta = torch.tensor([5.0, 1.0, 0.5], dtype=dtype).requires_grad_()
    drop = torch.zeros(u, 1, c, dtype=torch.bool)
    drop[1, 0, 5:] = True
    return a, b, alpha, beta, drop


def test_fused_distance_logits_gradients_are_exact():
    a, b, alpha, beta, drop = inputs()
    f = lambda a, b, al, be: distance_logits(a, b, al, be, drop).masked_fill(drop, 0.0)  # noqa: E731
    assert torch.autograd.gradcheck(f, (a, b, alpha, beta))


def test_fused_distance_logits_match_autograd_and_survive_zero_distance():
    a, b, alpha, beta, drop = inputs(torch.float32)
    with torch.no_grad():
        b[0, 2] = a[0, 2]  # an exact zero distance: the clamp's zero gradient, no NaN
    grads = []
    for fn in (distance_logits, reference_logits):
        out = fn(a, b, alpha, beta, drop)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).masked_fill(drop, 0.0)
        (out.masked_fill(drop, 0.0) * w).sum().backward()
        grads.append([out.detach()] + [t.grad.clone() for t in (a, b, alpha, beta)])
        for t in (a, b, alpha, beta):
            t.grad = None
    for x, y in zip(*grads, strict=True):
        assert torch.isfinite(x[~torch.isinf(x)]).all()
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def test_near_duplicates_fast_path_agrees_with_fp32():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(2, 64, 32, generator=g), dim=-1)
    x[0, 3] = x[0, 9]  # identical
    x[0, 4] = x[0, 10] + 5e-4 / 32**0.5  # distance 5e-4: a duplicate
    x[0, 5] = x[0, 11] + 3e-3 / 32**0.5  # distance 3e-3: not one
    x[1, :40] = x[1, 0]  # many copies: the fallback path
    exact = near_duplicates(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = near_duplicates(x)
    assert torch.equal(fast, exact)
    assert exact[0, 3, 9] and exact[0, 4, 10] and not exact[0, 5, 11] and exact[1, :40, :40].all()
    assert exact.diagonal(dim1=1, dim2=2).all() and exact.sum() == 2 * 64 + 2 * 2 + 40 * 40 - 40


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_loss_runs_under_each_precision(precision):
    from prom3e.models.losses import contrastive_reconstruction

    a, b, alpha, beta, _ = inputs(torch.float32)
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[2, 4:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, acc = contrastive_reconstruction(F.normalize(a, dim=-1), F.normalize(b, dim=-1).detach(),
                                               valid, alpha, beta)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and 0 <= float(acc) <= 1


def test_ignored_rows_with_every_column_masked_give_finite_gradients() -> None:
    """An ignored row whose candidates are all same-label rows has only −inf logits: its
    NaN log-softmax must not reach the gradients (it used to turn every weight into NaN)."""
    import torch

    from prom3e.models.losses import contrastive_reconstruction

    pred = torch.randn(1, 4, 8, requires_grad=True)
    true = torch.randn(1, 4, 8)
    valid = torch.tensor([[True, True, False, False]])
    labels = torch.tensor([[0, 0, 0, 1]])  # row 2 (ignored): its only valid columns share its label
    loss, _ = contrastive_reconstruction(pred, true, valid, torch.tensor([-5.0]), torch.tensor([5.0]), labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


def _groups(k=2, u=1, c=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    true = F.normalize(torch.randn(u, c, d, generator=g), dim=-1)
    pred = F.normalize(torch.randn(k, u, c, d, generator=g), dim=-1)
    return pred, true, torch.ones(u, c, dtype=torch.bool)


def test_mc_infonce_with_one_draw_is_the_reference_loss():
    from prom3e.models.losses import contrastive_reconstruction
    from prom3e.models.objectives import mc_infonce

    pred, true, valid = _groups(k=1, u=2, c=6)
    valid[1, 4:] = False
    a, b = torch.tensor([-5.0, -3.0]), torch.tensor([5.0, 5.0])
    labels = torch.tensor([[0, 0, 1, 2, 3, 4], [0, 1, 1, 2, -1, -1]])
    want, _ = contrastive_reconstruction(pred[0], true, valid, a, b, labels)
    got, acc, each = mc_infonce(pred, true, valid, a, b, labels)
    assert each[1, 4:].eq(0).all() and torch.isclose(each[valid].mean(), got)
    torch.testing.assert_close(got, want)
    assert 0 <= float(acc) <= 1


def test_mc_infonce_rewards_spread_on_ambiguous_rows():
    """Two rows with the same input but different targets: draws covering both candidates
    score better than draws committed to one (what lets σ grow for ambiguous inputs)."""
    from prom3e.models.objectives import mc_infonce

    true = F.normalize(torch.eye(4, 8)[None], dim=-1)  # [1, 4, 8]
    valid = torch.ones(1, 4, dtype=torch.bool)
    a, b = torch.tensor([-10.0]), torch.tensor([0.0])
    committed = true.expand(2, 1, 4, 8).clone()
    committed[:, 0, 1] = true[0, 0]  # rows 0 and 1 (same input) both predict row 0's target
    spread = committed.clone()
    spread[1, 0, 0], spread[1, 0, 1] = true[0, 1], true[0, 1]  # the second draw covers row 1's
    loss_c = mc_infonce(committed, true, valid, a, b, dedup=False)[0]
    loss_s = mc_infonce(spread, true, valid, a, b, dedup=False)[0]
    assert loss_s < loss_c


def test_csd_bce_gives_confused_rows_more_spread():
    """The spread of the decoded draws shifts all of a row's logits at once: a softmax ignores
    it, the sigmoid loss does not, and its best spread is larger for a row whose candidates
    are all close than for a row that sits on its own target."""
    from prom3e.models.objectives import csd_bce

    true = F.normalize(torch.eye(4, 8)[None], dim=-1)
    valid = torch.ones(1, 4, dtype=torch.bool)
    a, b = torch.tensor([-5.0]), torch.tensor([5.0])
    e = F.normalize(torch.ones(8), dim=0)
    grid = torch.linspace(0, 1.5, 31)

    def best_spread(center: torch.Tensor) -> float:
        losses = [float(csd_bce(torch.stack([center + s * e, center - s * e]), true, valid, a, b,
                                dedup=False)[0]) for s in grid]  # same mean, growing spread
        return float(grid[int(np.argmin(losses))])

    clear = true.clone()  # every row on its own target
    confused = true.clone()
    confused[0, :] = 0.5 * (true[0, 0] + true[0, 1])  # every row halfway between two targets
    assert best_spread(confused) > best_spread(clear)


def test_kl_terms_reductions_and_free_bits():
    from prom3e.models.losses import kl_divergence
    from prom3e.models.objectives import kl_terms

    mu = F.normalize(torch.randn(5, 6), dim=-1)
    logvar = torch.randn(5, 6, requires_grad=True)
    torch.testing.assert_close(kl_terms(mu, logvar, "mean"), kl_divergence(mu, logvar))
    torch.testing.assert_close(kl_terms(mu, logvar, "sum"), 6 * kl_divergence(mu, logvar))
    floor = kl_terms(mu, logvar.detach(), "sum").item()  # above every dimension's own KL
    kl = kl_terms(mu, logvar, "sum", free_bits=floor)
    kl.backward()
    assert kl.item() == pytest.approx(6 * floor) and torch.count_nonzero(logvar.grad) == 0


def test_sigma_calibration_spreads_logvar_like_the_log_expected_loss():
    from prom3e.models.objectives import sigma_calibration

    err = torch.tensor([[0.5, 2.0, 4.0, 0.0]])  # entry losses of rows 0, 1, 2; entry 3 is padding
    rows, valid = torch.tensor([[0, 1, 2, 0]]), torch.tensor([[True, True, True, False]])
    logvar = torch.full((4, 3), -3.0, requires_grad=True)  # row 3 has no target: left out
    opt = torch.optim.Adam([logvar], lr=0.05)
    for _ in range(800):
        opt.zero_grad()
        sigma_calibration(logvar, err, rows, valid).backward()
        opt.step()
    ell = logvar[:3].mean(-1).detach()
    want = torch.log(err[0, :3])
    torch.testing.assert_close(ell - ell.mean(), want - want.mean(), atol=2e-2, rtol=0)
    assert abs(float(ell.mean()) + 3.0) < 0.25  # the level is not the term's business (no net push)
    assert logvar.grad[3].abs().sum() == 0


def test_mc_infonce_ignored_rows_with_every_column_masked_give_finite_gradients():
    """As for the one-draw loss: a padding row whose valid candidates all share its label."""
    from prom3e.models.objectives import mc_infonce

    pred = torch.randn(3, 1, 4, 8, requires_grad=True)
    true = torch.randn(1, 4, 8)
    valid = torch.tensor([[True, True, False, False]])
    labels = torch.tensor([[0, 0, 0, 1]])
    loss, _, _ = mc_infonce(pred, true, valid, torch.tensor([-5.0]), torch.tensor([5.0]), labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
