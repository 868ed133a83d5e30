"""The benchmark suite's pieces: FLOP formulas, the reference structure, retrieval, the command."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from prom3e.cli import main
from prom3e.index.gallery import exact_topk
from prom3e.perf import flops
from prom3e.perf.e2e import time_to_quality
from prom3e.perf.reference import RefProm3e, reference_params
from prom3e.perf.retrieval import bench_retrieval


def test_flop_formulas_at_the_paper_shape():
    s = flops.Shape()  # 6 × 512, E = 1024, depth 1, 4 registers, 1.1 visible, batch 1024
    ours, ref = flops.train_flops(flops.ours_forward(s)), flops.train_flops(flops.reference_forward(s))
    assert 140e6 < ours < 160e6 and 480e6 < ref < 500e6
    assert flops.encode_flops(s, ours=False) / flops.encode_flops(s) > 4


def test_reference_structure_has_the_papers_size_and_trains():
    assert abs(reference_params(RefProm3e()) - 27.3e6) < 0.1e6
    m = RefProm3e(n_mod=3, in_dim=8, embed_dim=16, mlp_dim=32, registers=2, heads=2)
    xs = [F.normalize(torch.randn(5, 8), dim=-1) for _ in range(3)]
    loss = m(xs, [0, 2])
    loss.backward()
    assert torch.isfinite(loss)


def test_exact_topk_matches_brute_force_across_chunks():
    g = F.normalize(torch.randn(1000, 16), dim=-1)
    q = F.normalize(torch.randn(7, 16), dim=-1)
    s, i = exact_topk(q, g, k=5, chunk=128)
    want = (q @ g.T).topk(5, dim=1)
    torch.testing.assert_close(s, want.values)
    assert torch.equal(i, want.indices)


def test_time_to_quality_reads_the_log():
    log = [{"epoch": e, "seconds": 10.0, "val_r1_mean": v} for e, v in enumerate([0.2, 0.5, 0.595, 0.6], 1)]
    t = time_to_quality(log)
    assert t["epoch"] == 3 and t["seconds"] == 30.0 and t["final_val_r1"] == 0.6


def test_bench_train_command_prints_json_last(capsys):
    assert main(["perf", "train", "--config", "tiny", "--batch", "32", "--repeats", "1", "--threads", "2"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    r = json.loads(last)
    for key in ("samples_per_s", "flops_per_sample", "matmul_gflops", "fraction_of_matmul", "peak_rss_mb"):
        assert key in r
    assert r["config"] == "tiny" and r["batch"] == 32 and r["threads"] == 2


def test_bench_encode_command_reports_the_default_precision_and_slowest_case(capsys):
    assert main(["bench", "encode", "--config", "tiny", "--batch", "16", "--repeats", "1", "--threads", "2"]) == 0
    summary, last = capsys.readouterr().out.strip().splitlines()[-2:]
    r = json.loads(last)
    assert r["precision"] in ("bf16", "fp32") and r["config"] == "tiny"
    cases = [v for res in r["results"].values() for k, v in res.items() if k.endswith(f"{r['precision']}:x_reference")]
    assert len(cases) == 2 * 5 and r["min_x_reference"] == min(cases)
    assert "slowest case" in summary and r["min_x_reference_case"] in summary


def test_bench_retrieval_reports_exact_and_approximate(capsys):
    pytest.importorskip("faiss")
    r = bench_retrieval(sizes=(3000,), dim=16, n_queries=20)
    names = list(r["results"])
    assert names[:2] == ["3000/exact_fp32", "3000/exact_bf16"] and any("HNSW32" in n for n in names)
    assert r["results"]["3000/exact_fp32"]["overlap_at_10"] == 1.0
    assert all(v["recall_at_10"] > 0.9 for v in r["results"].values())


def test_bench_retrieval_without_faiss_times_exact_only(monkeypatch):
    import prom3e.perf.retrieval as retrieval

    monkeypatch.setattr(retrieval.index_module, "faiss_available", lambda: False)
    r = retrieval.bench_retrieval(sizes=(500,), dim=8, n_queries=5)
    assert list(r["results"]) == ["500/exact_fp32", "500/exact_bf16"] and "faiss not installed" in r["note"]


@pytest.mark.slow
def test_bench_e2e_reports_what_the_demo_ran(tmp_path):
    from prom3e.perf.e2e import bench_e2e

    r = bench_e2e(tmp_path / "demo", extra=["--n", "600", "--epochs", "2"], threads=1)
    assert r["returncode"] == 0, r.get("error")
    assert r["model"] == "base" and r["batch_size"] == 256 and r["precision"] in ("bf16", "fp32")
    assert r["time_to_quality"]["epoch"] in (1, 2) and r["wall_s"] > 0
