"""The missing-modality methods: the shared contract, and each method's distinctive part."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError
from prom3e.methods import METHODS, create
from prom3e.methods.base import FitConfig, drop_modalities

FAST = FitConfig(epochs=1, batch_size=64, width=16)
SMALL = {"moe-retriever": {"tokens": 2, "token_dim": 16}, "aoept": {"n_prototypes": 8},  # keep tests fast
         "aoept-prom3e": {"n_prototypes": 8}}


def make_table(n: int, dims: list[int], n_classes: int = 4, missing: float = 0.4, seed: int = 0,
               offset: float = 0.0) -> tuple[ModalTable, np.ndarray]:
    """Class-dependent Gaussian embeddings with random per-sample missingness (≥ 1 present)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    feats = []
    for d in dims:
        centres = rng.normal(size=(n_classes, d))
        feats.append((centres[y] + 0.5 * rng.normal(size=(n, d)) + offset).astype(np.float32))
    present = rng.random((n, len(dims))) >= missing
    present[np.arange(n), rng.integers(0, len(dims), n)] = True
    feats = [np.where(present[:, m:m + 1], f, 0).astype(np.float32) for m, f in enumerate(feats)]
    return ModalTable([f"m{i}" for i in range(len(dims))], feats, present, {"y": y}), y


@pytest.mark.parametrize("dims", [[3, 17], [8, 5, 12, 9, 30, 4, 6, 7]], ids=["2mod", "8mod"])
@pytest.mark.parametrize("name", list(METHODS))
def test_fit_predict_any_modalities(name: str, dims: list[int]) -> None:
    table, y = make_table(120, dims)
    m = create(name, FAST, **SMALL.get(name, {})).fit(table, y, 4)
    vis = drop_modalities(torch.from_numpy(table.present), 0.5, torch.Generator().manual_seed(1)).numpy()
    p = m.predict_proba(table, vis)
    assert p.shape == (len(table), 4)
    assert np.isfinite(p).all() and np.allclose(p.sum(1), 1, atol=1e-4)
    est = m.estimate(table, vis, 1)
    if est is not None:
        assert est[0].shape[0] == est[1].shape[0] == len(table)
        assert est[0].shape[1] == est[1].shape[1] and np.isfinite(est[0]).all()


def test_errors_are_clear() -> None:
    table, y = make_table(60, [4, 4])
    with pytest.raises(Prom3eError, match="unknown method"):
        create("nope")
    with pytest.raises(Prom3eError, match="call fit"):
        create("zero-fill", FAST).predict_proba(table)
    m = create("zero-fill", FAST).fit(table, y, 4)
    with pytest.raises(Prom3eError, match="differ"):
        m.predict_proba(table.select(["m1", "m0"]))
    with pytest.raises(Prom3eError, match="no visible"):
        m.predict_proba(table, np.zeros_like(table.present))
    with pytest.raises(Prom3eError, match="labels"):
        create("zero-fill", FAST).fit(table, y[:-1], 4)


def test_cmpt_alignment_target_is_stop_gradient() -> None:
    from prom3e.methods.cmpt import CmptNet, alignment_loss

    torch.manual_seed(0)
    net = CmptNet([6, 6], width=8, n_classes=3, rank=1, heads=2, seed=0)
    x = torch.randn(5, 2, 6, requires_grad=True)
    visible = torch.ones(5, 2, dtype=torch.bool)
    h = net.embed(x)
    p = net.proxies(h, visible)
    only_b0 = torch.tensor([[True, False]]).expand(5, 2)
    alignment_loss(h, p, only_b0).backward()
    # the proxy of modality 0 never reads modality 0, and the target h_0 is detached:
    assert torch.all(x.grad[:, 0] == 0)
    assert x.grad[:, 1].abs().sum() > 0  # the proxy's inputs do get gradient
    assert not net.project.frozen.requires_grad  # the frozen projection is a buffer
    assert net.project.b.grad is not None  # LoRA is trained


def test_aoept_prototypes_come_from_training_split_only() -> None:
    train, y = make_table(200, [5, 7], offset=10.0)  # training rows live far from the test rows
    test, _ = make_table(80, [5, 7], offset=-10.0, seed=1)
    m = create("aoept", FAST, n_prototypes=8).fit(train, y, 4)
    protos = m.net.protos.clone()
    ok = m.net.proto_ok
    for j, d in enumerate([5, 7]):
        assert (protos[j, ok[j], :d].mean(1) > 5).all()  # every prototype is a training-region centre
    m.predict_proba(test)
    assert torch.equal(m.net.protos, protos)  # prediction never re-clusters


