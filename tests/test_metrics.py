"""The one metrics module and the one label encoder: hand cases, library agreement, NaN, memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prom3e import metrics
from prom3e.data.labels import encode_labels


def test_tie_rule_is_one_rule():
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.5, 0.2, 0.2], [0.0, 0.0, 0.0]])
    # a tie counts against the query: rank = 1 + #others ≥ the true score
    assert metrics.rank_from_scores(scores, torch.tensor([0, 1, 2])).tolist() == [2, 3, 3]
    assert metrics.predict(scores).tolist() == [-1, 0, -1]  # a tied top predicts nothing
    assert metrics.topk_accuracy(scores, [0, 0, 2], 1) == pytest.approx(1 / 3)


def test_non_finite_scores_are_always_misses():
    s = torch.tensor([[float("nan"), 0.1, 0.2], [0.9, float("nan"), 0.1], [float("inf"), 0.0, 0.0],
                      [0.3, float("-inf"), 0.1]])
    # NaN true → worst; NaN other → never above; +inf true → worst (not a hit); −inf other: below
    assert metrics.rank_from_scores(s, torch.tensor([0, 0, 0, 0])).tolist() == [3, 1, 3, 1]
    assert metrics.predict(s).tolist() == [-1, -1, -1, -1]
    ranks = metrics.retrieval_ranks(torch.full((4, 8), float("nan")), torch.randn(30, 8), [0, 5, 10, 29])
    assert metrics.retrieval_summary(ranks) == {"r1": 0.0, "r5": 0.0, "r10": 0.0, "median_rank": 30.0,
                                                "mrr": pytest.approx(1 / 30)}
    y = np.array([0, 1, 0, 1])
    good = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    assert metrics.auroc(good, y) == 1.0
    broken = good.copy()
    broken[:, :] = np.nan
    assert metrics.auroc(broken, y) == 0.0  # NaN ranks every positive last: the worst, not 0.5
    assert metrics.accuracy(y, metrics.predict(broken)) == 0.0


def test_classification_metrics_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    scores = rng.normal(size=(300, 4)) + 2 * np.eye(4)[y]
    pred = metrics.predict(scores)
    assert metrics.macro_f1(y, pred) == pytest.approx(f1_score(y, pred, average="macro"))
    assert metrics.balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred))
    proba = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    assert metrics.auroc(proba, y) == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert metrics.topk_accuracy(scores, y, 1) == pytest.approx((pred == y).mean())


def test_spearman_matches_scipy_and_skips_non_finite():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(size=50)
    b[:10] = a[:10]
    assert metrics.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    a[3], b[7] = np.nan, np.inf
    keep = np.isfinite(a) & np.isfinite(b)
    assert metrics.spearman(a, b) == pytest.approx(spearmanr(a[keep], b[keep]).statistic)
    assert metrics.spearman(a, np.ones(50)) is None and metrics.spearman(a[:2], b[:2]) is None


def test_ranks_are_chunked_and_chunking_changes_nothing(monkeypatch):
    rng = np.random.default_rng(2)
    g = metrics.l2n(rng.normal(size=(500, 8)))
    q = metrics.l2n(g + 0.3 * torch.from_numpy(rng.normal(size=(500, 8))).float())
    t = torch.arange(500)
    full = metrics.retrieval_ranks(q, g, t)
    labels = torch.from_numpy(rng.integers(0, 20, 500))
    full_lab = metrics.label_ranks(q, g, labels, labels)
    seen: list[int] = []
    real_rank = metrics.rank_from_scores

    def spy(scores, true_idx, work=None):
        seen.append(scores.numel())
        return real_rank(scores, true_idx, work)

    monkeypatch.setattr(metrics, "CHUNK", 500 * 7)
    monkeypatch.setattr(metrics, "rank_from_scores", spy)
    assert torch.equal(metrics.retrieval_ranks(q, g, t), full)
    assert max(seen) <= 500 * 7 and len(seen) == -(-500 // 7)  # never a 500 × 500 matrix
    assert torch.equal(metrics.label_ranks(q, g, labels, labels), full_lab)
    assert (full_lab <= full).all()  # any same-label item counts: never worse than the row itself


def test_l2n_is_safe_for_huge_finite_rows():
    x = torch.tensor([[1e30, 1e30, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    n = metrics.l2n(x)
    assert torch.allclose(n[0], torch.tensor([2 ** -0.5, 2 ** -0.5, 0.0]))
    assert torch.allclose(n[1], torch.tensor([0.6, 0.8, 0.0])) and (n[2] == 0).all()


def test_label_encoder_null_is_never_a_class():
    codes, classes = encode_labels(np.array(["b", None, "a", "", "b", float("nan")], dtype=object))
    assert classes == ["a", "b"] and codes.tolist() == [1, -1, 0, -1, 1, -1]
    codes, classes = encode_labels(np.array([2.0, np.nan, 1.0]))
    assert codes.tolist() == [1, -1, 0] and classes == ["1", "2"]


def test_unlabelled_rows_stay_each_others_negatives(small_table, tmp_path):
    """Training with a label column that has nulls: null rows are −1 (not the class "None"), and
    the loss treats them exactly as rows without labels (they stay each other's negatives)."""
    from prom3e.models.losses import contrastive_reconstruction
    from prom3e.train.loop import TrainConfig, Trainer

    table = small_table.take(np.arange(200))
    species = np.asarray(table.meta["species"], dtype=object).copy()
    species[::3] = None
    table.meta["species"] = species
    trainer = Trainer(table, TrainConfig(model="tiny", epochs=1, batch_size=64, label_column="species",
                                         precision="fp32"), tmp_path / "run", progress=False)
    lab = trainer.source.labels.numpy()
    assert (lab[::3] == -1).all() and (lab[np.arange(200) % 3 != 0] >= 0).all()
    import pyarrow as pa

    from prom3e.train.data import hashed_label_ids  # the streamed source's ids: the same rule
    ids = hashed_label_ids(pa.array(["a", None, "", "b", "a"], pa.large_string()))
    assert list(ids[[1, 2]]) == [-1, -1] and ids[0] == ids[4] >= 0 and ids[3] >= 0 and ids[0] != ids[3]
    ids = hashed_label_ids(pa.array([1.0, float("nan"), None, 2.0, 1.0]))
    assert list(ids[[1, 2]]) == [-1, -1] and ids[0] == ids[4] >= 0 and ids[0] != ids[3]
    rng = torch.Generator().manual_seed(0)
    pred, true = torch.randn(1, 6, 8, generator=rng), torch.randn(1, 6, 8, generator=rng)
    valid = torch.ones(1, 6, dtype=torch.bool)
    a, b = torch.tensor([-5.0]), torch.tensor([5.0])
    unlabelled = torch.full((1, 6), -1)
    none, _ = contrastive_reconstruction(pred, true, valid, a, b, None, dedup=False)
    nulls, _ = contrastive_reconstruction(pred, true, valid, a, b, unlabelled, dedup=False)
    same, _ = contrastive_reconstruction(pred, true, valid, a, b, torch.zeros(1, 6, dtype=torch.long), dedup=False)
    assert torch.equal(none, nulls) and not torch.equal(none, same)
