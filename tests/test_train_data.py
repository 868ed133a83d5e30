"""Training batches streamed from a folder of parts: bounded, seeded, resumable."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from prom3e.data.dataset import Dataset
from prom3e.data.table import to_arrow
from prom3e.train.data import StreamingSource, _ShuffleBuffer, hashed_label_ids, is_validation
from prom3e.train.loop import TrainConfig, train


@pytest.fixture
def parts(tmp_path, small_table):
    t = to_arrow(small_table)
    t = t.append_column("row", pa.array(np.arange(t.num_rows, dtype=np.float32)))
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, a in enumerate(range(0, t.num_rows, 200)):
        pq.write_table(t.slice(a, 200), folder / f"p{i}.parquet", row_group_size=50)
    return folder


def _rows_of(batch) -> np.ndarray:
    """The fixture's row numbers, recovered from the first feature (unique per row)."""
    return batch.x[:, 0, 0].numpy()


def test_shuffle_buffer_emits_each_row_once_in_a_seeded_order():
    def run(seed):
        buf = _ShuffleBuffer(37, 8, np.random.default_rng(seed))
        out = []
        for a in range(0, 203, 25):
            rows = np.arange(a, min(a + 25, 203))
            out += [b[0] for b in buf.push([rows, rows * 2])]
        out += [b[0] for b in buf.drain()]
        return np.concatenate(out)

    a, b, c = run(1), run(1), run(2)
    assert len(a) == 200 and len(set(a.tolist())) == 200  # 203 rows, 3 left over (< one batch)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(np.sort(a), a)  # shuffled


def test_streaming_source_split_order_and_bounded_reads(parts, small_table, monkeypatch):
    ds = Dataset(parts)
    src = StreamingSource(ds, 0.1, 4000, seed=3, label_column="species", shuffle_buffer=64)
    val = np.flatnonzero(is_validation(np.arange(800), 3, 0.1))
    assert src.n_val == len(val) and src.n_train + src.n_val == 800 and 40 < len(val) < 120
    reads = []
    original = ds.read_unit
    monkeypatch.setattr(ds, "read_unit", lambda u, cols=None: reads.append(u) or original(u, cols))
    gen = torch.Generator()
    first = next(src.batches(0, 32, gen))
    assert len(reads) <= 3  # 64-row buffer, 50-row groups: a batch needs two or three groups, not all 16
    epoch0 = [b for b in src.batches(0, 32, gen)]
    assert len(epoch0) == src.steps_per_epoch(32) == src.n_train // 32
    np.testing.assert_array_equal(first.x, epoch0[0].x)
    rows = np.concatenate([b.x[:, :, :].reshape(32, -1).numpy() for b in epoch0])
    assert len(np.unique(rows, axis=0)) == len(rows)  # no row twice in an epoch
    # no validation row is trained on; labels: equal ids exactly for equal species
    val_x = src.validation()[0].reshape(len(val), -1).numpy()
    assert len(val_x) == len(val)
    assert not (rows[:, None, :] == val_x[None, :, :]).all(-1).any()
    again = list(src.batches(0, 32, torch.Generator()))
    assert all(torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels) for a, b in zip(epoch0, again, strict=True))
    other = list(src.batches(1, 32, torch.Generator()))
    assert not torch.equal(epoch0[0].x, other[0].x)
    ids = hashed_label_ids(pa.chunked_array([pa.array(["a", "b", None, "a"]), pa.array(["b", None])]))
    assert ids[0] == ids[3] and ids[1] == ids[4] and ids[2] == ids[5] and len(set(ids.tolist())) == 3


def test_ranks_get_disjoint_row_groups_and_the_same_number_of_steps(parts, monkeypatch):
    seen, steps = [], []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        src = StreamingSource(Dataset(parts), 0.1, 100, seed=0, shuffle_buffer=64)
        batches = list(src.batches(0, 32, torch.Generator()))
        assert all(len(b.x) == 16 and b.mine == slice(None) for b in batches)
        steps.append(len(batches))
        seen.append({tuple(r) for b in batches for r in b.x.reshape(16, -1).numpy().tolist()})
    assert steps[0] == steps[1] == src.steps_per_epoch(32)
    assert not seen[0] & seen[1]


def test_streamed_training_is_deterministic_and_resumes_exactly(parts, tmp_path):
    from prom3e.cli import main

    def weights(run):
        return load_file(str(run / "last" / "model.safetensors"))

    args = ["train", "--data", str(parts), "--model", "tiny", "--epochs", "2", "--batch-size", "64",
            "--quiet", "--precision", "fp32", "--label", "species", "--shuffle-buffer", "128", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    wa = weights(tmp_path / "a")
    # one epoch, then --resume for the second == two straight epochs (so the order is seeded)
    cfg = TrainConfig(model="tiny", epochs=2, batch_size=64, precision="fp32", label_column="species",
                      device="cpu")
    src = StreamingSource(Dataset(parts), cfg.val_fraction, cfg.val_cap, cfg.seed, "species", 128)
    train(src, tmp_path / "c", cfg, progress=False, stop_after=1)
    train(src, tmp_path / "c", cfg, resume=True, progress=False)
    wc = weights(tmp_path / "c")
    assert all(torch.allclose(wa[k], wc[k], atol=1e-6) for k in wa)
    split = json.loads((tmp_path / "a" / "split.json").read_text())
    assert split["streamed"] == str(parts) and split["shuffle_buffer"] == 128
    assert split["n_train"] + split["n_val"] == 800
    log = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
