"""Load test of ``prom3e serve`` on loopback: latency percentiles and requests/s, bounded.

A random-initialised model of a named config (modalities ``m0 … m{M-1}``, ``dim`` each) is
written to a temporary run folder and served by a real ``prom3e serve`` subprocess (uvicorn)
on a free 127.0.0.1 port. For each batch size, ``requests`` POSTs (bodies prepared up front:
seeded unit vectors, 1 to 3 visible modalities per row) go out from ``concurrency`` client
threads, each on its own keep-alive connection; the run stops at the count or at
``time_limit_s``, whichever comes first. Every non-200 answer or failed request is an error.
The server only ever binds a loopback address.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(args: Sequence[str], timeout: float = 180.0, env: dict | None = None) -> Iterator[str]:
    """``prom3e serve ARGS`` on a free loopback port; yields its base URL, stops it after."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="prom3e-serve-") as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "prom3e.cli", "serve", *args, "--host", LOOPBACK,
                                     "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})})
        url = f"http://{LOOPBACK}:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"prom3e serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(url + "/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"prom3e serve did not answer in {timeout:.0f}s: {log.read_text()[-2000:]}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def write_random_run(path: Path, config: str, n_mod: int, dim: int, seed: int = 0) -> list[str]:
    """A run folder holding a seeded random-initialised model (the service's speed does not
    depend on the weights' values)."""
    from prom3e.models.prom3e import Prom3e, named_config
    from prom3e.train import checkpoint as ckpt

    mods = [f"m{i}" for i in range(n_mod)]
    torch.manual_seed(seed)
    model = Prom3e(named_config(config, mods, [dim] * n_mod))
    path.mkdir(parents=True, exist_ok=True)
    ckpt.write_json(path / "config.json", {"format_version": ckpt.FORMAT_VERSION, "model": model.cfg.to_dict()})
    ckpt.write_json(path / "schema.json", ckpt.schema_dict(mods, [dim] * n_mod))
    ckpt.save_tensors(path / "model.safetensors", model.state_dict())
    return mods


def request_bodies(mods: list[str], dim: int, rows: int, n: int = 64, seed: int = 0) -> list[bytes]:
    """``n`` distinct JSON bodies of ``rows`` rows (1–3 visible modalities each, unit vectors)."""
    rng = np.random.default_rng([seed, rows])
    out = []
    for _ in range(n):
        body = []
        for _ in range(rows):
            vis = rng.choice(len(mods), rng.integers(1, 4), replace=False)
            v = rng.normal(size=(len(vis), dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            body.append({mods[j]: [round(float(a), 6) for a in v[k]] for k, j in enumerate(vis)})
        out.append(json.dumps({"rows": body}).encode())
    return out


def load(url: str, path: str, bodies: list[bytes], requests: int, concurrency: int,
         time_limit_s: float) -> dict:
    """Send ``requests`` POSTs from ``concurrency`` keep-alive clients; latencies and errors."""
    host, port = url.removeprefix("http://").split(":")
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit_s

    def worker() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            while True:
                with lock:
                    if issued[0] >= requests or time.monotonic() > deadline:
                        return
                    i = issued[0]
                    issued[0] += 1
                body = bodies[i % len(bodies)]
                t = time.perf_counter()
                try:
                    conn.request("POST", path, body, {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    data = r.read()
                    ok = r.status == 200 and data.startswith(b'{"results":')
                except (OSError, http.client.HTTPException) as e:
                    ok, data = False, repr(e).encode()
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=60)
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    if not ok:
                        errors.append(data[:200].decode("utf-8", "replace"))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3
    return {"requests": len(lat), "errors": len(errors), "first_error": errors[0] if errors else None,
            "wall_s": wall, "requests_per_s": len(lat) / wall,
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                           "p99": float(np.percentile(lat, 99)), "max": float(lat.max())},
            "stopped_by_time_limit": len(lat) < requests}


def bench_serve(config: str = "base", dim: int = 64, n_mod: int = 6, rows: Sequence[int] = (1, 64),
                requests: int = 5000, concurrency: int = 16, threads: int = 2, workers: int = 1,
                endpoint: str = "/encode", precision: str = "auto", time_limit_s: float = 300.0,
                warmup: int = 50) -> dict:
    """Requests/s and latency percentiles of one endpoint, per batch size (rows per request)."""
    res: dict = {"benchmark": "serve", "config": config, "modalities": n_mod, "dim": dim, "endpoint": endpoint,
                 "requests": requests, "concurrency": concurrency, "threads": threads, "workers": workers,
                 "precision": precision, "time_limit_s": time_limit_s, "host": LOOPBACK,
                 "cpu_count": os.cpu_count(), "results": {}}
    with tempfile.TemporaryDirectory(prefix="prom3e-perf-serve-") as tmp:
        mods = write_random_run(Path(tmp) / "run", config, n_mod, dim)
        args = ["--model", str(Path(tmp) / "run"), "--threads", str(threads), "--workers", str(workers),
                "--precision", precision, "--max-rows", str(max(rows))]
        with running_server(args) as url:
            with urllib.request.urlopen(url + "/schema", timeout=30) as r:
                res["precision_resolved"] = json.loads(r.read())["model"]["precision"]
            for b in rows:
                bodies = request_bodies(mods, dim, b)
                load(url, endpoint, bodies, warmup, min(concurrency, warmup), time_limit_s)
                r = load(url, endpoint, bodies, requests, concurrency, time_limit_s)
                r["rows_per_s"] = r["requests_per_s"] * b
                r["body_bytes_mean"] = float(np.mean([len(x) for x in bodies]))
                res["results"][f"rows{b}"] = r
    res["errors"] = sum(r["errors"] for r in res["results"].values())
    return res
