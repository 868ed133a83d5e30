"""The evaluation suite end to end: oracle models, determinism, JSON keys, options, CLI."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prom3e.data.synthetic import SynthConfig, generate_table
from prom3e.errors import Prom3eError
from prom3e.tasks.evaluate import evaluate
from prom3e.tasks.oracle import OracleFuser

DOCS = Path(__file__).resolve().parents[1] / "docs" / "EVALUATION.md"
MODS = ("image", "loc", "text", "sat")


@pytest.fixture(scope="module")
def table():
    # text always present: the oracle "reconstructs" by reading the true vector
    return generate_table(SynthConfig(n=900, dim=16, n_species=8, modalities=MODS, missing_rate=0.2,
                                      always_present=("image", "text")))


@pytest.fixture(scope="module")
def oracle_metrics(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle")
    fuser = OracleFuser(table.modalities, table.dims)
    return evaluate(fuser, table, label="species", out_dir=out, max_subset_size=3, threads=1), out


def test_perfect_model_scores_one(oracle_metrics):
    m, _ = oracle_metrics
    assert m["settings"]["class_modality"] == "text"
    pairs = m["retrieval"]["pairs"]
    assert len(pairs) == 4 * 3 + 6 * 2  # singles → each other, pairs → each remaining
    for p in pairs:
        assert p["r1_reconstruction"] == 1.0 and p["median_rank_reconstruction"] == 1.0
        assert p["r1_inversion"] >= max(0.95, p["r1_cross"])
    for z in m["zeroshot"]["sets"]:
        assert "text" not in z["visible"] and z["top1_reconstruction"] == 1.0 and z["macro_reconstruction"] == 1.0
    assert m["claims"]["inversion_beats_cross_r1"]["holds"]


def test_oracle_uncertainty_is_exact(oracle_metrics):
    m, _ = oracle_metrics
    e = 16  # the oracle's ‖σ‖₁ = E / √k
    by = m["uncertainty"]["mean_sigma_l1_by_size"]
    assert by["1"] == pytest.approx(e) and by["2"] == pytest.approx(e / np.sqrt(2), abs=1e-5)
    assert by["3"] == pytest.approx(e / np.sqrt(3), abs=1e-5)
    c = m["claims"]["adding_modality_lowers_sigma"]
    assert c["holds"] and c["frac_mean_lower"] == 1.0
    for n in m["uncertainty"]["next"]:
        gain = e / np.sqrt(len(n["visible"])) - e / np.sqrt(len(n["visible"]) + 1)
        for r in n["ranking"]:
            assert r["expected_reduction"] == pytest.approx(gain, abs=1e-5)


def test_outputs_and_report(oracle_metrics):
    m, out = oracle_metrics
    assert json.loads((out / "metrics.json").read_text()) == m
    report = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"retrieval.png", "zeroshot.png", "probe.png", "sigma.png", "gap.png"} <= set(pngs)
    for name in pngs:
        assert f"]({name})" in report  # every figure is in the report …
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.count("*Setting:*") == len(pngs)  # … each with its setting
    assert "## 1. Retrieval" in report and "## 5. Modality gap" in report
    csv = (out / "next_modality.csv").read_text().splitlines()
    assert csv[0].startswith("row,visible,best,expected_reduction_image")


def test_shuffled_reconstruction_is_chance(table):
    fuser = OracleFuser(table.modalities, table.dims, shuffle=True)
    m = evaluate(fuser, table, label="species", tasks=["retrieval", "zeroshot"],
                 visible=[["image"], ["loc"]], targets=["loc", "sat", "image"], threads=1)
    pairs = m["retrieval"]["pairs"]
    r1 = np.array([p["r1_reconstruction"] for p in pairs])
    chance = np.array([p["chance_r1"] for p in pairs])
    assert np.all(r1 < 3 * chance + 0.02)
    zs = m["zeroshot"]["sets"]
    # 8 classes of skewed sizes: a shuffled prediction lands near the class-frequency chance
    assert all(z["top1_reconstruction"] < 0.35 for z in zs)
    assert all(z["macro_reconstruction"] < 0.25 for z in zs)


def test_deterministic_with_a_real_model(table, tmp_path):
    from prom3e.api import Fuser
    from prom3e.models.prom3e import Prom3e, named_config

    torch.manual_seed(0)
    fuser = Fuser(Prom3e(named_config("tiny", table.modalities, table.dims)))
    threads_before = torch.get_num_threads()
    kw = dict(label="species", visible=[["image"], ["image", "loc"]], targets=["loc", "text"],
              max_subset_size=2, max_fit=300, max_test=300, seed=3, threads=1)
    a = evaluate(fuser, table, out_dir=tmp_path / "a", **kw)
    b = evaluate(fuser, table, out_dir=tmp_path / "b", **kw)
    assert a == b and torch.get_num_threads() == threads_before  # restored
    for f in ("metrics.json", "report.md", "next_modality.csv"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    c = evaluate(fuser, table, **{**kw, "seed": 4}, tasks=["retrieval"])
    assert c["settings"]["seed"] == 4 and c["retrieval"] != a["retrieval"]


def _keys(x, out: set[str]) -> set[str]:
    if isinstance(x, dict):
        for k, v in x.items():
            if not re.fullmatch(r"\d+", k) and k not in MODS:  # by-size and per-modality keys
                out.add(k)
            _keys(v, out)
    elif isinstance(x, list):
        for v in x:
            _keys(v, out)
    return out


def test_every_json_key_is_documented(oracle_metrics):
    m, _ = oracle_metrics
    doc = DOCS.read_text()
    documented = set(re.findall(r"`([a-z_0-9]+)`", doc))
    missing = sorted(_keys(m, set()) - documented)
    assert not missing, f"keys missing from docs/EVALUATION.md: {missing}"
    required = {"visible", "target", "r1_cross", "r1_inversion", "delta", "r5_cross", "r5_inversion"}
    assert all(required <= set(p) for p in m["retrieval"]["pairs"])
    assert set(m) == {"schema_version", "settings", "retrieval", "zeroshot", "probe", "uncertainty", "gap",
                      "claims"}


def test_restrictions(table):
    fuser = OracleFuser(table.modalities, table.dims)
    m = evaluate(fuser, table, label="species", visible=[["loc", "image"], ["image"]], targets=["text", "loc"],
                 tasks=["retrieval", "probe"], max_test=300, max_fit=300, threads=1)
    assert [(p["visible"], p["target"]) for p in m["retrieval"]["pairs"]] == [
        (["image", "loc"], "text"), (["image"], "loc"), (["image"], "text")]
    assert [s["visible"] for s in m["probe"]["sets"]] == [["image", "loc"], ["image"]]
    assert "zeroshot" not in m and "gap" not in m and set(m["claims"]) == {
        "inversion_beats_cross_r1", "hidden_probe_beats_reconstructed"}
    assert m["settings"]["n_test"] == 300 and m["settings"]["n_fit"] == 300
    split = table.take(np.arange(len(table)))
    split.meta["part"] = np.where(np.arange(len(table)) % 3 == 0, "test", "train")
    own = evaluate(fuser, split, label="species", split_column="part", tasks=["retrieval"], max_fit=None,
                   max_test=None, visible=[["image"]], targets=["loc"], threads=1)
    assert own["settings"]["n_test"] == 300 and own["settings"]["n_fit"] == 600
    with pytest.raises(Prom3eError, match="split column 'species'"):
        evaluate(fuser, split, label="species", split_column="species")
    none = evaluate(fuser, table, label="species", class_modality=None, tasks=["zeroshot"], threads=1)
    assert none["zeroshot"]["sets"] == [] and none["settings"]["class_modality"] is None


def test_class_prototypes_from_a_file(table, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prom3e.data.table import vectors_to_arrow

    species = table.label("species")
    has = table.present[:, table.index("text")]
    names, first = np.unique(species[has], return_index=True)
    text = table.feature("text")[has][first]
    extra = np.eye(16, dtype=np.float32)[:1]  # a distractor class absent from the table
    pq.write_table(pa.table({"species": list(names) + ["Nova species"],
                             "text": vectors_to_arrow(np.concatenate([text, extra]))}), tmp_path / "c.parquet")
    fuser = OracleFuser(table.modalities, table.dims)
    kw = dict(label="species", tasks=["zeroshot"], visible=[["image"], ["loc"]])
    a = evaluate(fuser, table, class_prototypes=tmp_path / "c.parquet", **kw)
    b = evaluate(fuser, table, **kw)
    assert a["zeroshot"]["n_prototypes"] == len(names) + 1 and a["settings"]["prototypes"].endswith("c.parquet")
    assert a["zeroshot"]["sets"][0]["top1_reconstruction"] == 1.0
    assert [s["top1_cross"] for s in a["zeroshot"]["sets"]] <= [s["top1_cross"] + 1e-9 for s in b["zeroshot"]["sets"]]


def test_stage1_heads_map_the_table_once(table):
    class Heads:  # stands in for prom3e.align.Aligner: raw 16-d → "aligned" 8-d
        def __init__(self):
            self.calls = 0
            self.w = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)

        def transform(self, t):
            self.calls += 1
            from prom3e.data.table import ModalTable

            feats = [np.where(t.present[:, [i]], f @ self.w, 0).astype(np.float32) for i, f in enumerate(t.features)]
            return ModalTable(list(t.modalities), feats, t.present, dict(t.meta), t.source)

    fuser = OracleFuser(table.modalities, [8] * len(table.modalities))
    fuser.aligner = Heads()
    m = evaluate(fuser, table, label="species", tasks=["retrieval"], visible=[["image"]], targets=["loc"],
                 threads=1)
    assert fuser.aligner.calls == 1 and m["settings"]["stage1_heads"] is True
    assert m["retrieval"]["pairs"][0]["r1_reconstruction"] == 1.0


def test_errors(table):
    fuser = OracleFuser(table.modalities, table.dims)
    with pytest.raises(Prom3eError, match="unknown modality 'radar'"):
        evaluate(fuser, table, visible=[["radar"]])
    with pytest.raises(Prom3eError, match="unknown target"):
        evaluate(fuser, table, targets=["radar"])
    with pytest.raises(Prom3eError, match="unknown task"):
        evaluate(fuser, table, tasks=["magic"])
    with pytest.raises(Prom3eError, match="no label column"):
        evaluate(fuser, table, label="genus_name")


def test_works_without_matplotlib(table, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    fuser = OracleFuser(table.modalities, table.dims)
    m = evaluate(fuser, table, label="species", out_dir=tmp_path, tasks=["retrieval", "gap"],
                 visible=[["image"]], targets=["loc"])
    assert not list(tmp_path.glob("*.png")) and "matplotlib is not installed" in (tmp_path / "report.md").read_text()
    assert m["retrieval"]["pairs"][0]["r1_reconstruction"] == 1.0


@pytest.mark.slow
def test_cli_end_to_end(tiny_run, small_parquet, tmp_path):
    from prom3e.cli import main

    out = tmp_path / "eval"
    rc = main(["evaluate", "--model", str(tiny_run), "--data", str(small_parquet), "--label", "species",
               "--out", str(out), "--visible", "image", "--visible", "image+loc", "--max-subset-size", "2",
               "--quiet", "--device", "cpu", "--threads", "1"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert [p["visible"] for p in m["retrieval"]["pairs"]][:1] == [["image"]]
    assert all(0 <= p["r1_inversion"] <= 1 for p in m["retrieval"]["pairs"])
    assert m["settings"]["class_modality"] == "text" and m["zeroshot"]["sets"]
    report = (out / "report.md").read_text()
    assert "Command: `prom3e evaluate --model" in report and "--visible image+loc" in report
    assert main(["evaluate", "--model", str(tiny_run), "--data", str(small_parquet), "--out", str(out),
                 "--visible", "radar"]) == 2


def test_a_collapsed_sigma_is_flagged_not_reported_as_a_finding(table, tmp_path):
    from prom3e.api import Fuser
    from prom3e.models.prom3e import Prom3e, named_config
    from prom3e.tasks.uncertainty import sigma_check

    torch.manual_seed(0)
    model = Prom3e(named_config("tiny", table.modalities, table.dims, posterior_head="linear"))
    with torch.no_grad():
        model.logvar_head.weight.zero_()
        model.logvar_head.bias.fill_(-100.0)  # every logσ² at the lower clip, as the reference's collapse
    kw = dict(label="species", visible=[["image"], ["loc"]], max_subset_size=2, max_fit=200, max_test=200,
              tasks=["retrieval", "uncertainty"], threads=1)
    m = evaluate(Fuser(model), table, out_dir=tmp_path, **kw)
    check = m["uncertainty"]["check"]
    assert check["clip_share"] == 1.0 and not check["passes"]
    assert check["warning"].startswith("warning: σ is collapsed (100% of logσ²")
    assert check["warning"][0].upper() + check["warning"][1:] in (tmp_path / "report.md").read_text()
    ok = sigma_check(0.01, 0.9, 0.4)
    assert ok["passes"] and ok["warning"] is None
    bad = sigma_check(0.01, 0.5, 0.4)
    assert not bad["passes"] and "lowers mean ‖σ‖₁ in 50% of cases" in bad["warning"]
