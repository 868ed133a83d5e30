"""`prom3e probe` and `serve --probe`: a saved linear probe on μ answers /classify."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prom3e.api import Fuser
from prom3e.cli import main
from prom3e.data.table import read_table
from prom3e.errors import Prom3eError
from prom3e.tasks.saved_probe import SavedProbe, fit_probe, model_fingerprint


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory, tiny_run, small_parquet):
    out = tmp_path_factory.mktemp("probe") / "species.probe.safetensors"
    assert main(["probe", "--model", str(tiny_run), "--data", str(small_parquet), "--out", str(out),
                 "--device", "cpu"]) == 0
    return out


def test_probe_beats_chance_and_round_trips(probe_file, tiny_run, small_parquet):
    probe = SavedProbe.load(probe_file)
    acc = probe.info["accuracy_by_visible"]
    assert acc and all(v is not None for v in acc.values())
    # more visible modalities → the probe knows more (synthetic species are recoverable)
    assert max(acc.values()) > probe.info["chance"] + 0.2
    fuser = Fuser.load(tiny_run, device="cpu", precision="fp32")
    probe.check_model(fuser, "test")
    table = read_table(small_parquet)
    again = fit_probe(fuser, table, "species", seed=0)
    mu = fuser.encode(table).mu
    assert again.labels == probe.labels
    torch.testing.assert_close(again.probabilities(mu), probe.probabilities(mu))  # deterministic, saved = fitted


def test_probe_refuses_another_model(probe_file, tiny_run):
    probe = SavedProbe.load(probe_file)
    fuser = Fuser.load(tiny_run, device="cpu", precision="fp32")
    with torch.no_grad():
        next(fuser.model.parameters()).add_(1e-3)
    assert model_fingerprint(fuser.model) != probe.model
    with pytest.raises(Prom3eError, match="fitted on another model"):
        probe.check_model(fuser, "--probe x")


def test_probe_bad_inputs(tmp_path, tiny_run, small_parquet, probe_file, capsys):
    out = tmp_path / "p.safetensors"
    assert main(["probe", "--model", str(tiny_run), "--data", str(small_parquet), "--out", str(out),
                 "--label", "nope"]) == 2
    assert "no label column 'nope'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["probe", "--model", str(tiny_run), "--data", str(small_parquet), "--out", str(probe_file)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["probe", "--model", str(tiny_run), "--data", str(small_parquet), "--out", str(out), "--C", "0"]) == 2
    assert "--C: must be a finite number" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a probe")
    with pytest.raises(Prom3eError, match="not a readable probe"):
        SavedProbe.load(bad)


def test_serve_classify_with_probe(probe_file, tiny_run, small_parquet):
    pytest.importorskip("fastapi", reason="needs the 'serve' extra")
    from fastapi.testclient import TestClient

    from prom3e.serve.app import create_app
    from prom3e.serve.service import ServeConfig, Service

    svc = Service(ServeConfig(model=str(tiny_run), probe=str(probe_file), prototypes=str(small_parquet),
                              device="cpu", precision="fp32"))
    client = TestClient(create_app(svc))
    table = read_table(small_parquet)
    rows = [{m: table.features[j][r].tolist() for j, m in enumerate(table.modalities) if table.present[r, j]}
            for r in range(8)]
    res = client.post("/classify", json={"rows": rows, "k": 3}).json()["results"]
    assert [r["method"] for r in res] == ["probe"] * 8
    probe = SavedProbe.load(probe_file)
    mu = svc.fuser.encode(table.take(np.arange(8))).mu
    best = probe.probabilities(mu).argmax(1).tolist()
    assert [r["labels"][0]["label"] for r in res] == [probe.labels[i] for i in best]
    for r in res:  # top-3 of a softmax: descending, summing to at most 1
        p = [x["probability"] for x in r["labels"]]
        assert p == sorted(p, reverse=True) and sum(p) <= 1 + 1e-6
    res = client.post("/classify", json={"rows": rows[:2], "method": "prototypes"}).json()["results"]
    assert [r["method"] for r in res] == ["prototypes"] * 2
    assert client.get("/schema").json()["probe"]["classes"] == len(probe.labels)
    bare = TestClient(create_app(Service(ServeConfig(model=str(tiny_run), device="cpu"))))
    r = bare.post("/classify", json={"rows": rows[:1], "method": "probe"})
    assert r.status_code == 501 and "--probe" in r.json()["detail"]
