"""``prom3e benchmark``: protocols, tuning on validation only, leaks, partial results, the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prom3e.data.synthetic import SynthConfig, generate, generate_table
from prom3e.data.table import ModalTable, write_parquet
from prom3e.methods import METHODS
from prom3e.methods.base import FitConfig
from prom3e.tasks.comparison.benchmark import (
    BenchConfig,
    classification_metrics,
    eta_mask,
    nm2i,
    prepare,
    recall_at_1,
    run_benchmark,
    summarise,
)
from prom3e.tasks.comparison.protocols import leaking_modalities, make_split
from prom3e.tasks.comparison.tuning import Grid, tune_and_fit

TINY = FitConfig(epochs=1, batch_size=128, width=16)


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
    assert nm2i(emb, emb, emb, 0) > 0.8
    assert nm2i(np.zeros_like(emb), emb, emb, 0) == 0.0  # a constant estimate carries no information


def test_summary_is_sample_std_with_interval() -> None:
    s = summarise([{"a": 0.5}, {"a": 0.7}, {"a": 0.9}])["a"]
    assert s["mean"] == pytest.approx(0.7) and s["std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert s["n"] == 3 and s["ci95"] == pytest.approx(4.302653 * s["std"] / np.sqrt(3), rel=1e-5)
    assert summarise([{"a": 0.5}])["a"]["std"] == 0.0


def test_split_has_validation_inside_training_and_honours_a_split_column() -> None:
    y = np.repeat(np.arange(5), 40)
    s = make_split(y, 0)
    assert not set(s.train) & set(s.val) and not set(s.train) & set(s.test) and not set(s.val) & set(s.test)
    assert len(s.train) + len(s.val) + len(s.test) == len(y)
    assert set(y[s.val]) == set(range(5))  # stratified
    lab = np.array(["train"] * 120 + ["val"] * 30 + ["test"] * 50)
    f = make_split(y, 3, split_labels=lab)
    assert np.array_equal(f.test, np.arange(150, 200)) and np.array_equal(f.val, np.arange(120, 150))
    from prom3e.errors import Prom3eError

    with pytest.raises(Prom3eError, match="unknown value"):
        make_split(y, 0, split_labels=np.array(["train", "tst"] * 100))


def test_label_leaking_modality_is_detected_and_left_out() -> None:
    table = generate_table(SynthConfig(n=400, n_species=8, modalities=("image", "sat", "loc", "text")))
    from prom3e.data.labels import encode_labels

    y, _ = encode_labels(table.label("species"))
    assert leaking_modalities(table, y, np.arange(300)) == ["text"]  # sat: one tile per cell, not per class
    rows = np.arange(300)
    text = table.features[3].copy()  # a few rows with a second text, two species sharing one
    odd = rows[(y[rows] == 0)][:2]
    text[odd] += 1.0
    text[y == 2] = text[np.flatnonzero(y == 1)[0]]
    almost = ModalTable(table.modalities, [*table.features[:3], text], table.present, dict(table.meta))
    assert leaking_modalities(almost, y, rows) == ["text"]
    noisy = text.copy()
    noisy[rows[::5]] += np.random.default_rng(0).normal(size=(len(rows[::5]), text.shape[1])).astype(np.float32)
    assert leaking_modalities(ModalTable(table.modalities, [*table.features[:3], noisy], table.present,
                                         dict(table.meta)), y, rows) == []  # 20 % of rows off their class vector
    cfg = BenchConfig(methods=["zero-fill", "mean-impute"], seeds=[0, 1, 2], fit=TINY)
    res = run_benchmark(table, "species", cfg, log=lambda s: None)
    c = res["config"]
    assert c["left_out"] == ["text"] and c["modalities"] == ["image", "sat", "loc"] and c["class_modality"] is None
    r = res["methods"]["mean-impute"]
    assert len(r["per_seed"]) == 3 and len(r["per_seed"][0]["subsets"]) == 7  # 2^3 − 1 sets without text
    accs = [p["protocols"]["natural"]["acc"] for p in r["per_seed"]]
    assert r["summary"]["protocols/natural/acc"]["std"] == pytest.approx(np.std(accs, ddof=1))
    for proto in ("eta0.7", "eta0.9", "natural", "subsets"):
        assert 0 <= r["summary"][f"protocols/{proto}/acc"]["mean"] <= 1
    assert set(r["per_seed"][0]["tuning"]["regimes"]) == {"natural", "eta0.7", "eta0.9"}  # trained at each η
    assert r["per_seed"][0]["estimate_space"] == "raw" and "reconstruction/eta0.7/mean/r1" in r["summary"]
    assert res["methods"]["zero-fill"]["per_seed"][0]["reconstruction"] == {}
    kept = run_benchmark(table, "species", BenchConfig(methods=["zero-fill"], seeds=[0], fit=TINY,
                                                       leak_policy="keep"), log=lambda s: None)
    assert kept["config"]["left_out"] == [] and kept["config"]["class_modality"] == "text"


def test_tuning_reads_no_test_row(tmp_path) -> None:
    """The grid's choice and every validation figure are the same whatever the test rows' values are
    (the split itself is stratified on all labels, so labels stay)."""
    table = generate_table(SynthConfig(n=500, n_species=6, modalities=("image", "loc", "env")))
    from prom3e.data.labels import encode_labels

    y, _ = encode_labels(table.label("species"))
    cfg = BenchConfig(methods=["zero-fill"], seeds=[0], fit=FitConfig(epochs=3, batch_size=64, width=16))
    grid = Grid([1e-3, 1e-2], [8, 16])
    data = prepare(table, y, cfg, 0)
    _, rec = tune_and_fit("zero-fill", data, cfg.fit, grid, {}, 0, log=lambda s: None)
    assert len(rec["trials"]) == 4 and all(1 <= t["best_epoch"] <= 3 for t in rec["trials"])
    best = max(rec["trials"], key=lambda t: t["val_acc"])
    assert rec["selected"] == {"lr": best["lr"], "width": best["width"]}
    test = data.split.test
    garbled = ModalTable(table.modalities, [f.copy() for f in table.features], table.present, dict(table.meta))
    rng = np.random.default_rng(1)
    for f in garbled.features:
        f[test] = rng.normal(size=(len(test), f.shape[1])) * 100
    data2 = prepare(garbled, y, cfg, 0)
    assert np.array_equal(data2.split.test, test)
    _, rec2 = tune_and_fit("zero-fill", data2, cfg.fit, grid, {}, 0, log=lambda s: None)
    strip = lambda r: [{k: v for k, v in t.items() if not k.startswith("fit_")}  # noqa: E731
                       for t in r["trials"]]
    assert strip(rec2) == strip(rec) and rec2["selected"] == rec["selected"]


def _cli_table(tmp_path, n=120):
    data = tmp_path / "t.parquet"
    write_parquet(generate(SynthConfig(n=n, n_species=4, modalities=("image", "loc", "env"))), data)
    return data


def test_partial_results_survive_a_kill_and_resume(tmp_path, monkeypatch) -> None:
    from prom3e.cli import main
    from prom3e.tasks.comparison import benchmark

    data, out = _cli_table(tmp_path), tmp_path / "bench"
    args = ["benchmark", "--data", str(data), "--label", "species", "--out", str(out), "--epochs", "1",
            "--width", "16", "--methods", "zero-fill,late-fusion", "--seeds", "0,1", "--quiet"]
    real, calls = benchmark.run_method, []

    def killed_at_third(name, *a, **k):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run dies after two method × seed results
        return real(name, *a, **k)

    monkeypatch.setattr(benchmark, "run_method", killed_at_third)
    assert main(args) == 130
    assert sorted(p.name for p in (out / "partial").glob("*__seed*.json")) == [
        "late-fusion__seed0.json", "zero-fill__seed0.json"]
    kept = json.loads((out / "results.json").read_text())  # a report of what finished
    assert [len(r["per_seed"]) for r in kept["methods"].values()] == [1, 1]
    assert main(args) == 2  # results there: refused without --resume / --overwrite
    calls.clear()
    monkeypatch.setattr(benchmark, "run_method", lambda name, *a, **k: calls.append(name) or real(name, *a, **k))
    assert main(args + ["--resume"]) == 0
    assert calls == ["zero-fill", "late-fusion"]  # only seed 1 ran
    res = json.loads((out / "results.json").read_text())
    assert [len(r["per_seed"]) for r in res["methods"].values()] == [2, 2]
    assert main([a if a != "1" else "2" for a in args] + ["--resume"]) == 2  # other settings: refused


def test_rerun_of_one_method_keeps_the_others(tmp_path, monkeypatch) -> None:
    from prom3e.cli import main
    from prom3e.tasks.comparison import benchmark

    data, out = _cli_table(tmp_path), tmp_path / "bench"
    args = ["benchmark", "--data", str(data), "--label", "species", "--out", str(out), "--epochs", "1",
            "--width", "16", "--seeds", "0,1", "--quiet"]
    assert main(args + ["--methods", "zero-fill,late-fusion"]) == 0
    before = {p.name: p.read_text() for p in (out / "partial").glob("*__seed*.json")}
    real, calls = benchmark.run_method, []
    monkeypatch.setattr(benchmark, "run_method", lambda name, *a, **k: calls.append(name) or real(name, *a, **k))
    assert main(args + ["--methods", "late-fusion", "--rerun"]) == 2  # --rerun needs --resume
    assert main(args + ["--methods", "late-fusion", "--resume"]) == 0
    assert calls == []  # finished: nothing to do, and the report keeps zero-fill
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"]) == ["zero-fill", "late-fusion"]
    assert main(args + ["--methods", "late-fusion", "--resume", "--rerun"]) == 0
    assert calls == ["late-fusion", "late-fusion"]  # refitted for both seeds, zero-fill not
    after = {p.name: p.read_text() for p in (out / "partial").glob("*__seed*.json")}
    assert sorted(after) == sorted(before)
    assert all(after[n] == before[n] for n in after if n.startswith("zero-fill"))
    assert any(after[n] != before[n] for n in after if n.startswith("late-fusion"))  # new timings at least
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"]) == ["zero-fill", "late-fusion"] and res["config"]["methods"] == list(res["methods"])
    assert [len(r["per_seed"]) for r in res["methods"].values()] == [2, 2]
    assert [p["seed"] for p in res["methods"]["late-fusion"]["per_seed"]] == [0, 1]


def test_output_location_is_checked_before_any_work(tmp_path, capsys) -> None:
    from prom3e.cli import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["benchmark", "--data", str(tmp_path / "does-not-exist.parquet"), "--label", "species"]
    assert main(base + ["--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err  # reported before the (missing) table is read
    assert main(base + ["--out", str(afile / "sub")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_modalities_that_leave_rows_empty_drop_and_count_them(tmp_path) -> None:
    from prom3e.cli import main

    table = generate(SynthConfig(n=150, n_species=4, modalities=("image", "loc", "env"), always_present=()))
    data = tmp_path / "t.parquet"
    write_parquet(table, data)
    loc = np.array([v is not None for v in table.column("loc").to_pylist()])
    loc |= np.array([v is not None for v in table.column("env").to_pylist()])
    out = tmp_path / "o"
    assert main(["benchmark", "--data", str(data), "--label", "species", "--out", str(out), "--epochs", "1",
                 "--width", "16", "--methods", "zero-fill", "--modalities", "loc,env", "--quiet"]) == 0
    cfg = json.loads((out / "results.json").read_text())["config"]
    assert cfg["rows_without_modality"] == int((~loc).sum()) > 0 and cfg["rows"] == int(loc.sum())
    assert "without any of these modalities were dropped" in (out / "results.md").read_text()


@pytest.mark.slow
def test_cli_benchmark_every_method(tmp_path) -> None:
    from prom3e.cli import main

    data = tmp_path / "t.parquet"
    write_parquet(generate(SynthConfig(n=300, n_species=6, modalities=("image", "sat", "loc", "text"))), data)
    out = tmp_path / "bench"
    rc = main(["benchmark", "--data", str(data), "--label", "species", "--out", str(out), "--epochs", "1",
               "--width", "16", "--batch-size", "128", "--subset-cap", "50", "--quiet", "--keep-leaking",
               "--etas", "0.7",
               "--option", "moe-retriever.tokens=2", "--option", "aoept.n_prototypes=8",
               "--option", "aoept-prom3e.n_prototypes=8", "--option", "aoept.prompt_len=2"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"]) == list(METHODS)
    for r in res["methods"].values():
        assert r["summary"]["protocols/natural/acc"]["mean"] is not None
    assert "zeroshot/natural/acc" in res["methods"]["prom3e"]["summary"]
    assert "reconstruction/eta0.7/mean/nm2i_layer/1" in res["methods"]["aoept"]["summary"]  # per-layer NM²I
    md = (out / "results.md").read_text()
    assert "Label-leaking modalities kept as inputs: text" in md and "NM²I per prompted layer" in md


def test_experiment_script_runs_a_birdclef22_stand_in(tmp_path) -> None:
    """``experiments/benchmark.py --dataset birdclef22`` on a tiny table with the real one's shape:
    5 modalities (one of them one-per-species text), a label and a ``split`` column."""
    import sys
    from pathlib import Path

    import pyarrow as pa

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import benchmark as script

    t = generate(SynthConfig(n=240, n_species=5, modalities=("loc", "text", "sound", "env", "sat"),
                             always_present=("loc",)))
    rng = np.random.default_rng(0)
    names = {"sound": "call_type", "env": "time_of_day", "sat": "community"}
    t = t.rename_columns([names.get(c, c) for c in t.column_names])
    t = t.append_column("primary_label", t.column("species")).append_column(
        "split", pa.array(rng.choice(["train", "val", "test"], len(t), p=[0.7, 0.1, 0.2])))
    data, out = tmp_path / "aligned.parquet", tmp_path / "out"
    write_parquet(t, data)
    assert script.main(["--dataset", "birdclef22", "--data", str(data), "--out", str(out), "--quick",
                        "--methods", "zero-fill,prom3e"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["left_out"] == ["text"] and res["config"]["split_column"] == "split"
    split = np.asarray(t.column("split").to_pylist())
    assert res["methods"]["prom3e"]["per_seed"][0]["protocols"]["natural"]["n"] == (split == "test").sum()
    summary = script.summary(res, ["prom3e", "benchmark"], 1.0)
    assert set(summary["methods"]) == {"zero-fill", "prom3e"} and summary["config"]["left_out"] == ["text"]


def test_cli_benchmark_errors(tmp_path, capsys) -> None:
    from prom3e.cli import main

    data = tmp_path / "t.parquet"
    write_parquet(generate(SynthConfig(n=50, n_species=3, modalities=("image", "loc"))), data)
    base = ["benchmark", "--data", str(data), "--out", str(tmp_path / "o")]
    assert main(base + ["--label", "nope"]) == 2
    assert "no label column 'nope'" in capsys.readouterr().err
    assert main(base + ["--label", "species", "--methods", "cmpt,bogus", "--overwrite"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(base + ["--label", "species", "--option", "cmpt=1", "--overwrite"]) == 2
    assert "METHOD.KEY=VALUE" in capsys.readouterr().err
    assert main(base + ["--label", "species", "--widths", "16,x", "--overwrite"]) == 2
    assert "--widths" in capsys.readouterr().err


def test_a_diverging_fit_is_recorded_not_chosen_and_never_replaced(monkeypatch) -> None:
    from prom3e.errors import Prom3eError
    from prom3e.methods import create as real_create
    from prom3e.tasks.comparison import tuning

    table = generate_table(SynthConfig(n=300, n_species=4, modalities=("image", "loc", "env")))
    calls = []

    def create(name, cfg, **opts):
        m = real_create(name, cfg, **opts)
        fit = m.fit

        def maybe_diverge(*a, **k):
            calls.append(cfg)
            if cfg.lr == 1e-2 or (cfg.drop_prob == 0.0 and sum(c.drop_prob == 0.0 for c in calls) == 2):
                raise Prom3eError(f"{name}: training diverged at epoch 1 (loss nan)")
            return fit(*a, **k)

        m.fit = maybe_diverge
        return m

    monkeypatch.setattr(tuning, "create", create)
    cfg = BenchConfig(methods=["zero-fill"], seeds=[0], fit=TINY, grid=Grid([1e-3, 1e-2], [16]))
    res = run_benchmark(table, "species", cfg, log=lambda s: None)
    rec = res["methods"]["zero-fill"]["per_seed"][0]
    assert [("failed" in t) for t in rec["tuning"]["trials"]] == [False, True]
    assert rec["tuning"]["selected"]["lr"] == 1e-3
    assert "failed" in rec["tuning"]["regimes"]["eta0.9"]  # the second η refit diverged:
    assert rec["protocols"]["eta0.9"]["acc"] is None and rec["protocols"]["eta0.7"]["acc"] is not None
    assert "eta0.9" not in rec["reconstruction"]  # …so η 0.9 is not scored, by no other model
    assert "protocols/eta0.9/acc" not in res["methods"]["zero-fill"]["summary"]
    monkeypatch.setattr(tuning, "create", lambda name, cfg, **o: create(name, cfg.__class__(
        **{**cfg.__dict__, "lr": 1e-2}), **o))
    with pytest.raises(Prom3eError, match="every grid point failed"):
        run_benchmark(table, "species", cfg, log=lambda s: None)


def test_reconstruction_scores_a_perfect_estimate_as_perfect() -> None:
    """An oracle whose estimate is the real target gets R@1 = 1 (the gallery holds the real values)."""
    from prom3e.tasks.comparison.scoring import reconstruction

    table = generate_table(SynthConfig(n=400, n_species=6, modalities=("image", "loc", "env")))

    class Oracle:
        estimate_space = "raw"

        def estimate(self, t, visible, target):
            return t.features[target] + 1e-3, t.features[target]

    vis = eta_mask(table.present, 0.7, 0)
    per = reconstruction(Oracle(), table, table, vis, 0)
    assert per["mean"]["r1"] == pytest.approx(1.0, abs=0.02)  # ties of identical rows aside
    assert per["mean"]["nm2i"] > 0.6  # two independent K-means partitions: high, not 1
