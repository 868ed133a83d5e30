"""Issue 10, items 6–10: no lost data (atomic checkpoints, refuse-to-overwrite, output checks
before the work, resume with other settings) and hostile or damaged run folders."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from cli_helpers import one_line_error

from prom3e import io
from prom3e.api import Fuser
from prom3e.cli import main
from prom3e.data.table import write_parquet
from prom3e.errors import Prom3eError
from prom3e.train.loop import TrainConfig, train

FAST = dict(model="tiny", batch_size=64, precision="fp32", lr=3e-3, warmup_steps=5)


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- item 6: checkpoints ---------------------------------------------------------------------

def test_checkpoint_is_one_committed_directory_with_a_manifest(tmp_path, small_table):
    run = tmp_path / "run"
    train(small_table, run, TrainConfig(epochs=2, **FAST), progress=False)
    assert (run / "last").is_symlink() and (run / "last" / "state.json").exists()
    state = json.loads((run / "last" / "state.json").read_text())
    assert state["epoch"] == 2 and set(state["manifest"]) == {"model.safetensors", "optimizer.safetensors"}
    hidden = [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert len(hidden) == 1 and os.readlink(run / "last") == hidden[0]  # the old checkpoint is gone
    # a damaged file is caught by the manifest on resume
    blob = (run / "last" / "optimizer.safetensors").read_bytes()
    (run / "last" / "optimizer.safetensors").write_bytes(blob[:-8] + b"\0" * 8)
    with pytest.raises(Prom3eError, match="does not match the checkpoint's manifest"):
        train(small_table, run, TrainConfig(epochs=3, **FAST), resume=True, progress=False)


def test_a_killed_run_is_repaired_on_resume(tmp_path, small_table):
    """What a kill leaves: temporaries, a log line past the checkpoint, a stale best file."""
    cfg = TrainConfig(epochs=3, **FAST)
    straight = tmp_path / "straight"
    train(small_table, straight, cfg, progress=False)
    run = tmp_path / "run"
    train(small_table, run, cfg, progress=False, stop_after=2)
    (run / ".model.safetensors.abc.prom3e-tmp").write_bytes(b"x" * 1000)  # a half-written file
    (run / ".last-xyz.prom3e-tmp").mkdir()  # a half-written checkpoint
    (run / ".last-xyz.prom3e-tmp" / "model.safetensors").write_bytes(b"x")
    (run / ".last-0123456789ab").mkdir()  # a complete checkpoint the switch never reached
    log = (run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text("\n".join([*log, log[-1].replace('"epoch": 2', '"epoch": 3')]) + "\n")
    state = json.loads((run / "last" / "state.json").read_text())
    assert state["best_epoch"] in (1, 2)
    train(small_table, run, cfg, resume=True, progress=False)
    assert not [p for p in run.iterdir() if p.name.endswith(io.TMP_SUFFIX) or p.name == ".last-0123456789ab"]
    epochs = [json.loads(r)["epoch"] for r in (run / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert snapshot(run / "last")["model.safetensors"] == snapshot(straight / "last")["model.safetensors"]


def test_best_weights_written_after_a_kill_between_checkpoint_and_copy(tmp_path, small_table):
    from safetensors import safe_open

    cfg = TrainConfig(epochs=2, **FAST)
    run = tmp_path / "run"
    train(small_table, run, cfg, progress=False, stop_after=1)
    (run / "model.safetensors").unlink()  # killed after last/ was committed, before the copy
    train(small_table, run, cfg, resume=True, progress=False)
    best_epoch = json.loads((run / "last" / "state.json").read_text())["best_epoch"]
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        assert int(f.metadata()["epoch"]) == best_epoch


# --- item 7: overwrites ------------------------------------------------------------------------

def test_train_over_an_existing_run_is_refused_unless_overwrite(tmp_path, small_parquet, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", str(small_parquet), "--out", str(run), "--model", "tiny", "--epochs", "1",
            "--batch-size", "64", "--quiet"]
    assert main(argv) == 0
    before = snapshot(run)
    err = one_line_error(capsys, argv)
    assert "holds a prom3e run; pass --resume to continue it or --overwrite" in err and snapshot(run) == before
    assert main([*argv, "--overwrite", "--seed", "1"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 1
    (run / "notes.txt").write_text("mine")
    assert main([*argv, "--overwrite"]) == 0 and (run / "notes.txt").read_text() == "mine"  # only run files


def test_outputs_never_replace_inputs_or_results(tiny_run, small_parquet, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = snapshot(run)
    err = one_line_error(capsys, ["evaluate", "--model", str(run), "--data", str(small_parquet), "--out", str(run)])
    assert "is the input" in err and snapshot(run) == before
    data = tmp_path / "data.parquet"
    shutil.copy(small_parquet, data)
    blob = data.read_bytes()
    for argv in (["reconstruct", "--model", str(run), "--data", str(data), "--target", "text", "--out", str(data)],
                 ["reconstruct", "--model", str(run), "--data", str(data), "--target", "text", "--out", str(data),
                  "--overwrite"],
                 ["reconstruct", "--model", str(run), "--data", str(data), "--target", "text", "--out",
                  str(run / "model.safetensors"), "--overwrite"],
                 ["index", "build", "--data", str(data), "--column", "text", "--out", str(data)],
                 ["align", "--data", str(data), "--anchor", "image", "--out", str(data), "--model-out",
                  str(tmp_path / "A")],
                 ["synth", "--out", str(data), "--n", "50"]):
        one_line_error(capsys, argv)
        assert data.read_bytes() == blob and snapshot(run) == before, argv
    obs = tmp_path / "obs.csv"
    obs.write_text("day\n2020-01-01\n2021-06-30\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("modalities:\n  date: {encoder: date, column: day}\n")
    err = one_line_error(capsys, ["embed", "--observations", str(obs), "--spec", str(spec), "--out", str(obs)])
    assert "also an input" in err and obs.read_text().startswith("day\n2020")
    out = tmp_path / "e"
    assert main(["evaluate", "--model", str(run), "--data", str(small_parquet), "--out", str(out), "--tasks",
                 "retrieval", "--visible", "image", "--targets", "text", "--no-plots", "--quiet"]) == 0
    first = snapshot(out)
    err = one_line_error(capsys, ["evaluate", "--model", str(run), "--data", str(small_parquet), "--out", str(out)])
    assert "already holds" in err and "--overwrite" in err and snapshot(out) == first


# --- item 8: the output location is checked before the work -----------------------------------

def test_bad_output_locations_fail_before_the_work(tiny_run, small_parquet, tmp_path, capsys, monkeypatch):
    import prom3e.tasks.comparison.benchmark as bench
    import prom3e.tasks.evaluate as ev

    def never(*a, **k):
        raise AssertionError("the work started")

    monkeypatch.setattr(ev, "evaluate", never)
    monkeypatch.setattr(bench, "run_benchmark", never)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    a_dir = tmp_path / "folder"
    a_dir.mkdir()
    cases = [
        (["evaluate", "--model", str(tiny_run), "--data", str(small_parquet), "--out", str(a_file)], "is a file"),
        (["evaluate", "--model", str(tiny_run), "--data", str(small_parquet), "--out", str(a_file / "sub")],
         "is a file, not a folder"),
        (["benchmark", "--data", str(small_parquet), "--label", "species", "--out", str(a_file)], "is a file"),
        (["train", "--data", str(small_parquet), "--out", str(a_file)], "is a file"),
        (["reconstruct", "--model", str(tiny_run), "--data", str(small_parquet), "--target", "text", "--out",
          str(a_dir)], "is a folder"),
        (["synth", "--out", str(a_dir)], "is a folder"),
        (["index", "build", "--data", str(small_parquet), "--column", "text", "--out", str(a_file / "i")],
         "is a file, not a folder"),
        (["demo", "--out", str(a_file)], "is a file"),
        (["reconstruct", "--model", str(tiny_run), "--data", str(small_parquet), "--target", "text", "--out",
          "/proc/prom3e-test/x.parquet"], "cannot write"),
    ]
    for argv, needle in cases:
        assert needle in one_line_error(capsys, argv), argv
    assert a_file.read_text() == "x" and not list(a_dir.iterdir())


# --- item 9: resume with other settings ------------------------------------------------------------

def test_resume_with_other_settings_is_refused_naming_them(tmp_path, small_parquet, small_table, capsys):
    run = tmp_path / "run"
    base = ["train", "--data", str(small_parquet), "--out", str(run), "--model", "tiny", "--batch-size", "64",
            "--quiet"]
    assert main([*base, "--epochs", "1"]) == 0
    for extra, needle in ((["--seed", "3"], "seed 0 → 3"), (["--lr", "0.01"], "lr 0.001 → 0.01"),
                          (["--batch-size", "32"], "batch_size 64 → 32")):
        err = one_line_error(capsys, [*base, "--resume", "--epochs", "2", *extra])
        assert "--resume with different settings" in err and needle in err and "--allow-changes" in err
    smaller = tmp_path / "smaller.parquet"
    write_parquet(small_table.take(np.arange(700)), smaller)
    err = one_line_error(capsys, ["train", "--data", str(smaller), "--out", str(run), "--resume", "--epochs", "2",
                                  "--quiet"])
    assert "the table (800 rows → 700)" in err
    assert main([*base, "--resume", "--epochs", "2"]) == 0  # more epochs: fine
    assert main([*base, "--resume", "--epochs", "3", "--seed", "3", "--allow-changes"]) == 0
    epochs = [json.loads(r)["epoch"] for r in (run / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    err = one_line_error(capsys, ["train", "--data", str(small_parquet), "--out", str(tmp_path / "none"),
                                  "--resume"])
    assert "nothing to resume" in err


# --- item 10: hostile or damaged run folders ----------------------------------------------------

def test_hostile_config_is_refused_before_allocating(tiny_run, tmp_path):
    import time

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = json.loads((run / "config.json").read_text())
    for change, needle in (({"embed_dim": 100000, "mlp_dim": 400000}, "has shape"),
                           ({"heads": 3}, "must divide embed_dim"), ({"posterior_head": "x"}, "posterior_head"),
                           ({"depth": -1}, "depth: must be ≥ 1"), ({"bogus": 1}, r"unknown model option\(s\): bogus"),
                           ({"dims": "16"}, "dims")):
        (run / "config.json").write_text(json.dumps({**cfg, "model": {**cfg["model"], **change}}))
        t0 = time.perf_counter()
        with pytest.raises(Prom3eError, match=needle):
            Fuser.load(run)
        assert time.perf_counter() - t0 < 5  # nothing big was allocated (120 GB before the fix)
    (run / "config.json").write_text(json.dumps(cfg))


def test_weights_with_another_dtype_are_refused(tiny_run, tmp_path):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    state = load_file(str(run / "model.safetensors"))
    save_file({k: (v * 1000).long() for k, v in state.items()}, str(run / "model.safetensors"))
    with pytest.raises(Prom3eError, match="is I64, the model wants torch.float32"):
        Fuser.load(run)


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(tmp_path, small_table):
    cfg = TrainConfig(epochs=2, **FAST)
    train(small_table, tmp_path / "straight", cfg, progress=False)
    run = tmp_path / "run"
    train(small_table, run, cfg, progress=False, stop_after=1)
    for p in list(run.iterdir()):  # what a kill in epoch 1 leaves: the configs only
        if p.name not in ("config.json", "schema.json"):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    with pytest.raises(Prom3eError, match="holds a prom3e run"):
        train(small_table, run, cfg, progress=False)
    train(small_table, run, cfg, resume=True, progress=False)
    assert [json.loads(r)["epoch"] for r in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert snapshot(run / "last")["model.safetensors"] == snapshot(tmp_path / "straight" / "last")["model.safetensors"]


def test_replace_dir_swaps_a_folder_in_or_leaves_it_as_it_was(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def fails(folder):
        (folder / "half.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.replace_dir(out, fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary folder left
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    io.replace_dir(out, lambda folder: (folder / "new.txt").write_text("new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # the old folder removed
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
