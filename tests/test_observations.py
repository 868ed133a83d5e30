"""Observation exports as downloaded: GBIF simple, Darwin Core Archive, iNaturalist CSV.

The fixtures in ``tests/data/observations`` are small hand-written files in the real
formats (GBIF's 50 simple-download columns, a DwC-A core + extension with meta.xml,
iNaturalist's export columns), not simplified ones.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from prom3e.cli import main
from prom3e.data.observations import read_observations
from prom3e.data.table import read_table
from prom3e.encoders.base import Encoder
from prom3e.encoders.date import DateEncoder, parse_dates
from prom3e.encoders.embed import URL_HELP, embed, gather_inputs
from prom3e.encoders.registry import EncoderInfo, register
from prom3e.encoders.spec import parse_spec
from prom3e.errors import Prom3eError

DATA = Path(__file__).parent / "data" / "observations"
GBIF_SIMPLE = DATA / "0004711-240321170329656.csv"
INAT = DATA / "inat-observations-407156.csv"


def _days(*iso: str) -> np.ndarray:
    return DateEncoder().encode(list(iso))


def _zip_dwca(tmp_path: Path, folder: Path = DATA / "dwca", name: str = "0004712-240321170329656.zip") -> Path:
    out = tmp_path / name
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:  # flat, as GBIF writes it
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    return out


@pytest.mark.parametrize("value, day", [
    ("2021-05-02 14:03:11 UTC", "2021-05-02"),                   # iNaturalist time_observed_at
    ("2021-05-02", "2021-05-02"),
    ("2019-05-01/2019-05-03", "2019-05-01"),                     # an ISO interval: its start
    ("2019-05-01T10:00:00/2019-05-01T12:00:00", "2019-05-01"),
    ("2019-05-01/03", "2019-05-01"),
    ("2018-06", "2018-06-01"),                                   # a month: its first day
    ("2021-05-02T23:30:00+10:00", "2021-05-02"),                 # the date as written there
    ("2021-05-02T07:03:11Z", "2021-05-02"),
    ("Sun May 02 2021 23:41:00 GMT-0700 (PDT)", "2021-05-02"),   # observed_on_string
    ("2021-05-02 7:03:11 AM PDT", "2021-05-02"),
    ("12/31/2020", "2020-12-31"),
    ("May 2019", "2019-05-01"),
    ("2018", None), ("2018/2019", None),                         # a year alone: no season
    ("May 5", None), ("2020-02-30", None), ("not a date", None), ("", None), (None, None),
    (20190501, None),
])
def test_parse_dates(value, day):
    got = parse_dates([value])[0]
    assert (np.isnat(got) if day is None else got == np.datetime64(day)), (value, got)


def test_parse_dates_dayfirst_and_objects():
    import datetime as dt

    assert parse_dates(["05/06/2021"])[0] == np.datetime64("2021-05-06")
    assert parse_dates(["05/06/2021"], dayfirst=True)[0] == np.datetime64("2021-06-05")
    aware = dt.datetime(2021, 5, 2, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=10)))
    got = parse_dates([aware, dt.date(2020, 3, 4), np.datetime64("2020-05-06T10:00")])
    assert got.tolist() == [dt.date(2021, 5, 2), dt.date(2020, 3, 4), dt.date(2020, 5, 6)]


GBIF_SPEC = {
    "id_column": "gbifID",
    "modalities": {
        "date": {"encoder": "date", "column": "eventDate"},
        "loc": {"encoder": "rff_location", "columns": ["decimalLatitude", "decimalLongitude"],
                "options": {"n_features": 4}},
    },
}


@pytest.mark.parametrize("zipped", [False, True])
def test_gbif_simple_download(tmp_path, zipped):
    """GBIF's simple download: tab-separated under a .csv name, alone in a zip."""
    src = GBIF_SIMPLE
    if zipped:
        src = tmp_path / "0004711-240321170329656.zip"
        with zipfile.ZipFile(src, "w") as zf:
            zf.write(GBIF_SIMPLE, GBIF_SIMPLE.name)
    out = tmp_path / "f.parquet"
    s = embed(src, parse_spec(GBIF_SPEC), out, progress=False)
    assert s.counts["date"] == {"present": 3, "empty": 0, "unusable": 1}  # "2018": a year only
    assert s.counts["loc"] == {"present": 3, "empty": 1, "unusable": 0}
    t = pq.read_table(out)
    assert t.num_columns == 1 + 50 + 2 and t.column("gbifID").to_pylist()[0] == 3340123401
    assert t.column("locality").to_pylist()[1] == 'Pogonip, "Lime Kiln" trail'  # unquoted TSV
    dates = np.array(t.column("date").to_pylist()[:3], np.float32)
    np.testing.assert_allclose(dates, _days("2021-05-02", "2019-05-01", "2018-06-01"), atol=1e-6)
    assert s.dropped == 1 and t.num_rows == 3  # the last row: a year only, no coordinates


