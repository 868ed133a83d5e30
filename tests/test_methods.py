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
    net = CmptNet([6, 6], width=8, n_classes=3, rank=1, heads=2, seed=0, base="frozen")
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


def _garbled(table: ModalTable, visible: np.ndarray, value: float) -> ModalTable:
    """The table with every slot that is not visible (hidden or absent) overwritten by ``value``."""
    feats = [np.where(visible[:, m:m + 1], f, value).astype(np.float32) for m, f in enumerate(table.features)]
    return ModalTable(table.modalities, feats, table.present, dict(table.meta))


@pytest.mark.parametrize("name", list(METHODS))
def test_hidden_modality_values_are_never_read(name: str) -> None:
    table, y = make_table(150, [5, 7, 4])
    m = create(name, FAST, **SMALL.get(name, {})).fit(table, y, 4)
    vis = drop_modalities(torch.from_numpy(table.present), 0.5, torch.Generator().manual_seed(3)).numpy()
    assert (vis != table.present).any()
    p = m.predict_proba(table, vis)
    est = m.estimate(table, vis, 1)
    for garbage in (1e4, float("nan"), -3.0):
        g = _garbled(table, vis, garbage)
        assert np.array_equal(m.predict_proba(g, vis), p), garbage
        if est is not None:
            assert np.array_equal(m.estimate(g, vis, 1)[0], est[0]), garbage
    if est is not None:  # the *real* target (what R@1 ranks) is the table's, whatever is visible
        assert np.allclose(m.estimate(table, table.present, 1)[1], est[1], atol=1e-6)
        hidden = table.present[:, 1] & ~vis[:, 1]
        assert np.abs(est[1][hidden]).sum(1).min() > 0  # not zeros where the target is hidden


def test_cmpt_substitutes_proxies_for_hidden_modalities_and_gates_all() -> None:
    from prom3e.methods.cmpt import CmptNet

    torch.manual_seed(0)
    net = CmptNet([6, 5, 4], width=8, n_classes=3, rank=1, heads=2, seed=0).eval()
    assert all(p.requires_grad for p in net.project.parameters())  # trainable base projection (default)
    x = torch.randn(7, 3, 6)
    vis = torch.tensor([[True, False, True]] * 7)
    h = net.embed(x)
    p = net.proxies(h, vis)
    v, g = net.fuse(h, p, vis)
    assert torch.equal(v[:, 1], p[:, 1]) and torch.equal(v[:, 0], h[:, 0]) and torch.equal(v[:, 2], h[:, 2])
    assert torch.allclose(g.sum(1), torch.ones(7)) and (g > 0).all()  # softmax gate over real + proxy
    p2 = p.clone()
    p2[:, 1] += 1.0
    v2, g2 = net.fuse(h, p2, vis)
    assert not torch.allclose(g2, g)  # the proxy takes part in the gate
    p3 = p.clone()
    p3[:, 0] += 1.0  # the proxy of a visible modality is not used
    assert torch.equal(net.fuse(h, p3, vis)[0], v)
    x2 = x.clone()
    x2[:, 1] = 5.0  # a hidden modality's proxy never reads that modality
    assert torch.allclose(net.proxies(net.embed(x2), vis)[:, 1], p[:, 1])


def test_aoept_prompts_only_for_hidden_modalities_and_gate_from_the_others() -> None:
    from prom3e.methods.aoept import AoeptNet

    torch.manual_seed(0)
    dims = [5, 6, 4]
    protos = np.random.default_rng(0).normal(size=(3, 4, 6)).astype(np.float32)
    net = AoeptNet(dims, 8, 3, protos, np.ones((3, 4), bool), prompt_len=3, depth=2, heads=2, reduction=16).eval()
    x = torch.randn(6, 3, 6)
    vis = torch.tensor([[True, False, True]] * 6)
    logits = net(x, vis)[0]
    with torch.no_grad():
        net.queries[:, 0] += 1.0  # prompts of a visible modality: masked out
    assert torch.allclose(net(x, vis)[0], logits, atol=1e-6)
    with torch.no_grad():
        net.queries[:, 1] += 1.0  # prompts of the hidden modality: used
    assert not torch.allclose(net(x, vis)[0], logits, atol=1e-4)
    h = net.embed(x)
    g = net.gate(h, vis)
    h2 = h.clone()
    h2[:, 1] += 3.0
    h2[:, 0] += 3.0
    g2 = net.gate(h2, vis)
    assert torch.allclose(g2[:, 0], g[:, 0])  # m0's gate reads only the others' visible tokens (m2), not m0
    assert not torch.allclose(g2[:, 1], g[:, 1])  # the hidden m1's gate reads the visible m0


