"""`paper` is the reference (mvrl/proM3E model.py): structure options, exact size, plain path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prom3e.errors import Prom3eError
from prom3e.models import plain
from prom3e.models.prom3e import CONFIGS, Block, Prom3e, Prom3eConfig, named_config

MODS = ["image", "sat", "loc", "text"]
REFERENCE = dict(block_mlp_norm=True, decoder_norm=True, shared_logit_scale=True, sample_average="latent",
                 token_init_std=1.0)


def test_paper_has_exactly_the_reference_parameter_count():
    """mvrl/proM3E's ProM3E() (6 modalities × 512-d, E = 1024): 27,328,514 parameters."""
    model = Prom3e(named_config("paper", [f"m{i}" for i in range(6)], [512] * 6))
    assert model.n_params() == 27_328_514
    assert model.n_params() == sum(p.numel() for p in model.parameters() if p.requires_grad)  # no padding here


def test_paper_sets_the_reference_structure_and_the_other_configs_keep_theirs():
    default = Prom3eConfig(modalities=["a"], dims=[1])
    for name in CONFIGS:
        cfg = named_config(name, MODS, [16] * 4)
        want = REFERENCE if name == "paper" else {k: getattr(default, k) for k in REFERENCE}
        assert {k: getattr(cfg, k) for k in REFERENCE} == want, name
    model = Prom3e(named_config("paper", MODS, [16, 8, 12, 16], embed_dim=64, mlp_dim=128))
    assert model.blocks[0].ln_mlp is not None and model.decode_mlp.norm_w is not None
    assert model.alpha_raw.shape == (1,) and model.beta.shape == (1,)
    alpha, beta = model.logit_scale(torch.tensor([0, 2, 3]))
    assert alpha.shape == beta.shape == (3,) and (alpha == alpha[0]).all() and (alpha < 0).all()


@pytest.mark.parametrize("bad", [{"block_mlp_norm": "yes"}, {"decoder_norm": 1}, {"shared_logit_scale": None},
                                 {"sample_average": "mean"}, {"token_init_std": -1.0}])
def test_reference_options_are_checked(bad):
    key = next(iter(bad))
    with pytest.raises(Prom3eError, match=f"model option '{key}'") as err:
        named_config("tiny", MODS, [16] * 4, **bad)
    assert "\n" not in str(err.value)
    from prom3e.train.loop import TrainConfig

    with pytest.raises(Prom3eError, match=f"model_overrides.{key}") as err:
        TrainConfig(model="tiny", model_overrides=bad)
    assert "\n" not in str(err.value)


