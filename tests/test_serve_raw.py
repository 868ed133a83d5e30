"""Raw inputs: coordinates, text and dates through the run's recorded stage-1 encoders.

A real chain on a small observation file: `prom3e embed` (GeoCLIP location, MiniLM text,
cyclic date) → `prom3e align` (anchor: location) → `prom3e train` → the service with
`--aligner`, which rebuilds each modality's encoder from what the aligner recorded.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="prom3e serve needs the 'serve' extra (fastapi, uvicorn, httpx)")
from fastapi.testclient import TestClient  # noqa: E402

from prom3e.api import Fuser  # noqa: E402
from prom3e.cli import main  # noqa: E402
from prom3e.encoders import get_encoder  # noqa: E402
from prom3e.serve.app import create_app  # noqa: E402
from prom3e.serve.service import ServeConfig, Service  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chain(raw_chain):
    return raw_chain


def make(chain, **kw):
    return Service(ServeConfig(model=str(chain / "run"), aligner=str(chain / "align"), precision="fp32", **kw))


@pytest.fixture(scope="module")
def client(chain):
    return TestClient(create_app(make(chain)))


def test_aligner_records_the_encoders(chain):
    cfg = json.loads((chain / "align" / "config.json").read_text())
    assert {m: c["encoder"] for m, c in cfg["encoders"].items()} == {"loc": "geoclip", "text": "minilm",
                                                                     "date": "date"}


def test_schema_lists_the_raw_inputs(client):
    mods = {m["name"]: m for m in client.get("/schema").json()["modalities"]}
    assert mods["loc"]["raw"] == {"kind": "latlon", "encoder": "geoclip", "source": "aligner", "head": True}
    assert mods["text"]["raw"]["kind"] == "text" and mods["date"]["raw"]["kind"] == "date"
    assert mods["loc"]["feature_dim"] == 512 and mods["text"]["feature_dim"] == 384


def test_raw_inputs_go_through_encoder_head_and_model(client, chain):
    row = {"loc": [36.97, -122.06], "text": "Rosa californica", "date": "2024-05-01"}
    got = client.post("/encode", json={"rows": [row, {"loc": {"lat": 36.97, "lon": -122.06}}]}).json()["results"]
    feats = {"loc": get_encoder("geoclip").encode([(36.97, -122.06)]),
             "text": get_encoder("minilm").encode(["Rosa californica"]),
             "date": get_encoder("date").encode([np.datetime64("2024-05-01")])}
    fuser = Fuser.load(chain / "run", device="cpu", precision="fp32", aligner=chain / "align")
    want = fuser.encode(feats)
    assert np.allclose(got[0]["mu"], want.mu[0].numpy(), atol=1e-4)
    assert got[1]["visible"] == ["loc"]
    # the same location sent as raw encoder features (512 numbers) goes through the head alone
    by_feat = client.post("/encode", json={"rows": [{"loc": feats["loc"][0].tolist()}]}).json()["results"][0]
    assert np.allclose(by_feat["mu"], got[1]["mu"], atol=1e-5)
    # every endpoint takes raw rows
    assert client.post("/next-modality", json={"rows": [{"text": "Quercus agrifolia"}]}).status_code == 200
    rec = client.post("/reconstruct", json={"rows": [{"loc": [34.0, -118.3]}], "targets": ["text"]})
    assert rec.status_code == 200 and len(rec.json()["results"][0]["reconstructions"]["text"]) == 16


@pytest.mark.parametrize("value, modality, words", [
    ([91, 0], "loc", "latitude 91 is outside"),
    ([0, -181.5], "loc", "longitude -181.5 is outside"),
    ({"lat": 1}, "loc", '{"lat": ..., "lon": ...}'),
    ([1, 2, 3], "loc", "3 values"),
    ("   ", "text", "empty text"),
    ("x" * 2001, "text", "the limit is 2000"),
    (5, "text", "expected a string"),
    ("yesterday", "date", "is not a date"),
    ("../../etc/passwd", "date", "is not a date"),
])
def test_bad_raw_values(client, value, modality, words):
    r = client.post("/encode", json={"rows": [{modality: value}]})
    assert r.status_code == 422, r.json()
    assert r.json()["field"] == f"rows[0].{modality}" and words in r.json()["detail"]


def test_without_a_record_raw_inputs_are_refused_with_the_reason(chain, tmp_path):
    old = tmp_path / "align-old"
    shutil.copytree(chain / "align", old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["encoders"]  # an aligner written before aligners recorded their encoders
    (old / "config.json").write_text(json.dumps(cfg))
    svc = Service(ServeConfig(model=str(chain / "run"), aligner=str(old), precision="fp32"))
    c = TestClient(create_app(svc))
    loc = next(m for m in c.get("/schema").json()["modalities"] if m["name"] == "loc")
    assert loc["raw"] is None and "no encoder recorded" in loc["raw_unavailable"]
    r = c.post("/encode", json={"rows": [{"loc": [36.9, -122.0]}]})
    assert r.status_code == 422 and "no encoder recorded" in r.json()["detail"]
    assert c.post("/encode", json={"rows": [{"loc": [0.1] * 512}]}).status_code == 200  # features still work
    # --encoders restores it; a record whose encoder cannot be built says why
    enc = tmp_path / "encoders.json"
    enc.write_text(json.dumps({"loc": {"encoder": "geoclip"},
                               "text": {"encoder": "geoclip", "options": {"weights": str(tmp_path / "none.pt")}}}))
    svc = Service(ServeConfig(model=str(chain / "run"), aligner=str(old), encoders=str(enc), precision="fp32"))
    assert "loc" in svc.raw and svc.raw["loc"].source == str(enc)
    assert "text" not in svc.raw and "cannot be built here" in svc.raw_unavailable["text"]


def test_a_run_trained_on_embed_features_records_its_encoders(chain, tmp_path):
    run = tmp_path / "run-features"
    assert main(["train", "--data", str(chain / "features.parquet"), "--out", str(run), "--model", "tiny",
                 "--epochs", "1", "--batch-size", "32", "--quiet", "--precision", "fp32"]) == 0
    rec = json.loads((run / "encoders.json").read_text())
    assert {m: c["encoder"] for m, c in rec.items()} == {"loc": "geoclip", "text": "minilm", "date": "date"}
    svc = Service(ServeConfig(model=str(run), precision="fp32"))
    assert {m: (r.kind, r.aligner is None) for m, r in svc.raw.items()} == {
        "loc": ("latlon", True), "text": ("text", True), "date": ("date", True)}
    got = TestClient(create_app(svc)).post("/encode", json={"rows": [{"loc": [36.97, -122.06]}]}).json()
    want = Fuser.load(run, device="cpu", precision="fp32").encode(
        {"loc": get_encoder("geoclip").encode([(36.97, -122.06)])})
    assert np.allclose(got["results"][0]["mu"], want.mu[0].numpy(), atol=1e-4)
