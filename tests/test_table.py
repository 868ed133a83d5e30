"""The data contract: round trips and one clear error per kind of bad input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prom3e.data.table import (
    ModalTable,
    from_arrow,
    import_npy,
    read_table,
    vectors_to_arrow,
    write_parquet,
)
from prom3e.errors import Prom3eError


def _table(a_rows, b_rows, meta=True):
    cols = {"id": pa.array(range(len(a_rows)))} if meta else {}
    cols["a"] = pa.array(a_rows, type=pa.list_(pa.float32()))
    cols["b"] = pa.array(b_rows, type=pa.list_(pa.float32()))
    return pa.table(cols)


def test_round_trip_keeps_values_presence_and_metadata(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(5, 7)).astype(np.float32)
    present = np.array([[1, 1], [1, 0], [0, 1], [1, 1], [1, 0]], bool)
    t = ModalTable(["a", "b"], [x * present[:, :1], y * present[:, 1:]], present,
                   {"species": np.array(list("pqrst"))})
    write_parquet(t, tmp_path / "t.parquet")
    back = read_table(tmp_path / "t.parquet")
    assert back.modalities == ["a", "b"] and back.dims == [3, 7]
    np.testing.assert_array_equal(back.present, present)
    np.testing.assert_allclose(back.features[0], x * present[:, :1])
    assert list(back.meta["species"]) == list("pqrst")
    assert back.padded().shape == (5, 2, 7)


def test_fixed_size_lists_and_float64_are_accepted():
    arr = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float64)), 3)
    t = from_arrow(pa.table({"v": arr, "w": arr}))
    assert t.dims == [3, 3] and t.features[0].dtype == np.float32


@pytest.mark.parametrize(
    "a_rows, b_rows, message",
    [
        ([[1.0, 2.0], [1.0]], [[1.0], [2.0]], "column 'a' row 1 has length 1, expected 2"),
        ([[1.0, float("nan")], [1.0, 2.0]], [[1.0], [2.0]], "column 'a' row 0 contains NaN"),
        ([[1.0, 2.0], [1.0, float("inf")]], [[1.0], [2.0]], "column 'a' row 1 contains NaN or inf"),
        ([[1.0, 2.0], None], [[1.0], None], "row 1 has no modality present"),
        ([None, None], [[1.0], [2.0]], "'a' has no non-null value"),
    ],
)
def test_bad_tables_name_the_column_and_row(a_rows, b_rows, message):
    with pytest.raises(Prom3eError, match=message.replace("(", r"\(")):
        from_arrow(_table(a_rows, b_rows), "t.parquet")


def test_non_numeric_lists_and_empty_tables_are_refused(tmp_path):
    bad = pa.table({"a": pa.array([["x"]], type=pa.list_(pa.string()))})
    with pytest.raises(Prom3eError, match="'a' is a list of string"):
        from_arrow(bad, "t")
    with pytest.raises(Prom3eError, match="empty"):
        from_arrow(_table([], []).slice(0, 0), "t")
    with pytest.raises(Prom3eError, match="no modality columns"):
        from_arrow(pa.table({"id": [1, 2]}), "t")


def test_unreadable_and_missing_files(tmp_path):
    p = tmp_path / "junk.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(Prom3eError, match="junk.parquet: not a readable Parquet file"):
        read_table(p)
    with pytest.raises(Prom3eError, match="no such file"):
        read_table(tmp_path / "absent.parquet")


def test_schema_matching_by_name(small_table):
    reordered = small_table.select(["text", "image"])
    t = reordered.check_schema(small_table.modalities, small_table.dims)
    assert t.modalities == small_table.modalities
    assert not t.present[:, t.index("sat")].any()
    np.testing.assert_array_equal(t.feature("text"), small_table.feature("text"))
    with pytest.raises(Prom3eError, match="unknown modality 'image'"):
        reordered.check_schema(["text"], [16])
    with pytest.raises(Prom3eError, match="column 'text' has dim 16, the model expects 8"):
        reordered.check_schema(["image", "text"], [16, 8])


def test_import_reference_npy_dict(tmp_path):
    rng = np.random.default_rng(0)
    d = {"image": rng.normal(size=(4, 8)), "sound": rng.normal(size=(4, 8))}
    d["sound"][1] = 0  # the reference's "absent audio"
    np.save(tmp_path / "ref.npy", d, allow_pickle=True)
    t = import_npy(tmp_path / "ref.npy")
    assert t.modalities == ["image", "sound"]
    assert t.present[:, 1].tolist() == [True, False, True, True]
    np.testing.assert_allclose(t.features[0], d["image"], rtol=1e-6)


def test_import_refuses_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    arr = np.empty((), dtype=object)
    arr[()] = {"image": Evil()}
    np.save(tmp_path / "evil.npy", arr, allow_pickle=True)
    with pytest.raises(Prom3eError, match="refusing to load builtins.print"):
        import_npy(tmp_path / "evil.npy")


def test_vectors_to_arrow_nulls():
    col = vectors_to_arrow(np.ones((3, 2), np.float32), np.array([True, False, True]))
    assert col.null_count == 1 and col.type == pa.list_(pa.float32())


def test_written_file_is_atomic(tmp_path, small_table, monkeypatch):
    target = tmp_path / "t.parquet"
    write_parquet(small_table, target)
    before = target.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(RuntimeError):
        write_parquet(small_table, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
