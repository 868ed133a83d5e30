"""``prom3e benchmark``: protocols, metrics, outputs; one end-to-end CLI run with every method."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prom3e.data.synthetic import SynthConfig, generate, generate_table
from prom3e.data.table import write_parquet
from prom3e.methods import METHODS
from prom3e.methods.base import FitConfig
from prom3e.methods.benchmark import (
    BenchConfig,
    classification_metrics,
    eta_mask,
    nm2i,
    recall_at_1,
    run_benchmark,
    write_outputs,
)


def test_eta_mask_is_a_fixed_table_of_present_modalities() -> None:
    rng = np.random.default_rng(0)
    present = rng.random((4000, 4)) < 0.8
    present[:, 0] = True
    a, b = eta_mask(present, 0.7, 0), eta_mask(present, 0.7, 0)
    assert np.array_equal(a, b)  # same seed, same table
    assert not (a & ~present).any() and a.any(1).all()
    multi = present.sum(1) >= 2
    incomplete = (a != present).any(1)
    assert abs(incomplete[multi].mean() - 0.7) < 0.03
    two = np.array([[True, True]] * 4000)
    lost = eta_mask(two, 0.9, 1)
    assert abs((~lost[:, 0]).mean() - 0.45) < 0.03  # MAPs "both": half lose each


def test_metrics() -> None:
    y = np.array([0, 1, 2, 2, 1, 0])
    perfect = np.eye(3)[y]
    m = classification_metrics(perfect, y)
    assert m["acc"] == 1 and m["macro_f1"] == 1 and m["auroc"] == 1
    assert classification_metrics(np.roll(perfect, 1, axis=0), y)["acc"] < 1
    emb = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    assert recall_at_1(emb, emb, np.arange(50)) == 1.0
    assert nm2i(emb, emb, emb, 0) == pytest.approx(1.0, abs=1e-6) or nm2i(emb, emb, emb, 0) > 0.8
    assert nm2i(np.zeros_like(emb), emb, emb, 0) == 0.0  # a constant estimate carries no information


def test_benchmark_small(tmp_path) -> None:
    table = generate_table(SynthConfig(n=400, n_species=8, modalities=("image", "loc", "text")))
    cfg = BenchConfig(methods=["zero-fill", "late-fusion", "mean-impute"], seeds=[0, 1],
                      fit=FitConfig(epochs=1, batch_size=128, width=16))
    res = run_benchmark(table, "species", cfg, log=lambda s: None)
    assert res["config"]["class_modality"] == "text"
    for name in cfg.methods:
        r = res["methods"][name]
        assert len(r["per_seed"]) == 2
        s = r["summary"]
        for proto in ("eta0.7", "eta0.9", "natural", "subsets"):
            assert 0 <= s[f"protocols/{proto}/acc"]["mean"] <= 1 and s[f"protocols/{proto}/acc"]["n"] == 2
        assert len(r["per_seed"][0]["subsets"]) == 7  # 2^3 − 1 visible sets
        assert s["fit_seconds"]["mean"] > 0
    assert "reconstruction/eta0.7/mean/r1" in res["methods"]["mean-impute"]["summary"]
    assert res["methods"]["zero-fill"]["per_seed"][0]["reconstruction"] == {}
    paths = write_outputs(res, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["config"]["label"] == "species"
    assert "± " in (tmp_path / "results.md").read_text()
    assert len(paths) >= 2


@pytest.mark.slow
def test_cli_benchmark_every_method(tmp_path) -> None:
    from prom3e.cli import main

    data = tmp_path / "t.parquet"
    write_parquet(generate(SynthConfig(n=300, n_species=6, modalities=("image", "sat", "loc", "text"))), data)
    out = tmp_path / "bench"
    rc = main(["benchmark", "--data", str(data), "--label", "species", "--out", str(out), "--epochs", "1",
               "--width", "16", "--batch-size", "128", "--subset-cap", "50", "--quiet",
               "--option", "moe-retriever.tokens=2", "--option", "aoept.n_prototypes=8",
               "--option", "aoept-prom3e.n_prototypes=8"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"]) == list(METHODS)
    for r in res["methods"].values():
        assert r["summary"]["protocols/natural/acc"]["mean"] is not None
    assert "zeroshot/natural/acc" in res["methods"]["prom3e"]["summary"]
    assert (out / "results.md").exists()


def test_cli_benchmark_errors(tmp_path, capsys) -> None:
    from prom3e.cli import main

    data = tmp_path / "t.parquet"
    write_parquet(generate(SynthConfig(n=50, n_species=3, modalities=("image", "loc"))), data)
    base = ["benchmark", "--data", str(data), "--out", str(tmp_path / "o")]
    assert main(base + ["--label", "nope"]) == 2
    assert "no label column 'nope'" in capsys.readouterr().err
    assert main(base + ["--label", "species", "--methods", "cmpt,bogus"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(base + ["--label", "species", "--option", "cmpt=1"]) == 2
    assert "METHOD.KEY=VALUE" in capsys.readouterr().err
