"""``prom3e split``: seeded, stratified, every column kept, bad input refused in one line."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prom3e.cli import main


@pytest.fixture()
def table_file(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {"a": 50, "b": 10, "c": 2, "d": 1}  # d: a singleton class
    species = [s for s, n in sizes.items() for _ in range(n)] + [None] * 7  # 7 unlabelled rows
    order = rng.permutation(len(species))
    species = [species[i] for i in order]
    n = len(species)
    vec = rng.normal(size=(n, 4)).astype(np.float32)
    t = pa.table({"id": np.arange(n), "species": pa.array(species, pa.string()),
                  "image": pa.array(list(vec), pa.list_(pa.float32()))})
    pq.write_table(t, tmp_path / "t.parquet")
    return tmp_path / "t.parquet"


def _split(path, out, *extra) -> tuple[pa.Table, pa.Table]:
    args = ["split", "--data", str(path), "--train", str(out / "train.parquet"), "--test", str(out / "test.parquet"),
            *extra]
    assert main(args) == 0
    return pq.read_table(out / "train.parquet"), pq.read_table(out / "test.parquet")


def test_stratified_every_row_once_every_column_kept(table_file, tmp_path, capsys):
    train, test = _split(table_file, tmp_path, "--label", "species", "--test-fraction", "0.2")
    full = pq.read_table(table_file)
    assert train.schema == full.schema and test.schema == full.schema
    ids = np.concatenate([train["id"].to_numpy(), test["id"].to_numpy()])
    assert sorted(ids) == list(range(full.num_rows))  # a partition: no row lost, none twice
    by = {}
    for side, t in (("train", train), ("test", test)):
        for s in t["species"].to_pylist():
            by.setdefault(s, {"train": 0, "test": 0})[side] += 1
    assert by["a"] == {"train": 40, "test": 10}  # round(0.8 · 50)
    assert by["b"] == {"train": 8, "test": 2}
    assert by["c"] == {"train": 1, "test": 1}  # at least one on each side
    assert by["d"] == {"train": 1, "test": 0}  # a singleton stays in train
    assert by[None]["test"] >= 1  # unlabelled rows are split as a class of their own
    assert "stratified by 'species' (4 classes, 7 unlabelled rows)" in capsys.readouterr().out
    # the vectors travel with their rows
    got = {i: v for i, v in zip(test["id"].to_pylist(), test["image"].to_pylist(), strict=True)}
    first = full.filter(pa.compute.equal(full["id"], next(iter(got))))
    assert first["image"].to_pylist()[0] == got[next(iter(got))]


def test_seeded(table_file, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    a = _split(table_file, tmp_path / "a", "--label", "species", "--seed", "3")
    b = _split(table_file, tmp_path / "b", "--label", "species", "--seed", "3")
    c = _split(table_file, tmp_path / "c", "--label", "species", "--seed", "4")
    assert a[1]["id"].to_pylist() == b[1]["id"].to_pylist()
    assert a[1]["id"].to_pylist() != c[1]["id"].to_pylist()


def test_without_label_a_plain_seeded_split(table_file, tmp_path, capsys):
    train, test = _split(table_file, tmp_path, "--test-fraction", "0.25")
    assert (train.num_rows, test.num_rows) == (52, 18)  # round(0.75 · 70) = 52
    assert "not stratified" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--label", "nope"], "no label column 'nope'"),
    (["--label", "image"], "is a modality"),
])
def test_bad_label(table_file, tmp_path, capsys, extra, message):
    args = ["split", "--data", str(table_file), "--train", str(tmp_path / "tr.parquet"),
            "--test", str(tmp_path / "te.parquet"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "tr.parquet").exists() and not (tmp_path / "te.parquet").exists()


def test_refusals(table_file, tmp_path, capsys):
    base = ["split", "--data", str(table_file)]
    assert main([*base, "--train", str(tmp_path / "x.parquet"), "--test", str(tmp_path / "x.parquet")]) == 2
    assert "same file" in capsys.readouterr().err
    assert main([*base, "--train", str(table_file), "--test", str(tmp_path / "y.parquet")]) == 2  # the input
    capsys.readouterr()
    (tmp_path / "old.parquet").write_text("keep me")
    assert main([*base, "--train", str(tmp_path / "old.parquet"), "--test", str(tmp_path / "y.parquet")]) == 2
    assert (tmp_path / "old.parquet").read_text() == "keep me"
    assert main(["split", "--data", str(tmp_path / "missing.parquet"), "--train", str(tmp_path / "a.parquet"),
                 "--test", str(tmp_path / "b.parquet")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*base, "--train", str(tmp_path / "a.parquet"), "--test", str(tmp_path / "b.parquet"),
                 "--test-fraction", "1"]) == 2