def test_moe_retriever_support_never_from_test_split() -> None:
    train, y = make_table(150, [6, 6, 6])
    test, _ = make_table(60, [6, 6, 6], seed=3, offset=100.0)  # marked test rows
    m = create("moe-retriever", FAST, **SMALL["moe-retriever"]).fit(train, y, 4)
    assert torch.equal(m.pool_x, torch.from_numpy(train.padded()))
    vis = test.present.copy()
    vis[:, 0] = False
    vis[~vis.any(1), 1] = True
    m.predict_proba(test, vis & test.present | (~(vis & test.present).any(1, keepdims=True) & test.present))
    assert m.last_support is not None and len(m.last_support)
    assert int(m.last_support.max()) < len(train)
    assert (m.pool_x[m.last_support].abs().max() < 50).item()  # no marked (test) embedding was drawn


def test_support_sampling_is_pattern_compatible_and_excludes_self() -> None:
    from prom3e.methods.moe_retriever import bitmask, sample_support

    g = torch.Generator().manual_seed(0)
    pool = torch.rand(500, 4, generator=g) < 0.6
    bits = bitmask(pool)
    need = bits[torch.randint(500, (300,), generator=g)] & 0b0111
    exclude = torch.arange(300)
    idx, ok = sample_support(bits, need, 3, g, exclude)
    assert ((bits[idx] & need[:, None]) == need[:, None])[ok].all()
    assert not (idx == exclude[:, None])[ok].any()
    none = sample_support(bits & 0b0011, torch.full((4,), 0b0100), 2, g)[1]
    assert not none.any()  # nothing compatible: marked, not silently wrong


def test_router_top_k_and_load_balance() -> None:
    from prom3e.methods.moe_retriever import top_k_gate

    logits = torch.randn(64, 8)
    w, lb = top_k_gate(logits, 4)
    assert ((w > 0).sum(1) == 4).all()
    assert torch.allclose(w.sum(1), torch.ones(64))
    assert torch.equal((w > 0), torch.zeros_like(w, dtype=torch.bool).scatter(1, logits.topk(4).indices, True))
    uniform = top_k_gate(torch.zeros(64, 8), 4)[1]  # ties: every token on the same 4, all probs equal
    assert torch.isclose(uniform, torch.tensor(1.0))
    collapsed = torch.zeros(64, 8)
    collapsed[:, :4] = 10.0
    assert top_k_gate(collapsed, 4)[1] > 1.5  # all tokens on 4 experts: penalised


def test_moe_weighted_mean_mode_runs() -> None:
    table, y = make_table(120, [4, 9, 5])
    m = create("moe-retriever", FAST, mode="weighted_mean", **SMALL["moe-retriever"]).fit(table, y, 4)
    assert m.predict_proba(table).shape == (120, 4)
    with pytest.raises(Prom3eError, match="mode"):
        create("moe-retriever", FAST, mode="bad")


def test_knn_imputation_never_uses_the_row_itself() -> None:
    table, y = make_table(100, [5, 5])
    m = create("knn-impute", FAST, k=1)
    m.fit(table, y, 4)
    x, present = torch.from_numpy(table.padded()), torch.from_numpy(table.present)
    both = (present.all(1)).nonzero().squeeze(1)
    vis = present[both].clone()
    vis[:, 1] = False
    own = m.fill(x[both], vis, exclude=both)
    assert not torch.allclose(own[:, 1], x[both, 1])  # its own m1 is never its neighbour's
    assert torch.equal(own[:, 0], x[both, 0])  # visible modalities are untouched


def test_same_seed_same_predictions() -> None:
    table, y = make_table(120, [4, 6])
    a = create("cmpt", FAST).fit(table, y, 4).predict_proba(table)
    b = create("cmpt", FAST).fit(table, y, 4).predict_proba(table)
    assert np.allclose(a, b, atol=1e-6)


