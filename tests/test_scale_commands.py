"""Every command that reads a table takes a folder of parts, with the same results."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from prom3e.cli import main
from prom3e.data.dataset import MANIFEST, STATE, Dataset
from prom3e.data.table import read_table, to_arrow


@pytest.fixture(scope="module")
def parts(tmp_path_factory, small_table):
    folder = tmp_path_factory.mktemp("parts") / "t"
    folder.mkdir()
    t = to_arrow(small_table)
    for i, a in enumerate(range(0, t.num_rows, 300)):
        pq.write_table(t.slice(a, 300), folder / f"p{i}.parquet", row_group_size=100)
    return folder


def test_synth_parts_are_deterministic_and_resume(tmp_path):
    out = tmp_path / "syn"
    args = ["synth", "--out", str(out), "--parts", "--n", "1000", "--part-rows", "300", "--dim", "8",
            "--species", "10", "--seed", "4"]
    assert main(args) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["rows"] == 1000 and [p["rows"] for p in manifest["parts"]] == [300, 300, 300, 100]
    t = Dataset(out).table(0, 1000)
    assert t.dims == [8] * 6 and t.present[:, 0].all() and len(np.unique(t.meta["id"])) == 1000
    # the satellite tile of a grid cell is one vector, in every part
    sat = t.index("sat")
    cells = t.meta["cell"][t.present[:, sat]]
    vecs = t.features[sat][t.present[:, sat]]
    for c in np.unique(cells)[:5]:
        assert np.ptp(vecs[cells == c], axis=0).max() == 0
    before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    # a run killed after two parts: the state file is back, two parts gone; the rerun writes them
    (out / MANIFEST).unlink()
    (out / STATE).write_text(json.dumps({"fingerprint": manifest["fingerprint"]}))
    for name in sorted(before)[2:]:
        (out / name).unlink()
    assert main(args) == 0
    assert {p.name: p.read_bytes() for p in out.glob("part-*.parquet")} == before
    assert (out / MANIFEST).exists() and not (out / STATE).exists()


def test_reconstruct_index_and_evaluate_on_parts_equal_the_file(tiny_run, small_parquet, parts, tmp_path):
    common = ["--model", str(tiny_run), "--target", "text", "--visible", "image,loc", "--device", "cpu"]
    assert main(["reconstruct", *common, "--data", str(small_parquet), "--out", str(tmp_path / "r.parquet")]) == 0
    assert main(["reconstruct", *common, "--data", str(parts), "--out", str(tmp_path / "r"),
                 "--part-rows", "250"]) == 0
    a = read_table(tmp_path / "r.parquet")
    b = Dataset(tmp_path / "r").table(0, 800)
    np.testing.assert_allclose(a.feature("text"), b.feature("text"), atol=1e-5)
    np.testing.assert_array_equal(a.present, b.present)
    assert list(b.meta) == list(a.meta) and len(list((tmp_path / "r").glob("part-*"))) == 4

    for data, name in ((small_parquet, "f"), (parts, "p")):
        assert main(["index", "build", "--data", str(data), "--column", "image",
                     "--out", str(tmp_path / f"{name}.index.safetensors")]) == 0
        assert main(["index", "search", "--index", str(tmp_path / f"{name}.index.safetensors"),
                     "--data", str(data), "--column", "image", "--k", "3",
                     "--out", str(tmp_path / f"{name}.hits.parquet")]) == 0
    hf, hp = pq.read_table(tmp_path / "f.hits.parquet"), pq.read_table(tmp_path / "p.hits.parquet")
    assert hf.column("neighbors").to_pylist() == hp.column("neighbors").to_pylist()

    ev = ["evaluate", "--model", str(tiny_run), "--label", "species", "--no-plots", "--quiet", "--device", "cpu",
          "--max-fit", "200", "--max-test", "200", "--threads", "1", "--tasks", "retrieval,zeroshot,uncertainty"]
    assert main([*ev, "--data", str(small_parquet), "--out", str(tmp_path / "ef")]) == 0
    assert main([*ev, "--data", str(parts), "--out", str(tmp_path / "ep")]) == 0
    mf = json.loads((tmp_path / "ef" / "metrics.json").read_text())
    mp = json.loads((tmp_path / "ep" / "metrics.json").read_text())
    assert mp["settings"].pop("rows_read") == 400 and mp["settings"].pop("streamed") == str(parts)
    assert mf == mp


def test_align_on_parts_subsamples_the_fit_and_writes_parts(parts, tmp_path):
    out, heads = tmp_path / "aligned", tmp_path / "heads"
    args = ["align", "--data", str(parts), "--anchor", "image", "--out", str(out), "--model-out", str(heads),
            "--epochs", "2", "--max-fit-rows", "300", "--part-rows", "500", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    record = json.loads((heads / "config.json").read_text())["train"]
    assert record["fit_rows"] == 300 and record["fit_rows_matched"] == 800 and record["fit_subsampled"]
    from prom3e.align import load_aligner

    aligned = Dataset(out).table(0, 800)
    want = load_aligner(heads).transform(Dataset(parts).table(0, 800))
    for a, b in zip(aligned.features, want.features, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert main(args) == 0  # finished output, same options: nothing to redo
    other = [("3" if a == "2" and args[i - 1] == "--epochs" else a) for i, a in enumerate(args)]
    assert main(other) == 2  # another run's output: refused


def test_embed_parts_equal_the_file_and_resume(tmp_path):
    obs, spec = _observations(tmp_path, 230)
    base = ["embed", "--observations", str(obs), "--spec", str(spec), "--no-progress", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "f.parquet")]) == 0
    assert main([*base, "--out", str(tmp_path / "p"), "--parts", "--part-rows", "50"]) == 0
    a, b = read_table(tmp_path / "f.parquet"), Dataset(tmp_path / "p").table(0, 230)
    for x, y in zip(a.features, b.features, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.meta["obs_row"], b.meta["obs_row"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "p").glob("part-*")}
    manifest = json.loads((tmp_path / "p" / MANIFEST).read_text())
    (tmp_path / "p" / MANIFEST).unlink()
    (tmp_path / "p" / STATE).write_text(json.dumps({"fingerprint": manifest["fingerprint"]}))
    (tmp_path / "p" / "part-000000000100.parquet").unlink()
    assert main([*base, "--out", str(tmp_path / "p"), "--parts", "--part-rows", "50"]) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "p").glob("part-*")} == before


def _observations(folder, n):
    rows = ["obs_id,species,day,lat,lon,t,p"]
    for i in range(n):
        day = "" if i == 3 else f"2020-{1 + i % 12:02d}-{1 + i % 27:02d}"
        lat = "" if i == 5 else f"{36 + i / 100:.3f}"
        rows.append(f"id{i},sp{i % 3},{day},{lat},{-122 + i / 100:.3f},{10 + i},{i * 2}")
    (folder / "obs.csv").write_text("\n".join(rows) + "\n")
    (folder / "spec.yaml").write_text(
        "batch_size: 4\nid_column: obs_id\nmodalities:\n"
        "  date: {encoder: date, column: day, options: {year: true}}\n"
        "  loc: {encoder: rff_location, columns: [lat, lon], options: {n_features: 8}}\n"
        "  env: {encoder: env_mlp, columns: [t, p]}\n")
    return folder / "obs.csv", folder / "spec.yaml"