def test_taxonomy_columns_make_the_text_input():
    table = read_observations(GBIF_SIMPLE)
    spec = parse_spec({"modalities": {"text": {
        "encoder": "minilm", "template": "{kingdom} {phylum} {class} {order} {family} {genus} {species}"}}})
    texts = gather_inputs(table, spec.modalities[0], "text", np.arange(2), DATA)
    assert texts == ["Animalia Chordata Aves Passeriformes Corvidae Corvus Corvus corax",
                     "Plantae Tracheophyta Magnoliopsida Fagales Fagaceae Quercus Quercus agrifolia"]


def test_darwin_core_archive(tmp_path):
    """A DwC-A zip: meta.xml names the core file, its dialect and its columns' terms."""
    archive = _zip_dwca(tmp_path)
    t = read_observations(archive, text_columns=["eventDate"])
    assert t.column_names[:3] == ["gbifID", "license", "occurrenceID"]
    assert "identifier" not in t.column_names  # the multimedia extension is not joined
    assert t.column("geodeticDatum").to_pylist() == ["WGS84"] * 3  # a constant field
    assert t.column("locality").to_pylist()[0] == 'Kampina, "Oisterwijkse Vennen"'
    assert t.column("recordedBy").to_pylist()[1] == "Sören Åberg"
    s = embed(archive, parse_spec(GBIF_SPEC), tmp_path / "f.parquet", progress=False)
    assert s.counts["date"]["present"] == 3 and s.counts["loc"]["present"] == 2
    dates = np.array(pq.read_table(tmp_path / "f.parquet").column("date").to_pylist(), np.float32)
    np.testing.assert_allclose(dates, _days("2019-07-14", "2019-05-01", "2020-03-01"), atol=1e-6)
    # the unzipped folder reads the same
    assert read_observations(DATA / "dwca", text_columns=["eventDate"]).equals(t)


def test_darwin_core_archive_latin1_and_errors(tmp_path):
    folder = tmp_path / "dwca"
    shutil.copytree(DATA / "dwca", folder)
    text = (folder / "occurrence.txt").read_text("utf-8")
    (folder / "occurrence.txt").write_bytes(text.encode("latin-1"))
    meta = (folder / "meta.xml").read_text()
    with pytest.raises(Prom3eError, match="pass --encoding"):
        read_observations(folder)
    meta = meta.replace('encoding="UTF-8"', 'encoding="ISO-8859-1"', 1)
    (folder / "meta.xml").write_text(meta)
    assert read_observations(_zip_dwca(tmp_path, folder)).column("recordedBy").to_pylist()[1] == "Sören Åberg"
    with pytest.raises(Prom3eError, match="meta.xml sets the delimiter"):
        read_observations(folder, delimiter="tab")
    (folder / "meta.xml").write_text(meta.replace("<location>occurrence.txt", "<location>occ.txt"))
    with pytest.raises(Prom3eError, match="names the core file 'occ.txt'"):
        read_observations(_zip_dwca(tmp_path, folder, "b.zip"))
    (folder / "meta.xml").write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]>' + meta.split("?>", 1)[1])
    with pytest.raises(Prom3eError, match="DOCTYPE"):
        read_observations(folder)
    (folder / "meta.xml").write_text(meta.replace('index="23"', 'index="99"'))
    with pytest.raises(Prom3eError, match="maps column 99"):
        read_observations(folder)


class _PhotoEncoder(Encoder):
    """Stands in for an image encoder: a photo it can open → its byte count."""

    name, input_kind, dim = "test_photo", "image", 1

    def _encode(self, inputs):
        ok = np.array([Path(p).is_file() for p in inputs])
        return np.array([[Path(p).stat().st_size if o else 0] for p, o in zip(inputs, ok, strict=True)]), ok


register(EncoderInfo("test_photo", _PhotoEncoder, "image", "1", False, "test"), overwrite=True)

INAT_SPEC = """\
id_column: id
modalities:
  when: {encoder: date, column: time_observed_at}
  day: {encoder: date, column: observed_on}
  loc: {encoder: rff_location, columns: [latitude, longitude], options: {n_features: 4}}
  photo: {encoder: test_photo, column: image_url}
"""