def test_aoept_per_layer_prototypes_and_per_layer_estimates() -> None:
    table, y = make_table(160, [5, 7, 4])
    m = create("aoept", FitConfig(epochs=2, batch_size=64, width=16), n_prototypes=8, prompt_len=2)
    m.fit(table, y, 4)
    assert m.prompt_len == 2 and create("aoept", FAST).prompt_len == 16  # the paper's length by default
    assert m.net.layer_protos.shape == (2, 3, 8, 16) and not m.net.layer_protos.requires_grad
    assert not torch.equal(m.net.layer_protos[0], m.net.layer_protos[1])  # one set per layer
    vis = table.present.copy()
    vis[:, 0] = False
    ok = vis.any(1)
    sub, vis = table.take(np.flatnonzero(ok)), vis[ok]
    layers = m.estimate_layers(sub, vis, 0)
    assert len(layers) == 2 and layers[0].shape == (len(sub), 16)
    assert np.allclose(layers[0], m.estimate(sub, vis, 0)[0], atol=1e-6)  # layer 0 = the estimate


def test_moe_retriever_warmup_group_size_and_deterministic_predictions() -> None:
    table, y = make_table(200, [6, 6, 6, 6], missing=0.3)
    cfg = FitConfig(epochs=4, batch_size=64, width=16)
    m = create("moe-retriever", cfg, tokens=2)
    assert m.p == 2 and m.d == 16 and create("moe-retriever", FAST).p == 16  # released P; D = shared width
    seen = []
    real_forward = m._forward

    def spy(x, visible, rows, targets=None):
        out = real_forward(x, visible, rows, targets)
        if m.net.training:
            seen.append(m.retrieving)
        return out

    m._forward = spy
    m.fit(table, y, 4)
    steps = len(seen) // 4
    assert not any(seen[:steps]) and all(seen[steps:])  # epoch 1 of 4 (25 %) without the retriever
    vis = table.present.copy()
    vis[:, 3] = False
    vis[~vis.any(1), 0] = True
    vis &= table.present
    keep = vis.any(1)
    sub, vis = table.take(np.flatnonzero(keep)), vis[keep]
    a = m.predict_proba(sub, vis)
    assert np.array_equal(a, m.predict_proba(sub, vis))  # repeated calls: identical
    n_obs = vis.sum(1)
    assert len(m.last_support) == int(sum(n_obs[i] * (~vis[i]).sum() for i in range(len(vis))))  # |O| per query
    assert (~vis).any()
    assert np.array_equal(m.estimate(sub, vis, 3)[0], m.estimate(sub, vis, 3)[0])


def test_cmpt_base_options() -> None:
    table, y = make_table(100, [4, 6])
    frozen = create("cmpt", FAST, base="frozen").fit(table, y, 4)
    assert not frozen.net.project.frozen.requires_grad
    with pytest.raises(Prom3eError, match="base"):
        create("cmpt", FAST, base="nope")


def test_knn_imputation_matches_brute_force_and_chunks() -> None:
    table, y = make_table(300, [5, 8, 3], missing=0.4, seed=2)
    m = create("knn-impute", FAST, k=4).fit(table, y, 4)
    x = torch.from_numpy(table.padded()).double()
    pres = torch.from_numpy(table.present)
    vis = drop_modalities(pres, 0.5, torch.Generator().manual_seed(4))
    rows = torch.arange(len(x))
    got = m.fill(x.float(), vis, exclude=rows, chunk=7)
    assert torch.equal(got, m.fill(x.float(), vis, exclude=rows, chunk=4096))  # chunking changes nothing
    pen = m.penalty.double()
    for i in range(0, 300, 3):
        w = vis[i].double()
        d2 = torch.where(pres, ((x[i][None] - x) ** 2).sum(-1), pen)
        dist = (d2 * w).sum(-1) / w.sum()
        dist[i] = float("inf")
        for t in np.flatnonzero(~vis[i].numpy()):
            d = dist.masked_fill(~pres[:, t], float("inf")).sort()
            if d.values[4] - d.values[3] < 1e-5:
                continue  # a tie at the k-th neighbour: either is right
            assert torch.allclose(got[i, t].double(), x[d.indices[:4], t].mean(0), atol=1e-5)