def _perturbed(name: str, depth: int) -> Prom3e:
    """A model of config ``name`` away from its initial values (LayerNorm weights ≠ 1 etc.)."""
    torch.manual_seed(0)
    small = dict(embed_dim=64, mlp_dim=128, heads=4) if name == "paper" else {}
    model = Prom3e(named_config(name, MODS, [16, 8, 12, 16], depth=depth, **small)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _padded_batch(b: int = 9):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b, 4, 16, generator=g)
    visible = torch.rand(b, 4, generator=g) > 0.5
    visible[:, 0] = True  # ≥ 1 visible per row
    visible[1] = True  # one complete row: every other row is padded
    visible[2, 1:] = False  # one row with a single token
    return x, visible


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("name", ["paper", "base"])
def test_plain_encoder_agrees_with_the_fast_path(name, depth):
    """The plain per-row encoder (full sequences, every position, padding masked) gives the
    fast path's posterior and hidden tokens."""
    model = _perturbed(name, depth)
    x, visible = _padded_batch()
    with torch.no_grad():
        fast, slow = model.encode(x, visible, hidden=True), plain.encode(model, x, visible)
    torch.testing.assert_close(fast.mu, slow.mu, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(fast.logvar, slow.logvar, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(fast.hidden, slow.hidden, atol=2e-5, rtol=1e-4)
    for m, d in enumerate(model.cfg.dims):
        z = fast.mu
        torch.testing.assert_close(model.decode(z, [m])[0, :, :d], plain.decode(model, z, m), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("name", ["paper", "base"])
def test_plain_block_agrees_with_the_fast_block(name, depth):
    """Block by block on the same padded sequence: every output position of the fast block
    (all positions, and the prefix-only shortcut of a last layer) equals the plain block's."""
    model = _perturbed(name, depth)
    e, p = model.cfg.embed_dim, model.prefix.shape[0]
    g = torch.Generator().manual_seed(4)
    rest = torch.randn(5, 3, e, generator=g)
    rest_ok = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    prefix_fast: torch.Tensor = model.prefix
    seq = torch.cat([model.prefix.expand(5, -1, -1), rest], 1)
    key_ok = torch.cat([torch.ones(5, p, dtype=torch.bool), rest_ok], 1)
    with torch.no_grad():
        for blk in model.blocks:
            assert isinstance(blk, Block)
            want = plain.PlainBlock(blk)(seq, key_ok)
            shortcut = blk(prefix_fast, rest, rest_ok, 2)
            out = blk(prefix_fast, rest, rest_ok, None)
            torch.testing.assert_close(shortcut, want[:, :2], atol=2e-5, rtol=1e-4)
            real = key_ok[:, :, None].expand_as(out)
            torch.testing.assert_close(out[real], want[real], atol=2e-5, rtol=1e-4)
            prefix_fast, rest, seq = out[:, :p], out[:, p:], want


def test_latent_average_decodes_the_mean_draw_once():
    torch.manual_seed(0)
    model = Prom3e(named_config("tiny", MODS, [16, 8, 12, 16], sample_average="latent")).eval()
    model.log_prior_precision.data.fill_(1.0)  # visible noise, so the two averages differ
    model.precision_head.bias.data.fill_(1.0)
    x, visible = _padded_batch()
    post = model.encode(x, visible)
    mean, draws = model.decode_mean(post, [1, 3], 5, torch.Generator().manual_seed(2), keep_draws=True)
    z = Prom3e.sample(post, 5, torch.Generator().manual_seed(2))  # the same ε
    torch.testing.assert_close(mean, model.decode(z.mean(0), [1, 3]))
    torch.testing.assert_close(draws, model.decode(z.flatten(0, 1), [1, 3]).unflatten(1, (5, -1)))
    decoded = F.normalize(draws.mean(1), dim=-1)  # what sample_average 'decoded' returns
    assert (decoded - mean).abs().max() > 1e-3
    alone, none = model.decode_mean(post, [1, 3], 5, torch.Generator().manual_seed(2))
    assert none is None
    torch.testing.assert_close(alone, mean)


OPTIONS = [{"block_mlp_norm": True}, {"decoder_norm": True}, {"shared_logit_scale": True},
           {"sample_average": "latent"}, {"token_init_std": 1.0}, REFERENCE]
OBJECTIVES = [{}, {"posterior_head": "none", "recon_loss": "infonce", "n_draws": 1, "draw_mean": False,
                   "mu_loss": 0.0, "kl_reduction": "mean"}]


@pytest.mark.parametrize("objective", OBJECTIVES, ids=["study", "reference"])
@pytest.mark.parametrize("option", OPTIONS, ids=[*(next(iter(o)) for o in OPTIONS[:-1]), "all"])
def test_a_training_step_runs_with_each_option(option, objective):
    from prom3e.data.masking import sample_visible, training_targets

    torch.manual_seed(0)
    model = Prom3e(named_config("tiny", MODS, [16, 8, 12, 16], **option, **objective)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, visible = _padded_batch(12)
    present = visible | (torch.rand(12, 4) > 0.3)
    vis = sample_visible(present, generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, stats = model(x, vis, training_targets(present, vis, reconstruct_all=True), noise="scalar")
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in stats.values())
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    for name in ("blocks.0.ln_mlp.weight", "decode_mlp.norm_w", "alpha_raw", "beta"):
        if name in before:
            assert name in moved, name


def test_paper_trains_as_the_reference_and_round_trips(tmp_path, small_table):
    """`paper` with the reference's training settings (one ε per row, every present modality
    reconstructed, λ = 1e-3): one epoch, then the saved run gives the same outputs."""
    from prom3e.api import Fuser
    from prom3e.train.loop import TrainConfig, Trainer

    table = small_table.take(np.arange(192))
    cfg = TrainConfig(model="paper", epochs=1, batch_size=64, precision="fp32", noise="scalar",
                      reconstruct_all=True, kl_weight=1e-3, lr=1e-4, warmup_steps=1, threads=1)
    trainer = Trainer(table, cfg, tmp_path / "run", progress=False)
    trainer.fit()
    model = trainer.model.eval()
    assert model.cfg.sample_average == "latent" and model.cfg.shared_logit_scale
    fuser = Fuser.load(tmp_path / "run", which="last", precision="fp32")
    assert fuser.model.cfg == model.cfg
    x = torch.from_numpy(table.padded()[:40])
    present = torch.from_numpy(table.present[:40])
    with torch.no_grad():
        want = model.encode(x, present)
        want_rec = model.decode_mean(want, [0], 3, torch.Generator().manual_seed(7))[0][0, :, :table.dims[0]]
    got = fuser.encode(table.take(np.arange(40)))
    torch.testing.assert_close(got.mu, want.mu)
    torch.testing.assert_close(got.logvar, want.logvar)
    rec = fuser.reconstruct(table.take(np.arange(40)), targets=[table.modalities[0]], n_samples=3, seed=7)
    torch.testing.assert_close(rec[table.modalities[0]], want_rec)


def test_the_documented_reference_training_config_is_valid():
    """docs/MODEL.md's YAML for training `paper` as the reference is a valid TrainConfig."""
    from pathlib import Path

    import yaml

    from prom3e.train.loop import TrainConfig

    text = (Path(__file__).resolve().parents[1] / "docs" / "MODEL.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = TrainConfig.from_dict(yaml.safe_load(block))
    assert (cfg.model, cfg.noise, cfg.reconstruct_all, cfg.kl_weight) == ("paper", "scalar", True, 1e-3)
