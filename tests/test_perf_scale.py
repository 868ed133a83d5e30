"""``prom3e perf scale``: one streamed epoch in a child process, reported as one JSON line."""

from __future__ import annotations

import json

import pytest

from prom3e.cli import main


@pytest.mark.slow
def test_perf_scale_reports_rows_rss_and_speed(tmp_path, capsys):
    data = tmp_path / "parts"
    assert main(["synth", "--out", str(data), "--parts", "--n", "3000", "--part-rows", "1000", "--dim", "8",
                 "--species", "10"]) == 0
    capsys.readouterr()
    assert main(["perf", "scale", "--data", str(data), "--out", str(tmp_path / "run"), "--batch", "128",
                 "--threads", "1"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["rows"] == 3000 and r["parts"] == 3 and r["returncode"] == 0 and r["model"] == "tiny"
    assert r["train_rows"] + r["val_rows"] == 3000 and r["steps"] == r["train_rows"] // 128
    assert r["samples_per_s"] > 0 and 50 < r["peak_rss_mb"] < 3000
    assert main(["perf", "scale"]) == 2  # needs --data
