"""The load test of `prom3e serve` (bounded, loopback only) and `prom3e perf serve`."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="prom3e serve needs the 'serve' extra (fastapi, uvicorn, httpx)")


@pytest.mark.slow
def test_bounded_load_has_no_errors():
    from prom3e.perf.serve import bench_serve

    r = bench_serve("tiny", dim=16, rows=(1, 8), requests=120, concurrency=4, threads=1, time_limit_s=120,
                    warmup=5)
    assert r["errors"] == 0 and r["host"] == "127.0.0.1"
    for key in ("rows1", "rows8"):
        x = r["results"][key]
        assert x["requests"] == 120 and not x["stopped_by_time_limit"]
        assert 0 < x["latency_ms"]["p50"] <= x["latency_ms"]["p99"] <= x["latency_ms"]["max"]
        assert x["requests_per_s"] > 0
    assert r["results"]["rows8"]["rows_per_s"] == pytest.approx(8 * r["results"]["rows8"]["requests_per_s"])


def test_load_counts_failures_and_stops_at_its_bounds():
    from prom3e.perf.serve import load

    # nothing listens on port 9 of loopback: every request fails at once and is an error
    r = load("http://127.0.0.1:9", "/encode", [b"{}"], requests=50, concurrency=2, time_limit_s=30)
    assert r["requests"] == 50 and r["errors"] == 50 and not r["stopped_by_time_limit"]
    r = load("http://127.0.0.1:9", "/encode", [b"{}"], requests=10**9, concurrency=2, time_limit_s=0.3)
    assert r["stopped_by_time_limit"] and r["wall_s"] < 5


def test_perf_serve_prints_json(capsys):
    from prom3e.cli import main

    assert main(["perf", "serve", "--config", "tiny", "--dim", "16", "--rows", "1", "--requests", "40",
                 "--concurrency", "2", "--threads", "1", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    r = json.loads(out[-1])
    assert r["benchmark"] == "serve" and r["errors"] == 0 and r["results"]["rows1"]["requests"] == 40
    assert "req/s" in out[-2] and "p99" in out[-2]


@pytest.mark.parametrize("opt", [["--rows", "a"], ["--requests", "0"], ["--concurrency", "0"], ["--time-limit", "0"]])
def test_perf_serve_rejects_bad_options(capsys, opt):
    from prom3e.cli import main

    assert main(["perf", "serve", *opt]) == 2
    assert opt[0] in capsys.readouterr().err


@pytest.mark.slow
def test_two_workers_each_load_the_model(tiny_run, monkeypatch):
    import urllib.request

    from prom3e.perf.serve import running_server

    body = json.dumps({"rows": [{"image": [0.25] * 16}]}).encode()
    with running_server(["--model", str(tiny_run), "--workers", "2", "--threads", "1", "--api-key-env",
                         "PROM3E_LOAD_KEY"], env={"PROM3E_LOAD_KEY": "k"}) as url:
        for _ in range(6):
            req = urllib.request.Request(url + "/encode", body, {"Content-Type": "application/json", "X-API-Key": "k"})
            with urllib.request.urlopen(req, timeout=30) as r:
                assert r.status == 200 and json.loads(r.read())["results"][0]["visible"] == ["image"]
