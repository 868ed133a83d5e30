"""Evaluation tasks on hand-computable cases: ranks, δ, zero-shot, probes, σ, gap, splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prom3e.data.labels import encode_labels
from prom3e.data.table import ModalTable
from prom3e.metrics import dedup_gallery, spearman
from prom3e.tasks import gap, retrieval, uncertainty, zeroshot
from prom3e.tasks.common import stratified_split, stratified_subsample, visible_sets
from prom3e.tasks.oracle import OracleFuser
from prom3e.tasks.probe import linear_probe, probe


def unit(x: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float32), dim=-1)


# --- retrieval ------------------------------------------------------------------------------

def test_rank_hand_case_with_ties():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    true = torch.tensor([0, 2, 1, 3])
    # the one tie rule (prom3e.metrics): a tie counts against the query
    # q0: item 0 ties with item 2 → rank 2;  q1: item 2 ties with item 0 → rank 2
    # q2: item 1 is the only best → rank 1;  q3: scores .6, .8, .6, −.6 → three at least as high → 4
    assert retrieval.rank_of_true(queries, gallery, true).tolist() == [2, 2, 1, 4]


def test_nan_queries_are_misses_not_hits():
    # issue 10 item 1: NaN scores used to rank first (R@1 = MRR = 1)
    ranks = retrieval.rank_of_true(torch.full((4, 8), float("nan")), torch.randn(30, 8), [0, 5, 10, 29])
    assert ranks.tolist() == [30, 30, 30, 30]
    m = retrieval.recall_metrics(ranks)
    assert m["r1"] == 0 and m["mrr"] == pytest.approx(1 / 30)
    g = unit(np.random.default_rng(0).normal(size=(50, 8)))
    q = g.clone()
    q[::2] = float("nan")  # half the reconstructions broken
    data = retrieval.PairData(None, q, torch.arange(50), g)
    m, _ = retrieval.evaluate_pair(data, data)
    assert m["r1_reconstruction"] == 0.5 and m["n_nonfinite"] == 25
    if retrieval_faiss_ok():
        assert (retrieval.rank_of_true(q, g, torch.arange(50), backend="faiss")[::2] == 50).all()


def retrieval_faiss_ok() -> bool:
    from prom3e.index import faiss_available

    return faiss_available()


def test_perfect_queries_give_r1_one():
    g = unit(np.random.default_rng(0).normal(size=(300, 16)))
    ranks = retrieval.rank_of_true(g, g, torch.arange(300))
    m = retrieval.recall_metrics(ranks)
    assert m["r1"] == m["r5"] == m["mrr"] == 1.0 and m["median_rank"] == 1.0


def test_constant_query_is_never_rewarded():
    # every score ties: a tie counts against the query, so every rank is the worst
    g = unit(np.random.default_rng(1).normal(size=(100, 8)))
    ranks = retrieval.rank_of_true(torch.zeros(100, 8), g, torch.arange(100))
    m = retrieval.recall_metrics(ranks)
    assert m["r1"] == 0 and m["r10"] == 0 and m["median_rank"] == 100.0


def test_shuffled_gallery_gives_chance():
    # good queries (noisy views of their item), but the truth assignment is shuffled
    rng = np.random.default_rng(2)
    g = unit(rng.normal(size=(200, 32)))
    src = torch.from_numpy(rng.integers(0, 200, 8000))
    q = g[src] + 0.1 * torch.from_numpy(rng.normal(size=(8000, 32))).float()
    true = torch.from_numpy(rng.integers(0, 200, 8000))
    m = retrieval.recall_metrics(retrieval.rank_of_true(q, g, true))
    assert abs(m["r1"] - 1 / 200) < 0.003 and abs(m["r10"] - 10 / 200) < 0.01
    assert 85 <= m["median_rank"] <= 115
    assert retrieval.recall_metrics(retrieval.rank_of_true(q, g, src))["r1"] > 0.9  # the real truth


def test_recall_metrics_by_hand():
    m = retrieval.recall_metrics(torch.tensor([1, 2, 6, 11]))
    assert (m["r1"], m["r5"], m["r10"], m["median_rank"]) == (0.25, 0.5, 0.75, 2.0)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 6 + 1 / 11) / 4)


def test_chunking_and_delta_mixing_are_consistent(monkeypatch):
    rng = np.random.default_rng(3)
    g = unit(rng.normal(size=(64, 8)))
    q, r = unit(rng.normal(size=(40, 8))), unit(rng.normal(size=(40, 8)))
    t = torch.from_numpy(rng.integers(0, 64, 40))
    full = retrieval.ranks_for_deltas(q, r, g, t, (0.0, 0.3, 1.0))
    monkeypatch.setattr(retrieval, "chunk_rows", lambda g: 3)  # 3 query rows per chunk
    assert torch.equal(retrieval.ranks_for_deltas(q, r, g, t, (0.0, 0.3, 1.0)), full)
    for i, d in enumerate((0.0, 0.3, 1.0)):
        assert torch.equal(retrieval.rank_of_true((1 - d) * q + d * r, g, t), full[i])


def test_choose_delta_finds_the_informative_side():
    rng = np.random.default_rng(4)
    g = unit(rng.normal(size=(200, 16)))
    t = torch.arange(200)
    noise = unit(rng.normal(size=(200, 16)))
    # reconstruction exact, raw query useless → a large δ with R@1 = 1 (ties: the smallest such δ)
    delta, r1 = retrieval.choose_delta(noise, g.clone(), g, t)
    assert delta >= 0.5 and r1[retrieval.DELTA_GRID.index(delta)] == 1.0 and r1[0] < 0.1
    assert retrieval.choose_delta(g.clone(), noise, g, t)[0] == 0.0  # the reverse
    # two independent noisy views: the mix beats either alone
    a = unit(g + 0.9 * torch.from_numpy(rng.normal(size=(200, 16))).float() / 4)
    b = unit(g + 0.9 * torch.from_numpy(rng.normal(size=(200, 16))).float() / 4)
    delta, r1 = retrieval.choose_delta(a, b, g, t)
    assert 0.2 <= delta <= 0.8 and max(r1) > max(r1[0], r1[-1]) - 1e-12


def test_dedup_gallery_merges_identical_vectors():
    x = np.array([[1, 0], [0, 1], [1, 0], [0, 2]], np.float32)
    g, inv = dedup_gallery(x)
    assert len(g) == 3 and inv[0] == inv[2] and len({int(inv[0]), int(inv[1]), int(inv[3])}) == 3
    assert torch.allclose(g[inv], unit(x))


def test_evaluate_pair_perfect_reconstruction():
    g = unit(np.random.default_rng(5).normal(size=(80, 8)))
    noise = unit(np.random.default_rng(6).normal(size=(80, 8)))
    data = retrieval.PairData(noise, g.clone(), torch.arange(80), g)
    m, ranks = retrieval.evaluate_pair(data, data)
    assert m["r1_reconstruction"] == 1.0 and m["r1_inversion"] == 1.0 and m["delta"] >= 0.5
    assert m["r1_cross"] < 0.2 and m["chance_r1"] == 1 / 80 and (ranks == 1).all()
    no_query = retrieval.PairData(None, g.clone(), torch.arange(80), g)
    m, _ = retrieval.evaluate_pair(no_query, no_query)
    assert m["r1_cross"] is None and m["delta"] == 1.0 and m["r1_inversion"] == 1.0


def test_faiss_backend_matches_torch():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(7)
    g = unit(rng.normal(size=(300, 16)))
    q = unit(g + 0.5 * torch.from_numpy(rng.normal(size=(300, 16))).float())
    t = torch.arange(300)
    exact = retrieval.rank_of_true(q, g, t)
    approx = retrieval.rank_of_true(q, g, t, backend="faiss", max_rank=300)
    assert (exact == approx).float().mean() > 0.99


# --- zero-shot ------------------------------------------------------------------------------

def test_classify_metrics_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.3]])
    y = np.array([0, 1, 1, 2])
    m = zeroshot.classify_metrics(scores, y, np.array([0, 1, 2]), ks=(1, 2))
    assert m["top1"] == 0.75 and m["top2"] == 1.0
    assert m["macro"] == pytest.approx((1 + 0.5 + 1) / 3)
    # a class without a prototype is always wrong
    m = zeroshot.classify_metrics(scores[:, :2], y, np.array([0, 1]), ks=(1,))
    assert m["top1"] == 0.5
    # a NaN row and a tied top are misses, not the lowest column
    bad = scores.clone()
    bad[0] = float("nan")
    bad[3] = torch.tensor([0.3, 0.3, 0.3])
    m = zeroshot.classify_metrics(bad, y, np.array([0, 1, 2]), ks=(1, 2))
    assert m["top1"] == 0.25 and m["top2"] == 0.5 and m["macro"] == pytest.approx(0.5 / 3)


def test_detect_class_modality_and_prototypes():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 5, 200)
    text = rng.normal(size=(5, 8)).astype(np.float32)[y]
    image = rng.normal(size=(200, 8)).astype(np.float32)
    present = np.ones((200, 2), bool)
    assert zeroshot.detect_class_modality([image, text], present, ["image", "text"], y) == "text"
    assert zeroshot.detect_class_modality([image], present[:, :1], ["image"], y) is None
    protos, cls = zeroshot.class_prototypes(text, y, 6)  # class 5 has no row → no prototype
    assert cls.tolist() == [0, 1, 2, 3, 4] and torch.allclose(protos, unit(text[[np.argmax(y == c) for c in cls]]))


def test_zeroshot_perfect_and_delta():
    rng = np.random.default_rng(9)
    protos = unit(rng.normal(size=(10, 16)))
    y = rng.integers(0, 10, 300)
    perfect, noise = protos[y], unit(rng.normal(size=(300, 16)))
    m = zeroshot.evaluate_set(noise, perfect, y, noise, perfect, y, protos, np.arange(10))
    assert m["top1_reconstruction"] == 1.0 and m["top1_inversion"] == 1.0 and m["macro_inversion"] == 1.0
    assert m["top1_cross"] < 0.3 and m["delta"] > 0.5


# --- probes ---------------------------------------------------------------------------------

def test_probe_separable_classes():
    rng = np.random.default_rng(10)
    centers = rng.normal(size=(4, 8)) * 5
    y = np.repeat(np.arange(4), 30)
    x = centers[y] + rng.normal(size=(120, 8)) * 0.1
    r = probe(x, y, seed=0)
    assert r["acc"] == 1.0 and r["macro_f1"] == 1.0


def test_probe_handles_rare_and_single_classes():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(21, 4))
    y = np.array([0] * 10 + [1] * 10 + [2])  # class 2 has one row: stays in training
    r = probe(x, y, seed=0)
    assert r["acc"] is not None and r["n_train"] + r["n_test"] == 21
    one = linear_probe(x[:5], np.zeros(5), x[5:], np.zeros(16))
    assert one["acc"] == 1.0 and one["n_classes"] == 1
    empty = linear_probe(x[:5], np.zeros(5), x[:0], np.zeros(0))
    assert empty["acc"] is None


def test_probe_torch_solver_agrees_with_sklearn():
    rng = np.random.default_rng(12)
    centers = rng.normal(size=(5, 10))
    y = rng.integers(0, 5, 400)
    x = centers[y] + rng.normal(size=(400, 10)) * 1.2
    a = linear_probe(x[:300], y[:300], x[300:], y[300:], solver="torch", max_iter=200)
    b = linear_probe(x[:300], y[:300], x[300:], y[300:], solver="sklearn", max_iter=500)
    assert abs(a["acc"] - b["acc"]) <= 0.03


# --- uncertainty ----------------------------------------------------------------------------

def _table(n: int = 60, seed: int = 0) -> ModalTable:
    rng = np.random.default_rng(seed)
    feats = [unit(rng.normal(size=(n, 8))).numpy() for _ in range(3)]
    present = np.ones((n, 3), bool)
    present[: n // 3, 2] = False
    return ModalTable(["a", "b", "c"], feats, present, {"y": rng.integers(0, 3, n)})


def test_sigma_by_subset_is_exact_for_the_oracle():
    t = _table()
    f = OracleFuser(t.modalities, t.dims)
    rows = np.arange(len(t))
    sig = uncertainty.sigma_by_subset(f, t, rows, visible_sets(t.modalities, 3))
    assert np.allclose(sig[("a",)], 8.0) and np.allclose(sig[("a", "b")], 8 / np.sqrt(2))
    assert np.isnan(sig[("c",)][: 20]).all() and np.allclose(sig[("a", "b", "c")][20:], 8 / np.sqrt(3))
    s = {tuple(d["visible"]): d for d in uncertainty.summarize_subsets(sig)}
    assert s[("c",)]["n"] == 40 and s[("a",)]["sigma_l1_median"] == pytest.approx(8.0)


def test_next_modality_expected_equals_actual_for_the_oracle():
    t = _table()
    f = OracleFuser(t.modalities, t.dims)
    rows = np.arange(len(t))
    sig = uncertainty.sigma_by_subset(f, t, rows, visible_sets(t.modalities, 2))
    out = uncertainty.next_modality(f, t, rows, ("a",), t.modalities, sig)
    gain = 8 - 8 / np.sqrt(2)
    assert {r["add"] for r in out["ranking"]} == {"b", "c"}
    for r in out["ranking"]:
        assert r["expected_reduction"] == pytest.approx(gain) and r["actual_reduction"] == pytest.approx(gain)
    assert out["ranking"][1]["n_actual"] in (40, 60) and out["n"] == 60


def test_spearman():
    a = np.arange(10.0)
    assert spearman(a, a**3) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.ones(10)) is None and spearman(a[:2], a[:2]) is None


# --- gap ------------------------------------------------------------------------------------

def test_gap_identical_and_shifted_clouds():
    rng = np.random.default_rng(13)
    a = rng.normal(size=(600, 8))
    same = gap.compare(a, a.copy())
    assert same["centroid_distance"] == pytest.approx(0.0, abs=1e-6) and 0.4 <= same["separability"] <= 0.6
    b = unit(rng.normal(size=(600, 8)) * 0.05 + np.eye(8)[0]).numpy()
    c = unit(rng.normal(size=(600, 8)) * 0.05 + np.eye(8)[1]).numpy()
    far = gap.compare(b, c)
    expected = float(np.linalg.norm(b.mean(0) - c.mean(0)))
    assert far["centroid_distance"] == pytest.approx(expected, rel=1e-5) and far["separability"] == 1.0
    assert gap.compare(a, rng.normal(size=(10, 4)))["centroid_distance"] is None


def test_pca_2d_is_deterministic_and_centred():
    x = np.random.default_rng(14).normal(size=(50, 5))
    p = gap.pca_2d(x)
    assert p.shape == (50, 2) and np.allclose(p.mean(0), 0) and np.array_equal(p, gap.pca_2d(x.copy()))


# --- splits and labels ----------------------------------------------------------------------

def test_stratified_split_keeps_every_class_on_both_sides():
    y = np.array([0] * 10 + [1] * 3 + [2] * 2 + [3])
    fit, test = stratified_split(y, 0.5, seed=0)
    assert sorted(np.concatenate([fit, test]).tolist()) == list(range(16))
    for c in (0, 1, 2):
        assert (y[fit] == c).any() and (y[test] == c).any()
    assert 15 in fit and (y[fit] == 0).sum() == 5
    again = stratified_split(y, 0.5, seed=0)
    assert np.array_equal(fit, again[0]) and not np.array_equal(fit, stratified_split(y, 0.5, seed=1)[0])


def test_stratified_subsample_respects_cap_and_proportions():
    y = np.repeat([0, 1], [800, 200])
    idx = stratified_subsample(np.arange(1000), y, 100, seed=0)
    assert len(idx) == 100 and (y[idx] == 1).sum() == 20 and np.all(np.diff(idx) > 0)
    assert np.array_equal(stratified_subsample(np.arange(10), y, 100), np.arange(10))


def test_encode_labels_missing_values():
    codes, classes = encode_labels(np.array(["b", None, "a", "", "b"], dtype=object))
    assert classes == ["a", "b"] and codes.tolist() == [1, -1, 0, -1, 1]
    codes, classes = encode_labels(np.array([2.0, np.nan, 1.0]))
    assert classes == ["1", "2"] and codes.tolist() == [1, -1, 0]


def test_average_ranks_match_scipy():
    from scipy.stats import rankdata

    from prom3e.metrics import average_ranks

    x = np.random.default_rng(15).integers(0, 6, 40).astype(float)
    assert np.array_equal(average_ranks(x), rankdata(x))


def test_lbfgs_reaches_the_sklearn_optimum():
    from prom3e.tasks.probe import _softmax_loss_grad, lbfgs

    rng = np.random.default_rng(16)
    x = torch.from_numpy(rng.normal(size=(200, 5))).float()
    y = torch.from_numpy(rng.integers(0, 3, 200))
    onehot = torch.nn.functional.one_hot(y, 3).float()
    f = lambda t: _softmax_loss_grad(x, onehot, 1 / 200, t)  # noqa: E731
    theta = lbfgs(f, torch.zeros(18), max_iter=200)
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0, tol=1e-8, max_iter=1000).fit(x.numpy(), y.numpy())
    ref = torch.cat([torch.from_numpy(clf.coef_.T.copy()).float().reshape(-1),
                     torch.from_numpy(clf.intercept_).float()])
    # softmax parameters are defined up to a shift per feature: compare the losses
    assert f(theta)[0] == pytest.approx(f(ref)[0], abs=1e-4)


def test_macro_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    from prom3e.metrics import macro_f1

    rng = np.random.default_rng(17)
    y, p = rng.integers(0, 6, 100), rng.integers(1, 8, 100)
    ref = f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0)
    assert macro_f1(y, p) == pytest.approx(ref)


def test_claims_are_worded_from_their_cases():
    from prom3e.tasks.claims import claims, evidence, worded

    m = {"settings": {"n_test": 100}, "retrieval": {"pairs": [
        {"r1_cross": 0.1, "r1_inversion": 0.2}, {"r1_cross": 0.3, "r1_inversion": 0.3},
        {"r1_cross": 0.5, "r1_inversion": 0.4}, {"r1_cross": None, "r1_inversion": 0.4}]}}
    c = claims(m)
    assert worded(c) == [("inversion beats cross-modal R@1 for most pairs", "does not hold",
                          "33 % of 3 pairs better, 67 % not worse")]
    one = {"n": 1, "frac_better_than_best_single": 1.0, "holds": True}
    assert evidence("two_visible_beat_one_zeroshot", one) == "100 % of 1 pair beat their best single modality"
    with pytest.raises(KeyError, match="unknown claim"):
        evidence("made_up", one)
