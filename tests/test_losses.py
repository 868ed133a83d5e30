"""The loss kernels: fused distance logits (forward, gradients, clamp) and duplicate detection."""

from __future__ import annotations

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
