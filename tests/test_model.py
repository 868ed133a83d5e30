"""The fusion model: shapes, masking invariants, loss, configs, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prom3e.data.masking import sample_visible, training_targets
from prom3e.errors import Prom3eError
from prom3e.models.grouped import group_pairs
from prom3e.models.prom3e import CONFIGS, Prom3e, named_config

MODS = ["image", "sat", "loc", "text"]


def make(config="tiny", dims=(16, 16, 16, 16)):
    torch.manual_seed(0)
    return Prom3e(named_config(config, MODS, list(dims))).eval()


def batch(b=8, dims=(16, 16, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(b, len(dims), max(dims))
    for m, d in enumerate(dims):
        x[:, m, :d] = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    present = torch.rand(b, len(dims), generator=g) > 0.3
    present[:, 0] = True
    return x, present


def test_shapes_and_unit_norm():
    model = make()
    x, present = batch()
    post = model.encode(x, present, hidden=True)
    e, r = model.cfg.embed_dim, model.cfg.registers
    assert post.mu.shape == (8, e) and post.logvar.shape == (8, e)
    assert post.hidden.shape == (8, 2 + r, e)
    torch.testing.assert_close(post.mu.norm(dim=-1), torch.ones(8))
    rec = model.decode(post.mu, [0, 3])
    assert rec.shape == (2, 8, 16)
    torch.testing.assert_close(rec.norm(dim=-1), torch.ones(2, 8))
    assert (post.sigma_l1 > 0).all()


@pytest.mark.parametrize("dims", [(16, 16, 16, 16), (16, 8, 12, 16)])
def test_decode_mean_is_the_mean_of_decoded_draws(dims):
    """The draw-at-a-time decoder equals decoding all draws in one pass and averaging."""
    model = make(dims=dims)
    model.log_prior_precision.data.fill_(1.0)  # visible noise (σ² ≈ 1/(2e)), so the draws differ
    model.precision_head.bias.data.fill_(1.0)
    post = model.encode(*batch(dims=dims))
    mods = [3, 1]
    mean, draws = model.decode_mean(post, mods, 4, torch.Generator().manual_seed(5), keep_draws=True)
    z = Prom3e.sample(post, 4, torch.Generator().manual_seed(5))  # [n, B, E]
    expect = model.decode(z.flatten(0, 1), mods).unflatten(1, (4, -1))  # [T, n, B, D]
    torch.testing.assert_close(draws, expect)
    torch.testing.assert_close(mean, F.normalize(expect.mean(1), dim=-1))
    assert (draws[:, 0] - draws[:, 1]).abs().max() > 1e-3
    one, none = model.decode_mean(post, mods, 1, torch.Generator().manual_seed(5))
    assert none is None
    torch.testing.assert_close(one, expect[:, 0])  # one draw: the draw itself
    with pytest.raises(ValueError, match="at least one draw"):
        model.decode_mean(post, mods, 0)


def test_masked_and_absent_modalities_never_reach_the_encoder():
    model = make()
    x, present = batch()
    visible = present.clone()
    visible[:, 1:] = False  # only image visible
    base = model.encode(x, visible, hidden=True)
    x2 = x.clone()
    x2[:, 1:] = torch.randn_like(x2[:, 1:]) * 100  # perturb every non-visible modality
    moved = model.encode(x2, visible, hidden=True)
    torch.testing.assert_close(base.mu, moved.mu)
    torch.testing.assert_close(base.hidden, moved.hidden)
    x3 = x.clone()
    x3[:, 0] += torch.randn_like(x3[:, 0])  # perturbing the visible one does change the output
    assert not torch.allclose(base.mu, model.encode(x3, visible).mu)


def test_a_row_encodes_the_same_alone_or_in_a_mixed_batch():
    model = make()
    x, present = batch(b=16)
    together = model.encode(x, present, hidden=True)
    for i in (0, 5, 11):
        alone = model.encode(x[i:i + 1], present[i:i + 1], hidden=True)
        torch.testing.assert_close(alone.mu, together.mu[i:i + 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.hidden, together.hidden[i:i + 1], atol=1e-5, rtol=1e-5)


def test_unequal_dims_keep_padding_out():
    dims = (16, 8, 4, 12)
    model = make(dims=dims)
    x, present = batch(dims=dims)
    out = model.decode(model.encode(x, present).mu, [1, 2])
    assert out[0, :, 8:].abs().max() == 0 and out[1, :, 4:].abs().max() == 0
    x2 = x.clone()
    x2[:, 1, 8:] = 7.0  # garbage in the padding of a visible modality is ignored
    torch.testing.assert_close(model.encode(x, present).mu, model.encode(x2, present).mu)


def test_group_pairs_packs_and_unpacks():
    mask = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    g = group_pairs(mask)
    assert g.used.tolist() == [0, 1, 2] and g.size == 2
    vals = torch.arange(len(g.rows)).float()[:, None]
    torch.testing.assert_close(g.unpack(g.pack(vals)), vals)
    assert g.valid.sum() == mask.sum()
    g2 = group_pairs(torch.tensor([[0, 1], [0, 1]], dtype=torch.bool))
    assert g2.used.tolist() == [1]


def test_sample_visible_respects_presence_and_counts():
    gen = torch.Generator().manual_seed(0)
    present = torch.rand(5000, 6, generator=gen) > 0.4
    present[:, 0] = True
    vis = sample_visible(present, (0.9, 0.1), gen)
    assert not (vis & ~present).any()
    k = vis.sum(1)
    n = present.sum(1)
    assert (k >= 1).all() and (k <= 2).all()
    assert (k[n == 1] == 1).all()
    assert ((k < n) | (n == 1)).all()  # something is always left to reconstruct
    frac2 = (k[n >= 3] == 2).float().mean().item()
    assert 0.07 < frac2 < 0.13
    tg = training_targets(present, vis)
    assert not (tg & vis).any() and ((tg | vis) == present).all()
    assert (training_targets(present, vis, reconstruct_all=True) == present).all()


OBJECTIVES = [{}, {"recon_loss": "mc_infonce", "n_draws": 3}, {"recon_loss": "csd_bce", "n_draws": 2},
              {"kl_reduction": "sum", "free_bits": 0.05}, {"sigma_calibration": 0.5},
              {"recon_loss": "mc_infonce", "n_draws": 2, "sigma_calibration": 1.0, "mu_loss": 0.5},
              {"posterior_head": "poe", "recon_loss": "mc_infonce", "n_draws": 2, "kl_reduction": "sum",
               "draw_mean": True, "poe_detach": True}]


@pytest.mark.parametrize("objective", OBJECTIVES,
                         ids=["default", "mc_infonce", "csd_bce", "kl_sum_fb", "calibrated", "mc_calibrated", "poe"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_named_config_runs_forward_backward(name, objective, tmp_path):
    from prom3e.train import checkpoint as ckpt

    dims = [512] * 4 if name in ("paper", "large") else [16, 8, 16, 4]
    torch.manual_seed(0)
    model = Prom3e(named_config(name, MODS, dims, **objective)).train()
    x, present = batch(b=6, dims=dims)
    vis = sample_visible(present)
    loss, stats = model(x, vis, training_targets(present, vis, reconstruct_all=True),
                        labels=torch.tensor([0, 0, 1, 2, -1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in stats.values())
    assert 0 <= float(stats["logvar_clip_share"]) <= 1
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if name in ("paper", "large"):
        assert 15e6 < model.n_params() < 30e6
    # save → load: the same posterior
    ckpt.save_tensors(tmp_path / "m.safetensors", model.state_dict())
    again = Prom3e(named_config(name, MODS, dims, **objective)).eval()
    ckpt.load_state_into(again, tmp_path / "m.safetensors")
    model.eval()
    with torch.no_grad():
        a, b = model.encode(x, present), again.encode(x, present)
    torch.testing.assert_close(a.mu, b.mu)
    torch.testing.assert_close(a.logvar, b.logvar)


def test_objective_options_are_checked():
    for bad in ({"recon_loss": "mse"}, {"kl_reduction": "max"}, {"n_draws": 0}, {"free_bits": -1.0},
                {"sigma_calibration": -1.0}, {"posterior_head": "bogus"}):
        with pytest.raises(Prom3eError, match=f"model option '{next(iter(bad))}'"):
            Prom3e(named_config("tiny", MODS, [16] * 4, **bad))


def test_alpha_stays_negative_and_labels_mask_negatives():
    from prom3e.models.losses import contrastive_reconstruction

    model = make()
    with torch.no_grad():
        model.alpha_raw.fill_(-50.0)
    assert (model.alpha < 0).all()
    true = F.normalize(torch.randn(1, 4, 8), dim=-1)
    pred = true.clone()
    pred[0, 0] = true[0, 1]  # row 0 looks exactly like row 1
    valid = torch.ones(1, 4, dtype=torch.bool)
    a, b = torch.tensor([-5.0]), torch.tensor([5.0])
    plain, _ = contrastive_reconstruction(pred, true, valid, a, b, dedup=False)
    same = torch.tensor([[0, 0, 1, 2]])  # rows 0 and 1 share a label: not negatives
    aware, _ = contrastive_reconstruction(pred, true, valid, a, b, same, dedup=False)
    assert aware < plain


def test_loss_handles_a_batch_with_nothing_to_reconstruct():
    model = make().train()
    x, present = batch()
    loss, _ = model(x, present, torch.zeros_like(present))
    loss.backward()
    assert torch.isfinite(loss)


def test_poe_posterior_adding_a_modality_lowers_every_sigma():
    torch.manual_seed(0)
    model = Prom3e(named_config("tiny", MODS, [16] * 4, posterior_head="poe")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # away from the initial values
    x, _ = batch(b=16)
    one = torch.zeros(16, 4, dtype=torch.bool)
    one[:, 0] = True
    two = one.clone()
    two[:, 2] = True
    with torch.no_grad():
        a, b = model.encode(x, one), model.encode(x, two)
    assert (b.logvar <= a.logvar).all() and (b.sigma_l1 < a.sigma_l1).all()  # one more expert: more precision
    assert torch.isfinite(a.logvar).all() and (a.logvar.abs() <= model.cfg.logvar_clip).all()
