"""Issue 10 item 11: validation R@1 (training), the align validation and the benchmark's R@1
build their score matrices a chunk at a time — never rows × rows — and chunking changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prom3e import metrics

BUDGET = 3000  # score elements per chunk in these tests


@pytest.fixture
def spy(monkeypatch):
    """Records the size of every score matrix ranked, with a small chunk budget."""
    seen: list[tuple[int, int]] = []
    real = metrics.rank_from_scores

    def record(scores, true_idx, work=None):
        seen.append(tuple(scores.shape))
        return real(scores, true_idx, work)

    monkeypatch.setattr(metrics, "CHUNK", BUDGET)
    monkeypatch.setattr(metrics, "rank_from_scores", record)
    return seen


def _bounded(seen: list[tuple[int, int]]) -> None:
    assert seen
    for rows, cols in seen:  # a chunk is one row, or fits the budget
        assert rows == 1 or rows * cols <= BUDGET, (rows, cols)


def test_validation_r1_is_chunked(small_table, spy):
    from prom3e.models.prom3e import Prom3e, named_config
    from prom3e.train.loop import validation_r1

    torch.manual_seed(0)
    model = Prom3e(named_config("tiny", small_table.modalities, small_table.dims))
    x, present = torch.from_numpy(small_table.padded()), torch.from_numpy(small_table.present)
    small = validation_r1(model, x, present, 0, torch.device("cpu"), "fp32", batch_size=100)
    _bounded(spy)
    assert max(r * c for r, c in spy) < len(x) ** 2 / 20  # far from the 800 × 800 matrix of before
    spy.clear()
    metrics.CHUNK = 1 << 22
    assert validation_r1(model, x, present, 0, torch.device("cpu"), "fp32", batch_size=4096) == small


def test_align_validation_is_chunked(spy):
    from prom3e.align.heads import Head
    from prom3e.align.trainer import _val_top1

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(600, 8)).astype(np.float32))
    head = Head(8, 8, "linear", 16, 0.0, None).eval()
    head.norm.fit(x)
    anchors = metrics.l2n(head(x).detach() + 0.3 * torch.randn(600, 8))
    labels = torch.from_numpy(rng.integers(-1, 5, 600))
    plain = _val_top1(head, x, anchors, None, 64)
    _bounded(spy)
    steps: list[int] = []
    real_rows = metrics.chunk_rows
    metrics_rows = lambda n, budget=None: steps.append(real_rows(n, budget)) or steps[-1]  # noqa: E731
    import prom3e.metrics as m

    m.chunk_rows = metrics_rows
    try:
        labelled = _val_top1(head, x, anchors, labels, 64)
    finally:
        m.chunk_rows = real_rows
    assert steps == [BUDGET // 600]  # the label ranks run in chunks of 5 rows, not 600
    metrics.CHUNK = 1 << 22
    assert _val_top1(head, x, anchors, None, 64) == plain and _val_top1(head, x, anchors, labels, 64) == labelled
    assert labelled >= plain  # any same-label anchor counts, never fewer hits


def test_benchmark_recall_is_chunked(spy):
    from prom3e.tasks.comparison.benchmark import recall_at_1

    rng = np.random.default_rng(1)
    real = rng.normal(size=(900, 8)).astype(np.float32)
    real[450:] = real[:450]  # duplicates: one gallery item each
    est = real + 0.2 * rng.normal(size=real.shape).astype(np.float32)
    queries = np.arange(0, 900, 2)
    r1 = recall_at_1(est, real, queries)
    _bounded(spy)
    assert all(c == 450 for _, c in spy)  # the deduplicated gallery
    metrics.CHUNK = 1 << 22
    assert recall_at_1(est, real, queries) == r1 and r1 > 0.5
