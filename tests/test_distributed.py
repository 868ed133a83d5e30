"""torchrun: two CPU processes (gloo) train one model; rank 0 writes the run folder.

Each rank records the rows it trained on and its final parameters (a spy on the model's
forward, in a small driver around the real ``prom3e train``): the ranks see different rows,
yet end with bit-identical parameters equal to the saved last checkpoint — so the
gradients were synchronised (unsynchronised ranks would drift apart after their first step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

DRIVER = """
import json, os, sys
from safetensors.torch import save_file
from prom3e.models.prom3e import Prom3e
models, rows = [], []
forward = Prom3e.forward
def spy(self, x, visible, targets, labels=None, *args, **kwargs):
    models[:] = [self]
    rows.append([float(v) for v in x.double().sum((1, 2))])  # one checksum per row of the batch
    return forward(self, x, visible, targets, labels, *args, **kwargs)
Prom3e.forward = spy
from prom3e.cli import main
rc = main(sys.argv[2:])
rank = os.environ["RANK"]
save_file({k: v.detach().contiguous() for k, v in models[0].state_dict().items()}, f"{sys.argv[1]}/rank{rank}.st")
json.dump(rows, open(f"{sys.argv[1]}/rows{rank}.json", "w"))
sys.exit(rc)
"""


@pytest.mark.slow
def test_torchrun_two_processes_synchronise_gradients(small_parquet, tmp_path):
    run = tmp_path / "ddp"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--master-port", "29517", str(driver), str(tmp_path), "train",
         "--data", str(small_parquet), "--out", str(run), "--model", "tiny", "--epochs", "2",
         "--batch-size", "64", "--quiet", "--device", "cpu", "--precision", "fp32"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done:") == 1  # only rank 0 reports
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    weights = load_file(str(run / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())

    rows = [json.loads((tmp_path / f"rows{r}.json").read_text()) for r in (0, 1)]
    assert len(rows[0]) == len(rows[1]) >= 2  # the same number of steps, each on different rows
    assert all(not set(a) & set(b) for a, b in zip(*rows, strict=True))
    ranks = [load_file(str(tmp_path / f"rank{r}.st")) for r in (0, 1)]
    last = load_file(str(run / "last" / "model.safetensors"))
    assert ranks[0].keys() == ranks[1].keys() == last.keys()
    for k in last:
        assert torch.equal(ranks[0][k], ranks[1][k]), k  # identical after every step
        assert torch.equal(ranks[0][k], last[k]), k
