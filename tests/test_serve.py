"""`prom3e serve`: every endpoint and every bad-input class, through FastAPI's test client."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="prom3e serve needs the 'serve' extra (fastapi, uvicorn, httpx)")
from fastapi.testclient import TestClient  # noqa: E402

from prom3e.api import Fuser  # noqa: E402
from prom3e.data.table import read_table  # noqa: E402
from prom3e.errors import Prom3eError  # noqa: E402
from prom3e.serve.app import create_app  # noqa: E402
from prom3e.serve.service import ServeConfig, Service  # noqa: E402
from prom3e.tasks import uncertainty as unc  # noqa: E402
from prom3e.tasks.common import l2n  # noqa: E402


@pytest.fixture(scope="module")
def table(small_parquet):
    return read_table(small_parquet)


@pytest.fixture(scope="module")
def service(tiny_run, small_parquet):
    cfg = ServeConfig(model=str(tiny_run), gallery=str(small_parquet), prototypes=str(small_parquet),
                      examples=str(small_parquet), max_rows=64, max_body_bytes=256 * 1024, device="cpu",
                      precision="fp32")
    return Service(cfg)


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_app(service))


@pytest.fixture(scope="module")
def bare(tiny_run):
    """A server with only the model: no index, no prototypes, no examples."""
    return TestClient(create_app(Service(ServeConfig(model=str(tiny_run), device="cpu"))))


def rows_of(table, idx, only=None):
    out = []
    for r in idx:
        out.append({m: table.features[j][r].tolist() for j, m in enumerate(table.modalities)
                    if table.present[r, j] and (only is None or m in only)})
    return out


def fuser(tiny_run):
    return Fuser.load(tiny_run, device="cpu", precision="fp32")


# --- description endpoints -----------------------------------------------------------------

def test_health_and_schema(client, table):
    assert client.get("/health").json()["status"] == "ok"
    s = client.get("/schema").json()
    assert [m["name"] for m in s["modalities"]] == table.modalities
    assert [m["dim"] for m in s["modalities"]] == table.dims
    assert all(m["raw"] is None and "no encoder recorded" in m["raw_unavailable"] for m in s["modalities"])
    assert s["model"]["config"]["embed_dim"] == 32 and s["aligner"] is None
    n_present = table.present.sum(0)
    assert {k: v["size"] for k, v in s["indexes"].items()} == dict(zip(table.modalities, n_present.tolist(),
                                                                       strict=True))
    p = s["prototypes"]
    assert p["modality"] == "text" and p["classes"] == len(set(table.meta["species"]))
    assert p["calibration"]["calibrated"] and p["calibration"]["rows"] == 800 and p["temperature"] > 0
    assert s["limits"] == {"max_rows": 64, "max_body_bytes": 256 * 1024}


def test_openapi_and_docs(client):
    spec = client.get("/openapi.json").json()
    assert {"/health", "/schema", "/encode", "/reconstruct", "/retrieve", "/classify", "/next-modality"} <= set(
        spec["paths"])
    assert "EncodeRequest" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for name in ("app.js", "style.css", "world.svg"):
        assert client.get(f"/static/{name}").status_code == 200
    for bad in ("/static/..%2F..%2Fapi.py", "/static/%2e%2e%2fapp.py", "/static/index.htm", "/static/"):
        r = client.get(bad)
        assert r.status_code == 404, bad


def test_examples(client, table):
    rows = client.get("/examples").json()["rows"]
    assert len(rows) == min(500, len(table)) and rows[3]["meta"]["species"] == table.meta["species"][3]
    one = client.get("/examples/3").json()
    j = table.modalities.index("image")
    assert np.allclose(one["values"]["image"], table.features[j][3])
    assert client.get(f"/examples/{len(table)}").status_code == 404
    assert client.get("/examples/abc").status_code == 422


# --- the model endpoints --------------------------------------------------------------------

def test_encode_matches_the_fuser(client, table, tiny_run):
    idx = [0, 1, 2, 5]
    res = client.post("/encode", json={"rows": rows_of(table, idx), "return_logvar": True}).json()["results"]
    post = fuser(tiny_run).encode(table.take(np.array(idx)))
    assert np.allclose([r["mu"] for r in res], post.mu.numpy(), atol=1e-5)
    assert np.allclose([r["logvar"] for r in res], post.logvar.numpy(), atol=1e-5)
    assert np.allclose([r["sigma_l1"] for r in res], post.sigma_l1.numpy(), rtol=1e-5)
    assert res[0]["visible"] == [m for j, m in enumerate(table.modalities) if table.present[0, j]]
    plain = client.post("/encode", json={"rows": rows_of(table, idx)}).json()["results"]
    assert "logvar" not in plain[0]


def test_encode_subsets(client, table, tiny_run):
    row = rows_of(table, [0], only=["image", "loc", "text"])
    res = client.post("/encode", json={"rows": row, "subsets": True}).json()["results"][0]
    subs = {tuple(s["visible"]): s["sigma_l1"] for s in res["subsets"]}
    assert len(subs) == 2 ** len(res["visible"]) - 1
    f = fuser(tiny_run)
    one = table.take(np.array([0]))
    for vis, sig in subs.items():
        assert sig == pytest.approx(float(f.encode(one, visible=list(vis)).sigma_l1[0]), rel=1e-5)


def test_reconstruct(client, table, tiny_run):
    rows = rows_of(table, [0, 1], only=["image"])
    body = {"rows": rows, "targets": ["text", "loc"], "n_samples": 4, "seed": 3, "return_spread": True}
    a = client.post("/reconstruct", json=body).json()["results"]
    b = client.post("/reconstruct", json=body).json()["results"]
    c = client.post("/reconstruct", json={**body, "seed": 4}).json()["results"]
    assert a == b and a[0]["reconstructions"]["text"] != c[0]["reconstructions"]["text"]
    assert set(a[0]["reconstructions"]) == {"text", "loc"} and len(a[0]["reconstructions"]["text"]) == 16
    assert all(0 <= a[i]["spread"][t] <= 2 for i in range(2) for t in ("text", "loc"))
    want = fuser(tiny_run).reconstruct(table.take(np.array([0, 1])), targets=["text"], visible=["image"],
                                       n_samples=4, seed=3)["text"]
    assert np.allclose([r["reconstructions"]["text"] for r in a], want.numpy(), atol=1e-5)
    mu = client.post("/reconstruct", json={"rows": rows}).json()["results"][0]
    assert set(mu["reconstructions"]) == set(table.modalities) and "spread" not in mu
    r = client.post("/reconstruct", json={"rows": rows, "return_spread": True})
    assert r.status_code == 422 and r.json()["field"] == "return_spread"


def test_retrieve(client, table, tiny_run, service):
    rows = rows_of(table, [0, 1, 2], only=["image"])
    res = client.post("/retrieve", json={"rows": rows, "target": "text", "k": 5, "delta": 1.0}).json()["results"]
    rec = fuser(tiny_run).reconstruct(table.take(np.array([0, 1, 2])), targets=["text"], visible=["image"])["text"]
    scores, ids = service.galleries["text"].index.search(l2n(rec), 5)
    assert [[h["id"] for h in r["items"]] for r in res] == ids.tolist()
    assert np.allclose([[h["score"] for h in r["items"]] for r in res], scores.numpy(), atol=1e-5)
    hit = res[0]["items"][0]
    assert hit["meta"]["species"] == table.meta["species"][hit["id"]]
    # δ = 0 on an image-only query to the image gallery: the row finds itself
    own = client.post("/retrieve", json={"rows": rows, "target": "image", "k": 1, "delta": 0.0}).json()["results"]
    assert [r["items"][0]["id"] for r in own] == [0, 1, 2]
    assert own[0]["items"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_classify(client, table, tiny_run, service):
    rows = rows_of(table, [0, 1, 2, 3], only=["image", "loc"])
    res = client.post("/classify", json={"rows": rows, "k": 3}).json()["results"]
    p = service.prototypes
    rec = fuser(tiny_run).reconstruct(table.take(np.array([0, 1, 2, 3])), targets=["text"],
                                      visible=["image", "loc"])["text"]
    probs = torch.softmax(l2n(rec) @ p.vectors.T / p.temperature, 1)
    for r, pr in zip(res, probs, strict=True):
        assert len(r["labels"]) == 3
        got = [lab["probability"] for lab in r["labels"]]
        assert got == sorted(got, reverse=True) and sum(got) <= 1 + 1e-6
        assert r["labels"][0]["label"] == p.labels[int(pr.argmax())]
        assert got[0] == pytest.approx(float(pr.max()), rel=1e-4)


def test_next_modality_matches_the_uncertainty_task(client, table, tiny_run):
    idx = np.flatnonzero(table.present[:, table.index("image")])[:6]
    rows = rows_of(table, idx, only=["image"])
    res = client.post("/next-modality", json={"rows": rows}).json()["results"]
    others = [m for m in table.modalities if m != "image"]
    ref = unc.next_modality(fuser(tiny_run), table, idx, ("image",), others)
    for i, r in enumerate(res):
        assert sorted(c["modality"] for c in r["ranking"]) == sorted(others)
        got = {c["modality"]: c["expected_reduction"] for c in r["ranking"]}
        assert np.allclose([got[m] for m in ref["_candidates"]], ref["_expected"][i], atol=1e-4)
        assert r["next"] == r["ranking"][0]["modality"]
    full = rows_of(table, [int(np.flatnonzero(table.present.all(1))[0])])
    done = client.post("/next-modality", json={"rows": full}).json()["results"][0]
    assert done["ranking"] == [] and done["next"] is None


def test_features_missing_on_a_bare_server_say_what_is_needed(bare, table):
    rows = rows_of(table, [0], only=["image"])
    r = bare.post("/retrieve", json={"rows": rows, "target": "text"})
    assert r.status_code == 501 and "--index text=FILE" in r.json()["detail"]
    r = bare.post("/classify", json={"rows": rows})
    assert r.status_code == 501 and "--prototypes" in r.json()["detail"]
    assert bare.get("/examples").status_code == 501
    s = bare.get("/schema").json()
    assert s["indexes"] == {} and s["prototypes"] is None and s["examples"] is None
    assert bare.post("/encode", json={"rows": rows}).status_code == 200  # the model alone works


# --- bad input: a 4xx with one line naming the field ------------------------------------------

V16 = [0.25] * 16


@pytest.mark.parametrize("body, status, field, words", [
    ({"rows": [{"foo": V16}]}, 422, "rows[0].foo", "unknown modality 'foo'"),
    ({"rows": [{"image": V16}, {"image": [0.1] * 15}]}, 422, "rows[1].image", "15 values; 'image' takes 16"),
    ({"rows": [{"image": V16[:3] + [1e39] + V16[4:]}]}, 422, "rows[0].image", "at position 3"),
    ({"rows": [{}]}, 422, "rows[0]", "empty row"),
    ({"rows": [{"image": None, "text": None}]}, 422, "rows[0]", "no visible modality"),
    ({"rows": []}, 422, "rows", "no rows"),
    ({"rows": [{"image": V16}] * 65}, 413, "rows", "at most 64"),
    ({"rows": [{"image": ["a"] * 16}]}, 422, "rows[0].image", "position 0 is str"),
    ({"rows": [{"image": [True] * 16}]}, 422, "rows[0].image", "position 0 is bool"),
    ({"rows": [{"image": "a photo"}]}, 422, "rows[0].image", "text is not accepted"),
    ({"rows": [7]}, 422, "rows[0]", "expected an object"),
    ({"rows": {"image": V16}}, 422, "rows", ""),
    ({"rowz": []}, 422, "rows", "required"),
    ({"rows": [{"image": V16}], "topk": 3}, 422, "topk", "unknown option"),
])
def test_bad_rows(client, body, status, field, words):
    r = client.post("/encode", json=body)
    assert r.status_code == status, r.json()
    d = r.json()
    assert d["field"] == field and d["detail"].startswith(field) and words in d["detail"]
    assert "\n" not in d["detail"]


@pytest.mark.parametrize("raw, field", [
    ('{"rows": [{"image": [NaN' + ", 0.1" * 15 + "]}]}", "rows[0].image"),
    ('{"rows": [{"image": [0.1, Infinity' + ", 0.1" * 14 + "]}]}", "rows[0].image"),
    ('{"rows": [{"image": [0.1, -Infinity' + ", 0.1" * 14 + "]}]}", "rows[0].image"),
])
def test_nan_and_inf(client, raw, field):
    r = client.post("/encode", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == field and "NaN or infinite" in r.json()["detail"]


@pytest.mark.parametrize("raw", ['{"rows": [', "{rows: []}", "", "not json", '{"rows": [{"image": [1,]}]}'])
def test_malformed_json(client, raw):
    r = client.post("/encode", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422)
    d = r.json()["detail"]
    assert d.startswith("body:") and "\n" not in d
    if raw:
        assert r.status_code == 400 and "malformed JSON" in d


def test_oversized_body(client):
    big = json.dumps({"rows": [{"image": V16}], "pad": "x" * (300 * 1024)})
    r = client.post("/encode", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over 262144 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while it streams in
        yield b'{"rows": ['
        for _ in range(4000):  # ~440 KB
            yield b'{"image": ' + json.dumps(V16).encode() + b"},"
        yield b"]}"

    r = client.post("/encode", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize("path, body, field", [
    ("/retrieve", {"target": "text", "k": 0}, "k"),
    ("/retrieve", {"target": "../../etc/passwd"}, "target"),
    ("/retrieve", {"target": "text", "delta": 1.5}, "delta"),
    ("/reconstruct", {"targets": ["nope"]}, "targets"),
    ("/reconstruct", {"targets": []}, "targets"),
    ("/reconstruct", {"n_samples": -1}, "n_samples"),
    ("/reconstruct", {"n_samples": 100000}, "n_samples"),
    ("/classify", {"k": "five"}, "k"),
    ("/encode", {"subsets": "maybe"}, "subsets"),
])
def test_bad_options(client, path, body, field):
    r = client.post(path, json={"rows": [{"image": V16}], **body})
    assert r.status_code == 422 and r.json()["field"] == field and r.json()["detail"].startswith(field)


# --- access ---------------------------------------------------------------------------------

def test_api_key(tiny_run, monkeypatch):
    monkeypatch.setenv("PROM3E_TEST_KEY", "s3cret-key")
    c = TestClient(create_app(Service(ServeConfig(model=str(tiny_run), api_key_env="PROM3E_TEST_KEY"))))
    assert c.get("/health").status_code == 200
    assert c.get("/").status_code == 200  # the page (static, no data) asks for the key itself
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "s3cret-ke"}, {"X-API-Key": "s3cret-key "}):
        r = c.get("/schema", headers=headers)
        assert r.status_code == 401 and r.json()["field"] == "X-API-Key"
        assert c.post("/encode", json={"rows": [{"image": V16}]}, headers=headers).status_code == 401
    ok = {"X-API-Key": "s3cret-key"}
    assert c.get("/schema", headers=ok).status_code == 200
    assert c.post("/encode", json={"rows": [{"image": V16}]}, headers=ok).status_code == 200
    monkeypatch.delenv("PROM3E_TEST_KEY")
    with pytest.raises(Prom3eError, match="PROM3E_TEST_KEY"):
        create_app(Service(ServeConfig(model=str(tiny_run), api_key_env="PROM3E_TEST_KEY")))


def test_cors_off_by_default(client, tiny_run):
    h = {"Origin": "http://example.org"}
    assert "access-control-allow-origin" not in client.get("/health", headers=h).headers
    on = TestClient(create_app(Service(ServeConfig(model=str(tiny_run), cors_origins=["http://example.org"]))))
    assert on.get("/health", headers=h).headers["access-control-allow-origin"] == "http://example.org"
    assert "access-control-allow-origin" not in on.get("/health", headers={"Origin": "http://evil.test"}).headers


# --- the command ----------------------------------------------------------------------------

@pytest.mark.parametrize("extra, words", [
    (["--port", "70000"], "--port"),
    (["--workers", "0"], "--workers"),
    (["--max-rows", "0"], "--max-rows"),
    (["--max-body-bytes", "10"], "--max-body-bytes"),
    (["--index", "text"], "NAME=FILE"),
    (["--index", "text=/nonexistent.safetensors"], "--index text"),
    (["--gallery", "/nonexistent.parquet"], "--gallery"),
    (["--index", "nope=IDX"], "no modality 'nope'"),
    (["--prototypes", "TABLE", "--label", "nolabel"], "nolabel"),
    (["--api-key-env", "PROM3E_UNSET_VAR_FOR_TEST"], "PROM3E_UNSET_VAR_FOR_TEST"),
])
def test_cli_rejects_bad_options(tiny_run, small_parquet, tmp_path, capsys, extra, words):
    from prom3e.cli import main
    from prom3e.index import GalleryIndex

    idx = tmp_path / "i.safetensors"
    GalleryIndex.build(np.eye(16, dtype=np.float32)).save(idx)
    extra = [str(idx) if a == "IDX" else str(small_parquet) if a == "TABLE" else a.replace("IDX", str(idx))
             for a in extra]
    assert main(["serve", "--model", str(tiny_run), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prom3e serve: error:") and words in err and "\n" not in err


def test_cli_missing_model(tmp_path, capsys):
    from prom3e.cli import main

    assert main(["serve", "--model", str(tmp_path / "none")]) == 2
    assert "--model" in capsys.readouterr().err
