"""The birdclef22 pipeline end to end on a subsample (real data: skipped without ../shared/data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "birdclef22"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "observations.csv").exists(),
                       reason=f"real data not found at {DATA} (../shared/data is not part of the product)"),
]


def test_birdclef22_pipeline_on_a_subsample(tmp_path):
    pytest.importorskip("sentence_transformers", reason="pip install 'prom3e[text]' for MiniLM")
    sys.path.insert(0, str(ROOT / "experiments"))
    import birdclef22

    args = ["--subsample", "1200", "--out", str(tmp_path), "--align-epochs", "3", "--epochs", "2",
            "--fast", "--quiet"]
    assert birdclef22.main(args) == 0
    t = pq.read_table(tmp_path / "aligned.parquet")
    split = np.asarray(t.column("split").to_pylist())
    assert set(split) == {"train", "val", "test"}
    for m in birdclef22.MODALITIES:
        dims = {len(v) for v in t.column(m).drop_null().to_pylist()[:50]}
        assert dims == {384}, m
    labels = np.asarray(t.column(birdclef22.LABEL).to_pylist())
    for c in np.unique(labels):  # per species: train first, test only once there are two rows
        s = split[labels == c]
        assert "train" in s and (len(s) < 2 or "test" in s)
    res = json.loads((tmp_path / "stage2" / "result.json").read_text())["summary"]
    for key in ("spearman_sigma_rank_mean", "frac_sigma_drops", "clip_share", "frac_recon_ge_cross",
                "r1_inversion_mean", "frac_probe_pair_ge_raw", "probe"):
        assert key in res
    assert 0 <= res["clip_share"] <= 1 and res["probe"]
    rec = birdclef22.build_stage1(DATA, tmp_path, subsample=1200, align_epochs=3, progress=False)
    assert rec["cached"]  # stage 1 is reused when nothing changed
