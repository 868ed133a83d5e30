"""Kill ``prom3e train`` with SIGKILL at random moments, resume, and check nothing was lost or
torn (issue 10 item 6 and its guard): every epoch is logged once, the checkpoint's weights,
optimiser and state agree (manifest, and the same final weights as an uninterrupted run), and
no temporary is left behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prom3e.data.synthetic import SynthConfig, generate_table
from prom3e.data.table import write_parquet
from prom3e.io import TMP_SUFFIX
from prom3e.train.checkpoint import read_checkpoint_state


def _train(data: Path, run: Path, resume: bool, epochs: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "prom3e.cli", "train", "--data", str(data), "--out", str(run), "--model", "tiny",
           "--epochs", str(epochs), "--batch-size", "32", "--threads", "1", "--precision", "fp32", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd + (["--resume"] if resume else []), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


def _has_checkpoint(run: Path) -> bool:
    """A run to resume: killed before its first checkpoint, it resumes from epoch 0."""
    return (run / "config.json").exists()


def _logged(run: Path) -> int:
    log = run / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def kill_loop(tmp_path: Path, kills: int, seed: int, epochs: int) -> None:
    data = tmp_path / "t.parquet"
    write_parquet(generate_table(SynthConfig(n=600, dim=16, n_species=10, seed=seed)), data)
    straight = tmp_path / "straight"
    t0 = time.perf_counter()
    p = _train(data, straight, resume=False, epochs=epochs)
    while p.poll() is None and not (straight / "config.json").exists():
        time.sleep(0.02)
    startup = time.perf_counter() - t0  # until training starts
    assert p.wait() == 0, p.stderr.read()
    per_epoch = (time.perf_counter() - t0 - startup) / epochs
    rng = random.Random(seed)
    after_a_checkpoint = killed = 0
    run = tmp_path / "run"
    started = time.perf_counter()
    done = False
    for _ in range(kills):
        left = epochs - _logged(run)
        p = _train(data, run, resume=_has_checkpoint(run), epochs=epochs)
        time.sleep(startup + rng.uniform(0.0, 0.5) * left * per_epoch)  # within the first half of what is left
        if p.poll() is not None:  # finished before the kill
            assert p.returncode == 0, p.stderr.read()
            done = True
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        killed += 1
        after_a_checkpoint += (run / "last").exists()
    if not done:
        p = _train(data, run, resume=_has_checkpoint(run), epochs=epochs)
        assert p.wait() == 0, p.stderr.read()
    assert time.perf_counter() - started < 600
    assert kills < 5 or (killed >= 5 and after_a_checkpoint >= 3), (killed, after_a_checkpoint)
    n_epochs = epochs
    epochs = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, n_epochs + 1))  # each epoch logged exactly once
    state = read_checkpoint_state(run)  # the manifest: weights and optimiser are the state's
    assert state["epoch"] == n_epochs and [r["epoch"] for r in state["history"]] == epochs
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(run / "last" / name)), load_file(str(straight / "last" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    best, best_straight = load_file(str(run / "model.safetensors")), load_file(str(straight / "model.safetensors"))
    assert all(torch.equal(best[k], best_straight[k]) for k in best)  # the best epoch's weights, too
    leftovers = [p.name for p in run.iterdir() if p.name.endswith(TMP_SUFFIX)]
    hidden = [p.name for p in run.iterdir() if p.name.startswith(".last-")]
    assert not leftovers and hidden == [os.readlink(run / "last")]


def test_kill_and_resume_short(tmp_path):
    kill_loop(tmp_path, kills=2, seed=0, epochs=4)


@pytest.mark.slow
def test_kill_and_resume_ten_kills(tmp_path):
    kill_loop(tmp_path, kills=10, seed=1, epochs=30)
