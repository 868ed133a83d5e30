"""Training, run folders, resume, the Fuser API and the train/reconstruct commands."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from prom3e.api import Fuser
from prom3e.cli import main
from prom3e.errors import Prom3eError
from prom3e.train.loop import TrainConfig, train

FAST = dict(model="tiny", batch_size=64, precision="fp32", lr=3e-3, warmup_steps=5)


def weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "last" / "model.safetensors"))


def test_run_folder_contents_and_loss_decreases(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.json", "model.safetensors", "schema.json", "log.jsonl", "metrics.json", "last"} <= names
    schema = json.loads((tiny_run / "schema.json").read_text())
    assert [m["name"] for m in schema["modalities"]] == ["image", "sat", "loc", "env", "text", "sound"]
    log = [json.loads(line) for line in (tiny_run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and log[-1]["loss"] < log[0]["loss"]
    assert all(0 <= r["val_r1_mean"] <= 1 for r in log)


def test_training_is_deterministic_and_resume_continues_exactly(tmp_path, small_table):
    # two threads: rows are gathered with index_select (a fixed-order backward) on every path,
    # the 4-draw objective's included, so several threads still give bit-identical weights
    cfg = TrainConfig(epochs=3, seed=3, threads=2, **FAST)
    train(small_table, tmp_path / "a", cfg, progress=False)
    train(small_table, tmp_path / "b", cfg, progress=False)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # interrupted after 2 epochs, then resumed == 3 straight epochs
    train(small_table, tmp_path / "c", cfg, progress=False, stop_after=2)
    train(small_table, tmp_path / "c", cfg, resume=True, progress=False)
    wc = weights(tmp_path / "c")
    assert all(torch.allclose(wa[k], wc[k], atol=1e-6) for k in wa)
    log = (tmp_path / "c" / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in log] == [1, 2, 3]


def test_save_load_round_trip_gives_identical_outputs(tmp_path, small_table):
    from prom3e.train.loop import Trainer

    trainer = Trainer(small_table, TrainConfig(epochs=1, **FAST), tmp_path / "r", progress=False)
    trainer.fit()
    trainer.model.eval()
    fuser = Fuser.load(tmp_path / "r", which="last", precision="fp32")
    x = torch.from_numpy(small_table.padded()[:50])
    present = torch.from_numpy(small_table.present[:50])
    with torch.no_grad():
        want = trainer.model.encode(x, present).mu
    torch.testing.assert_close(fuser.encode(small_table.take(np.arange(50))).mu, want)


def test_fuser_api_batches_from_tables_numpy_and_torch(tiny_run, small_table):
    fuser = Fuser.load(tiny_run)
    part = small_table.take(np.arange(40))
    post = fuser.encode(part, visible=["image"])
    d = {m: np.where(part.present[:, i, None], part.features[i], np.nan)
         for i, m in enumerate(part.modalities)}
    post_dict = fuser.encode(d, visible=["image"])
    x, present = torch.from_numpy(part.padded()), torch.from_numpy(part.present)
    post_tuple = fuser.encode((x, present), visible=["image"])
    torch.testing.assert_close(post.mu, post_dict.mu)
    torch.testing.assert_close(post.mu, post_tuple.mu)
    rec = fuser.reconstruct(part, ["text", "sat"], visible=["image"])
    assert rec["text"].shape == (40, 16)
    torch.testing.assert_close(rec["text"].norm(dim=-1), torch.ones(40))
    s1 = fuser.reconstruct(part, ["text"], n_samples=5, seed=1, return_samples=True)
    s2 = fuser.reconstruct(part, ["text"], n_samples=5, seed=1)
    torch.testing.assert_close(s1["text"], s2["text"])
    assert s1["text:samples"].shape == (5, 40, 16)
    with_sigma = fuser.reconstruct(part, ["text"], visible=["image"], return_sigma=True)
    torch.testing.assert_close(with_sigma["sigma_l1"], post.sigma_l1)
    feats = fuser.features(part)
    assert feats["tokens"].shape == (40, (2 + 2) * 32)
    two = fuser.encode(part, visible=["image", "loc"])  # rows with loc get a second token
    both = part.present[:, part.index("loc")]
    assert (two.sigma_l1[torch.from_numpy(both)] != post.sigma_l1[torch.from_numpy(both)]).all()
    with pytest.raises(Prom3eError, match="unknown modality 'photo'"):
        fuser.encode(part, visible=["photo"])
    with pytest.raises(Prom3eError, match="'n_samples': must be ≥ 0"):
        fuser.reconstruct(part, ["text"], n_samples=-1)
    with pytest.raises(Prom3eError, match="modality 'text' has shape"):
        fuser.encode({"text": np.zeros((3, 5))})


def test_reconstruct_command_writes_means_samples_and_sigma(tiny_run, small_parquet, tmp_path):
    out = tmp_path / "rec.parquet"
    assert main(["reconstruct", "--model", str(tiny_run), "--data", str(small_parquet),
                 "--target", "text", "--visible", "image,loc", "--samples", "3",
                 "--out", str(out)]) == 0
    t = pq.read_table(out)
    assert {"species", "text", "text_samples", "sigma_l1"} <= set(t.column_names)
    assert t.num_rows == 800
    first = t.column("text_samples")[0].as_py()
    assert len(first) == 3 and len(first[0]) == 16
    sig = t.column("sigma_l1").to_numpy()
    assert np.isfinite(sig).all() and (sig > 0).all()


def _write(tmp_path, table, name="bad.parquet"):
    path = tmp_path / name
    pq.write_table(table, path)
    return path


def _cli_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_inputs_are_one_line_errors(tiny_run, small_parquet, tmp_path, capsys):
    good = pq.read_table(small_parquet)
    rec = ["reconstruct", "--model", str(tiny_run), "--target", "text", "--out", str(tmp_path / "o.parquet")]
    # wrong dims
    wrong = good.set_column(good.column_names.index("text"), "text",
                            pa.array([[0.1] * 8] * good.num_rows, type=pa.list_(pa.float32())))
    err = _cli_error(capsys, rec + ["--data", str(_write(tmp_path, wrong))])
    assert "column 'text' has dim 8, the model expects 16" in err
    # NaN
    vals = good.column("image").to_pylist()
    vals[7][3] = float("nan")
    nan = good.set_column(good.column_names.index("image"), "image", pa.array(vals, type=pa.list_(pa.float32())))
    err = _cli_error(capsys, ["train", "--data", str(_write(tmp_path, nan)), "--out", str(tmp_path / "r")])
    assert "column 'image' row 7 contains NaN" in err
    # unknown modality
    extra = good.append_column("photo", pa.array([[1.0, 0.0]] * good.num_rows, type=pa.list_(pa.float32())))
    err = _cli_error(capsys, rec + ["--data", str(_write(tmp_path, extra))])
    assert "unknown modality 'photo'" in err
    # a row with nothing present
    cols = {n: (pa.array([None] + good.column(n).to_pylist()[1:], type=good.schema.field(n).type)
                if pa.types.is_list(good.schema.field(n).type) else good.column(n)) for n in good.column_names}
    err = _cli_error(capsys, rec + ["--data", str(_write(tmp_path, pa.table(cols)))])
    assert "row 0 has no modality present" in err
    # empty table
    err = _cli_error(capsys, rec + ["--data", str(_write(tmp_path, good.slice(0, 0)))])
    assert "the table is empty" in err
    # unknown target
    err = _cli_error(capsys, rec[:4] + ["photo", "--out", "x.parquet", "--data", str(small_parquet)])
    assert "unknown modality 'photo'" in err


def test_damaged_checkpoints_are_refused(tiny_run, small_parquet, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    argv = ["reconstruct", "--model", str(run), "--data", str(small_parquet), "--target", "text",
            "--out", str(tmp_path / "o.parquet")]
    blob = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    assert "corrupt or truncated checkpoint" in _cli_error(capsys, argv)
    (run / "model.safetensors").write_bytes(blob)
    schema = json.loads((run / "schema.json").read_text())
    schema["format_version"] = 99
    (run / "schema.json").write_text(json.dumps(schema))
    assert "checkpoint format 99 is not supported" in _cli_error(capsys, argv)
    (run / "schema.json").unlink()
    assert "schema.json: missing" in _cli_error(capsys, argv)
    assert "no such run folder" in _cli_error(capsys, argv[:2] + [str(tmp_path / "nope")] + argv[3:])


def test_train_options_are_checked(small_parquet, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nbogus: 3\n")
    err = _cli_error(capsys, ["train", "--data", str(small_parquet), "--out", str(tmp_path / "r"),
                              "--config", str(cfg)])
    assert "unknown training option(s): bogus" in err
    err = _cli_error(capsys, ["train", "--data", str(small_parquet), "--out", str(tmp_path / "r"),
                              "--label", "nope"])
    assert "no label column 'nope'" in err


def test_label_aware_training_gives_the_loss_class_codes(small_table, tmp_path, monkeypatch):
    """With --label, every step's loss gets the rows' class ids; an unlabelled row gets −1
    (no class: never anybody's positive), not a class of its own."""
    from prom3e.models.prom3e import Prom3e

    seen: list[torch.Tensor | None] = []
    forward = Prom3e.forward

    def spy(self, x, visible, targets, labels=None, *args, **kwargs):
        seen.append(None if labels is None else labels.detach().cpu().clone())
        return forward(self, x, visible, targets, labels, *args, **kwargs)

    monkeypatch.setattr(Prom3e, "forward", spy)
    t = small_table.take(np.arange(len(small_table)))
    species = np.asarray(t.label("species"), dtype=object).copy()
    species[::10] = None
    t.meta["species"] = species
    s = train(t, tmp_path / "l", TrainConfig(epochs=1, label_column="species", **FAST), progress=False)
    assert s["epochs"] == 1 and seen and all(v is not None for v in seen)
    labels = torch.cat(seen)  # type: ignore[arg-type]
    assert 0.5 * s["train_rows"] <= len(labels) <= s["train_rows"]
    assert 0.05 < float((labels == -1).double().mean()) < 0.15  # the 10 % unlabelled rows
    codes = labels[labels >= 0]
    assert len(codes.unique()) == len(set(species[species != None])) and int(codes.max()) < 20  # noqa: E711


def test_fuser_chains_stage1_heads_on_raw_features(tmp_path, small_table):
    from prom3e.align import AlignConfig, fit_aligner

    rng = np.random.default_rng(0)
    raw = small_table.select(["image", "loc", "text"])
    dims = (24, 8, 12)
    raw.features = [f @ rng.normal(size=(16, d)).astype(np.float32) for f, d in zip(raw.features, dims, strict=True)]
    raw.features = [np.where(raw.present[:, i, None], f, 0) for i, f in enumerate(raw.features)]
    aligner = fit_aligner(raw, "image", config=AlignConfig(dim=16, epochs=2, hidden=32), progress=False)
    aligner.save(tmp_path / "align")
    aligned = aligner.transform(raw)
    train(aligned, tmp_path / "run", TrainConfig(epochs=1, **FAST), progress=False)
    plain = Fuser.load(tmp_path / "run", precision="fp32")
    chained = Fuser.load(tmp_path / "run", precision="fp32", aligner=tmp_path / "align")
    torch.testing.assert_close(chained.encode(raw).mu, plain.encode(aligned).mu)
    d = {m: np.where(raw.present[:, i, None], raw.features[i], np.nan) for i, m in enumerate(raw.modalities)}
    torch.testing.assert_close(chained.encode(d).mu, plain.encode(aligned).mu)
    other = small_table.select(["image", "loc", "text"]).take(np.arange(200))
    other.features = [f[:, :8] for f in other.features]  # an 8-d model: the 16-d heads do not fit
    train(other, tmp_path / "other", TrainConfig(epochs=1, **FAST), progress=False)
    with pytest.raises(Prom3eError, match="do not fit the model"):
        Fuser.load(tmp_path / "other", aligner=tmp_path / "align")


def test_split_column_kl_warmup_and_sigma_logging(small_table, tmp_path):
    from prom3e.data.table import ModalTable

    part = np.where(np.arange(len(small_table)) % 5 == 0, "val", "train").astype(object)
    part[np.arange(len(small_table)) % 7 == 0] = "test"
    t = ModalTable(small_table.modalities, small_table.features, small_table.present,
                   {**small_table.meta, "split": part}, "<t>")
    cfg = TrainConfig(epochs=2, split_column="split", kl_warmup_epochs=2, **FAST)
    s = train(t, tmp_path / "r", cfg, progress=False)
    assert s["train_rows"] == int((part == "train").sum()) and s["val_rows"] == int((part == "val").sum())
    log = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert all(0 <= r["logvar_clip_share"] <= 1 and r["sigma_l1"] > 0 for r in log)
    with pytest.raises(Prom3eError, match="split column 'species'"):
        train(t, tmp_path / "x", TrainConfig(epochs=1, split_column="species", **FAST), progress=False)


def test_split_column_needs_a_table_in_memory():
    """A streamed source splits by val_fraction: a split column there is refused, not ignored."""
    from types import SimpleNamespace

    from prom3e.errors import Prom3eError
    from prom3e.train.loop import Trainer

    with pytest.raises(Prom3eError, match="split_column 'split' needs a table in memory"):
        Trainer(SimpleNamespace(source="parts/"), TrainConfig(split_column="split", **FAST))