def test_prom3e_budget_split_and_finetuning_updates_the_encoder(monkeypatch) -> None:
    from prom3e.methods.prom3e_method import Prom3eMethod, split_epochs

    assert split_epochs(20, 0.5) == (10, 10) and split_epochs(10, 0.3) == (3, 7)
    assert split_epochs(2, 0.9) == (1, 1) and split_epochs(1, 0.5) == (1, 1)  # both phases ≥ 1
    for epochs in range(2, 30):
        assert sum(split_epochs(epochs, 0.5)) == epochs  # total budget = the other methods' epochs
    pretrained = {}
    train_fusion = Prom3eMethod._train_fusion

    def spy(self, train, y):  # the encoder right after pre-training
        train_fusion(self, train, y)
        pretrained.update({k: v.clone() for k, v in self.encoder.state_dict().items()})

    monkeypatch.setattr(Prom3eMethod, "_train_fusion", spy)
    table, y = make_table(120, [5, 7, 4])
    m = create("prom3e", FitConfig(epochs=4, batch_size=64, width=16))
    m.fit(table, y, 4)
    assert m.cfg.epochs == 4 and len(m.history) == 2  # 2 pre-training + 2 fine-tuning epochs
    assert "aux" in m.history[0]  # ProM3E's own masked-reconstruction loss as the auxiliary
    assert m.net.encoder is m.encoder and all(p.requires_grad for p in m.encoder.parameters())
    assert any(not torch.equal(v, pretrained[k]) for k, v in m.encoder.state_dict().items())


def test_prom3e_frozen_option_keeps_the_encoder() -> None:
    table, y = make_table(120, [5, 7])
    m = create("prom3e", FitConfig(epochs=2, batch_size=64, width=16), finetune=False)
    m.fit(table, y, 4)
    assert len(m.history) == 2 and not any(p.requires_grad for p in m.encoder.parameters())
    before = {k: v.clone() for k, v in m.encoder.state_dict().items()}
    m.predict_proba(table)
    assert all(torch.equal(before[k], v) for k, v in m.encoder.state_dict().items())


@pytest.mark.parametrize("depth", [1, 2])
def test_prompted_prom3e_matches_the_encoder_and_trains_only_prompts(depth: int) -> None:
    from prom3e.methods.aoept import PromptedProm3e
    from prom3e.models.prom3e import Prom3e, named_config

    torch.manual_seed(0)
    dims = [5, 7, 4]
    model = Prom3e(named_config("tiny", ["a", "b", "c"], dims, depth=depth)).eval()
    protos = np.random.default_rng(0).normal(size=(3, 6, 7)).astype(np.float32)
    net = PromptedProm3e(model, 4, protos, np.ones((3, 6), bool), prompt_len=2, heads=2, reduction=16).eval()
    x = torch.randn(9, 3, 7)
    for j, d in enumerate(dims):
        x[:, j, d:] = 0
    full = torch.ones(9, 3, dtype=torch.bool)
    captured = {}
    hook = net.head.register_forward_hook(lambda mod, inp, out: captured.update(feat=inp[0]))
    net(x, full)
    hook.remove()
    post = model.encode(x, full, hidden=True)  # every modality visible: no prompt is attended
    assert torch.allclose(captured["feat"], torch.cat([post.mu, post.hidden.flatten(1)], 1), atol=1e-5)
    vis = full.clone()
    vis[:, 1] = False
    logits, _, _ = net(x, vis)
    x2 = x.clone()
    x2[:, 1] = 100.0  # a hidden modality's values are never read
    assert torch.allclose(net(x2, vis)[0], logits, atol=1e-5)
    logits.sum().backward()
    assert all(p.grad is None for p in model.parameters())  # the ProM3E backbone stays frozen
    assert net.queries.grad is not None and net.queries.grad[:, 1].abs().sum() > 0  # prompts of the hidden one
    assert net.gate1.weight.grad is not None


def test_aoept_prom3e_backbone_is_frozen_after_fit(monkeypatch) -> None:
    from prom3e.methods.prom3e_method import Prom3eMethod

    pretrained = {}
    train_fusion = Prom3eMethod._train_fusion

    def spy(self, train, y):
        train_fusion(self, train, y)
        pretrained.update({k: v.clone() for k, v in self.encoder.state_dict().items()})

    monkeypatch.setattr(Prom3eMethod, "_train_fusion", spy)
    table, y = make_table(120, [5, 7])
    m = create("aoept-prom3e", FitConfig(epochs=2, batch_size=64, width=16), n_prototypes=8)
    assert m.backbone == "prom3e"
    m.fit(table, y, 4)
    assert len(m.history) == 1 and m.cfg.epochs == 2  # 1 pre-training + 1 prompt epoch
    assert pretrained and all(torch.equal(pretrained[k], v) for k, v in m.net.model.state_dict().items())
    with pytest.raises(Prom3eError, match="backbone"):
        create("aoept", FAST, backbone="bogus")