def test_inaturalist_export(tmp_path, capsys):
    """iNaturalist CSV: UTC times parse, image URLs are reported (never fetched) and the
    all-unusable photo column is left out, so the output passes the data contract."""
    (tmp_path / "inat.yaml").write_text(INAT_SPEC)
    out = tmp_path / "f.parquet"
    assert main(["embed", "--observations", str(INAT), "--spec", str(tmp_path / "inat.yaml"),
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "photo: 3 value(s) are URLs, which are never fetched; download the files first (docs/" in text
    assert "left out photo: no row has a usable value" in text
    doc, heading = URL_HELP.split(", ")  # the pointer leads to a real section
    assert f"# {heading.strip(chr(39))}" in (Path(__file__).parents[1] / doc).read_text()
    assert "when: 2 present, 1 empty input, 0 unusable" in text
    t = pq.read_table(out)
    assert "photo" not in t.column_names
    assert t.column("description").to_pylist()[0] == "Two ravens, calling.\nPerched on the ridge, then flew north."
    when = np.array(t.column("when").to_pylist()[:2], np.float32)
    np.testing.assert_allclose(when, _days("2021-05-02", "2021-05-03"), atol=1e-6)  # UTC, as written
    day = np.array(t.column("day").to_pylist(), np.float32)
    np.testing.assert_allclose(day, _days("2021-05-02", "2021-05-02", "2021-06-10"), atol=1e-6)
    assert read_table(out).modalities == ["when", "day", "loc"]
    # a second run reuses every row, though 'photo' is not in the earlier output
    s = embed(INAT, parse_spec(__import__("yaml").safe_load(INAT_SPEC)), out, progress=False)
    assert s.reused == 3 and s.left_out == ["photo"]


def test_downloaded_photos_are_used(tmp_path):
    """The documented recipe's result: a local photo column next to image_url."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "77001234.jpg").write_bytes(b"x" * 10)
    import csv

    with open(INAT, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(tmp_path / "obs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, [*rows[0], "photo_file"])
        w.writeheader()
        w.writerows({**r, "photo_file": "77001234.jpg" if r["id"] == "77001234" else ""} for r in rows)
    spec = parse_spec({"id_column": "id", "modalities": {
        "photo": {"encoder": "test_photo", "column": "photo_file", "root": "photos"}}})
    s = embed(tmp_path / "obs.csv", spec, tmp_path / "f.parquet", progress=False)
    assert s.counts["photo"] == {"present": 1, "empty": 2, "unusable": 0} and not s.urls


def test_delimiter_and_encoding_options(tmp_path, capsys):
    p = tmp_path / "obs.csv"
    p.write_bytes("site;day\nKöln;2021-05-02\nNîmes;2021-06-01\n".encode("latin-1"))
    spec = tmp_path / "s.yaml"
    spec.write_text("modalities:\n  season: {encoder: date, column: day}\n")
    args = ["embed", "--observations", str(p), "--spec", str(spec), "--out", str(tmp_path / "f.parquet"),
            "--no-progress"]
    assert main(args) == 2
    assert "obs.csv: column 'site;day' is not utf-8 text; pass --encoding" in capsys.readouterr().err
    assert main([*args, "--encoding", "latin-1"]) == 2
    assert "obs.csv: no column 'day' (needed by modality 'season'; columns: site;day)" in capsys.readouterr().err
    assert main([*args, "--delimiter", "semicolon", "--encoding", "latin-1"]) == 0
    assert pq.read_table(tmp_path / "f.parquet").column("site").to_pylist() == ["Köln", "Nîmes"]
    with pytest.raises(Prom3eError, match="--delimiter must be one character"):
        read_observations(p, delimiter="ab")
    with pytest.raises(Prom3eError, match="unknown text encoding 'klingon'"):
        read_observations(p, encoding="klingon")
    t = tmp_path / "obs.tsv"
    t.write_text("site\tday\nA\t2021-05-02\n")
    assert read_observations(t).column_names == ["site", "day"]


def test_zip_without_meta_needs_one_data_file(tmp_path):
    z = tmp_path / "two.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.csv", "x\n1\n")
        zf.writestr("b.csv", "x\n2\n")
    with pytest.raises(Prom3eError, match="exactly one data file"):
        read_observations(z)


@pytest.mark.parametrize("zipped", [False, True])
def test_gbif_download_into_parts_equals_one_file(tmp_path, zipped):
    """``embed --parts`` reads an export with the same dialect as the one-file path."""
    from prom3e.encoders.embed_parts import embed_parts

    src = GBIF_SIMPLE
    if zipped:
        src = tmp_path / "0004711-240321170329656.zip"
        with zipfile.ZipFile(src, "w") as zf:
            zf.write(GBIF_SIMPLE, GBIF_SIMPLE.name)
    embed(src, parse_spec(GBIF_SPEC), tmp_path / "one.parquet", progress=False)
    s = embed_parts(src, parse_spec(GBIF_SPEC), tmp_path / "parts", progress=False, part_rows=2)
    assert s is not None and s.dropped == 1
    one = pq.read_table(tmp_path / "one.parquet")
    parts = pq.read_table(sorted((tmp_path / "parts").glob("*.parquet")))
    for col in ("gbifID", "locality", "loc", "date"):
        assert parts.column(col).to_pylist() == one.column(col).to_pylist(), col
