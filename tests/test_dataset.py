"""Folders of Parquet parts read as one table: same rows and same errors as read_table."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prom3e.data.dataset import MANIFEST, STATE, Dataset, is_dataset, open_table
from prom3e.data.parts import PartWriter
from prom3e.data.table import ModalTable, read_table, to_arrow, write_parquet
from prom3e.errors import Prom3eError


def _split(table: pa.Table, folder, sizes, row_group=None) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    files, start = [], 0
    for i, n in enumerate(sizes):
        f = folder / f"p{i}.parquet"
        pq.write_table(table.slice(start, n), f, row_group_size=row_group)
        files.append(f)
        start += n
    return files


@pytest.fixture
def parts(tmp_path, small_table):
    t = to_arrow(small_table)
    _split(t, tmp_path / "parts", [300, 0, 250, 250], row_group=64)
    return tmp_path / "parts"


def test_dataset_rows_equal_the_file(parts, small_table):
    ds = Dataset(parts)
    assert len(ds) == len(small_table) and ds.modalities == small_table.modalities
    assert ds.dims == small_table.dims
    whole = ds.table(0, len(ds))
    for a, b in zip(whole.features, small_table.features, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole.present, small_table.present)
    np.testing.assert_array_equal(whole.meta["species"], small_table.meta["species"])
    # chunks tile the table at fixed boundaries; take returns rows in the order asked
    assert [(a, len(c)) for a, c in ds.chunks(333)] == [(0, 333), (333, 333), (666, 134)]
    rows = np.array([799, 0, 300, 299, 0])
    got = ds.take(rows)
    np.testing.assert_array_equal(got.features[0], small_table.features[0][rows])
    np.testing.assert_array_equal(got.meta["id"], small_table.meta["id"][rows])
    feats, ids = ds.column("sound")
    m = small_table.index("sound")
    np.testing.assert_array_equal(ids, np.flatnonzero(small_table.present[:, m]))
    np.testing.assert_array_equal(feats, small_table.features[m][ids])


def test_globs_single_files_and_open_table(parts, small_parquet, small_table):
    assert is_dataset(parts) and is_dataset(str(parts / "p*.parquet")) and not is_dataset(small_parquet)
    assert len(Dataset(str(parts / "p[23].parquet"))) == 500
    assert len(Dataset(small_parquet)) == len(small_table)  # one file = one part
    assert isinstance(open_table(small_parquet), ModalTable)
    assert isinstance(open_table(parts), Dataset)
    with pytest.raises(Prom3eError, match="no file matches"):
        Dataset(str(parts / "nothing*.parquet"))


def _bad(table: pa.Table, column: str, row: int, value) -> pa.Table:
    vals = table.column(column).to_pylist()
    vals[row] = value
    i = table.schema.get_field_index(column)
    return table.set_column(i, column, pa.array(vals, table.schema.field(column).type))


@pytest.mark.parametrize("column,value,message", [
    ("image", [1.0, 2.0], "column 'image' row {row} has length 2, expected 16"),
    ("image", [float("nan")] * 16, "column 'image' row {row} contains NaN or inf"),
    ("image", [1.0] * 15 + [None], "column 'image' row {row} has a null element inside its vector"),
])
def test_errors_name_the_part_and_the_global_row(tmp_path, small_table, column, value, message):
    t = _bad(to_arrow(small_table), column, 612, value)
    folder = tmp_path / "bad"
    _split(t, folder, [300, 300, 200], row_group=50)
    ds = Dataset(folder)
    with pytest.raises(Prom3eError) as e:
        ds.table(0, len(ds))
    assert str(e.value) == str(e.value).splitlines()[0]
    assert str(e.value).startswith(f"{folder} (part p2.parquet): " + message.format(row=612))
    # the same rule as the one-file reader, which numbers the row the same way
    write_parquet(t, tmp_path / "bad.parquet")
    with pytest.raises(Prom3eError, match=message.format(row=612)):
        read_table(tmp_path / "bad.parquet")
    ds.table(0, 600)  # rows before it are fine


def test_row_without_modality_and_whole_table_checks(tmp_path, small_table):
    t = to_arrow(small_table)
    for m in small_table.modalities:
        t = _bad(t, m, 450, None)
    _split(t, tmp_path / "a", [400, 400])
    with pytest.raises(Prom3eError, match=r"\(part p1.parquet\): row 450 has no modality present"):
        Dataset(tmp_path / "a").table(0, 800)
    # a modality with no value in any part; an empty dataset; a part with another schema
    empty = to_arrow(small_table).set_column(
        1 + len(small_table.meta), "sat", pa.nulls(800, pa.list_(pa.float32())))
    _split(empty, tmp_path / "b", [400, 400])
    with pytest.raises(Prom3eError, match="modality column 'sat' has no non-null value"):
        Dataset(tmp_path / "b").dims  # noqa: B018
    _split(to_arrow(small_table), tmp_path / "c", [0])
    with pytest.raises(Prom3eError, match="the table is empty"):
        Dataset(tmp_path / "c")
    d = tmp_path / "d"
    _split(to_arrow(small_table), d, [400])
    pq.write_table(to_arrow(small_table.select(["image"])).slice(400), d / "p9.parquet")
    with pytest.raises(Prom3eError, match="part p9.parquet has columns"):
        Dataset(d)
    (tmp_path / "e").mkdir()
    with pytest.raises(Prom3eError, match="no Parquet parts"):
        Dataset(tmp_path / "e")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "x.parquet").write_text("not parquet")
    with pytest.raises(Prom3eError, match="not a readable Parquet file"):
        Dataset(tmp_path / "f")


def test_part_writer_manifest_resume_and_refusals(tmp_path, small_table):
    t = to_arrow(small_table)
    out = tmp_path / "out"
    w = PartWriter(out, {"what": 1})
    w.write(0, t.slice(0, 500))
    # unfinished: readers refuse it; no stray temporary files
    assert (out / STATE).exists() and not (out / MANIFEST).exists()
    with pytest.raises(Prom3eError, match="unfinished output"):
        Dataset(out)
    assert sorted(p.name for p in out.iterdir()) == [STATE, "part-000000000000.parquet"]
    # a second run with the same fingerprint resumes: the written part counts as done
    w2 = PartWriter(out, {"what": 1})
    assert w2.done(0) and not w2.done(500)
    with pytest.raises(Prom3eError, match="1 part\\(s\\) missing"):
        w2.finish([0, 500])
    w2.write(500, t.slice(500))
    manifest = w2.finish([0, 500])
    assert manifest["rows"] == 800 and [p["rows"] for p in manifest["parts"]] == [500, 300]
    assert json.loads((out / MANIFEST).read_text()) == manifest and not (out / STATE).exists()
    assert len(Dataset(out)) == 800
    # the manifest decides what the parts are: a stray file is ignored
    pq.write_table(t.slice(0, 10), out / "stray.parquet")
    assert len(Dataset(out)) == 800
    assert PartWriter(out, {"what": 1}).complete  # finished output: nothing to redo
    with pytest.raises(Prom3eError, match="different run"):
        PartWriter(out, {"what": 2})
    w3 = PartWriter(out, {"what": 2}, restart=True)
    assert not w3.done(0) and not (out / MANIFEST).exists()
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(Prom3eError, match="not a prom3e output"):
        PartWriter(tmp_path / "user", {"what": 1})
