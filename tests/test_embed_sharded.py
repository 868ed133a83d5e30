"""torchrun embed: two CPU processes (gloo) write the same parts as one process, and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_scale_commands import _observations

from prom3e.cli import main
from prom3e.data.dataset import MANIFEST, STATE


def _torchrun(args: list[str], port: int) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", str(port), "-m", "prom3e.cli",
                           *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_two_processes_write_the_parts_of_one_process_and_resume_per_rank(tmp_path):
    obs, spec = _observations(tmp_path, 230)
    base = ["embed", "--observations", str(obs), "--spec", str(spec), "--no-progress", "--device", "cpu",
            "--part-rows", "50"]
    assert main([*base, "--out", str(tmp_path / "one"), "--parts"]) == 0
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").glob("part-*")}
    proc = _torchrun([*base, "--out", str(tmp_path / "two")], 29541)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("230 of 230 rows") == 1  # rank 0 reports
    two = {p.name: p.read_bytes() for p in (tmp_path / "two").glob("part-*")}
    assert two == one and len(two) == 5
    m1, m2 = (json.loads((tmp_path / d / MANIFEST).read_text()) for d in ("one", "two"))
    assert m1["parts"] == m2["parts"] and m2["rows"] == 230
    # a run killed while rank 1 (parts 1 and 3) was working: its parts are redone, rank 0's kept
    (tmp_path / "two" / MANIFEST).unlink()
    (tmp_path / "two" / STATE).write_text(json.dumps({"format": "prom3e-parts/1", "fingerprint": m2["fingerprint"]}))
    for name in ("part-000000000050.parquet", "part-000000000150.parquet"):
        (tmp_path / "two" / name).unlink()
    kept = (tmp_path / "two" / "part-000000000000.parquet").stat().st_mtime_ns
    proc = _torchrun([*base, "--out", str(tmp_path / "two")], 29542)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "230 of 230 rows" in proc.stdout and "100 embedded now" in proc.stdout
    assert {p.name: p.read_bytes() for p in (tmp_path / "two").glob("part-*")} == one
    assert (tmp_path / "two" / "part-000000000000.parquet").stat().st_mtime_ns == kept