def test_prompted_layer_equals_the_full_layer_on_the_sequence_tokens() -> None:
    from torch import nn

    from prom3e.methods.aoept import prompted_layer

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True, norm_first=True).eval()
    seq, prompts = torch.randn(5, 4, 16), torch.randn(5, 9, 16)
    pad = torch.rand(5, 13) < 0.3
    pad[:, 0] = False
    full = layer(torch.cat([seq, prompts], 1), src_key_padding_mask=pad)[:, :4]
    assert torch.allclose(prompted_layer(layer, seq, prompts, pad), full, atol=1e-5)


def test_prom3e_in_the_benchmark_takes_the_library_defaults(monkeypatch) -> None:
    """Only the shared width (embed_dim, mlp_dim at the config's ratio, heads) departs from the
    named config; a changed library default (here registers, depth, KL weight, visible sets)
    reaches the benchmark's ProM3E without a change in the method."""
    import dataclasses

    import prom3e.models.prom3e as model_mod
    import prom3e.train.loop as loop
    from prom3e.methods.prom3e_method import Prom3eMethod

    monkeypatch.setitem(model_mod.CONFIGS, "base", {**model_mod.CONFIGS["base"], "registers": 3, "depth": 2,
                                                      "mlp_dim": 768})
    seen = {}
    real_train = loop.train_model

    def spy(table, cfg, *a, **kw):
        seen["cfg"] = cfg
        return real_train(table, cfg, *a, **kw)

    monkeypatch.setattr(loop, "train_model", spy)
    @dataclasses.dataclass
    class ChangedDefaults(loop.TrainConfig):
        kl_weight: float = 5e-4
        visible_probs: tuple[float, ...] = (0.5, 0.5)

    monkeypatch.setattr(loop, "TrainConfig", ChangedDefaults)
    kl_weights = []
    real_forward = model_mod.Prom3e.forward

    def forward_spy(self, *a, **kw):
        kl_weights.append(kw.get("kl_weight"))
        return real_forward(self, *a, **kw)

    monkeypatch.setattr(model_mod.Prom3e, "forward", forward_spy)
    table, y = make_table(120, [5, 7, 4])
    m = create("prom3e", FitConfig(epochs=2, batch_size=64, width=16))
    assert isinstance(m, Prom3eMethod) and m.overrides == {"embed_dim": 16, "heads": 4, "mlp_dim": 48}
    m.fit(table, y, 4)
    tcfg = seen["cfg"]
    assert tcfg.model == "base" and tcfg.kl_weight == 5e-4 and tcfg.visible_probs == (0.5, 0.5)
    assert m.visible_probs == (0.5, 0.5) and len(m.history) == 1 and "aux" in m.history[0]
    assert kl_weights and set(kl_weights) == {5e-4}  # pre-training and the fine-tuning auxiliary
    mcfg = m.encoder.cfg
    assert (mcfg.registers, mcfg.depth, mcfg.embed_dim, mcfg.mlp_dim) == (3, 2, 16, 48)


def test_encode_with_prompts_masked_out_equals_plain_encode() -> None:
    """``Prom3e.encode(prompts=…)`` (AOEPT's prompted backbone): prompts that are all masked change
    nothing; attended prompts change the posterior (depth 1 and 2)."""
    from prom3e.models.prom3e import Prom3e, named_config

    for depth in (1, 2):
        torch.manual_seed(0)
        model = Prom3e(named_config("tiny", ["a", "b", "c"], [5, 7, 4], depth=depth)).eval()
        x = torch.randn(6, 3, 7)
        vis = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 1, 1], [0, 0, 1], [1, 0, 1]], dtype=torch.bool)
        prompts = torch.randn(6, depth, 5, model.cfg.embed_dim)
        with torch.no_grad():
            plain = model.encode(x, vis, hidden=True)
            masked = model.encode(x, vis, hidden=True, prompts=prompts, prompts_ok=torch.zeros(6, 5, dtype=torch.bool))
            seen = model.encode(x, vis, hidden=True, prompts=prompts, prompts_ok=torch.ones(6, 5, dtype=torch.bool))
        torch.testing.assert_close(masked.mu, plain.mu)
        torch.testing.assert_close(masked.hidden, plain.hidden)
        assert (seen.mu - plain.mu).abs().max() > 1e-3
