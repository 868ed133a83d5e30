"""Output a person can read (issue 15): --help shows every default, one --quiet switch,
progress bars only on a terminal (per-epoch lines otherwise), paths without '//', faiss's
warning turned into one line of advice."""

from __future__ import annotations

import argparse
import io
import re

import numpy as np
import pytest

from prom3e.cli import build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out: dict[str, argparse.ArgumentParser] = {}
    for name, p in sub.choices.items():
        if p not in out.values():
            out[name] = p
    return out


def test_help_shows_every_default():
    missing = []
    for name, p in _subparsers().items():
        text = p.format_help()
        fmt = p._get_formatter()
        for a in p._actions:
            if (a.help == argparse.SUPPRESS or not a.option_strings or a.required or a.nargs == 0
                    or isinstance(a, argparse._HelpAction)):
                continue
            shown = fmt._get_help_string(a) or ""
            if "default" not in shown and "required" not in shown:
                missing.append(f"{name} {a.option_strings[-1]}")
        assert "%(default)" not in text and "(default: None)" not in text, name
    assert not missing, f"options whose --help gives no default: {missing}"


def test_help_defaults_match_the_code():
    from prom3e.commands.train import SHOWN_DEFAULTS
    from prom3e.train.loop import TrainConfig

    cfg = TrainConfig()
    assert {k: getattr(cfg, k) for k in SHOWN_DEFAULTS} == SHOWN_DEFAULTS
    text = _subparsers()["train"].format_help()
    assert re.search(r"--epochs EPOCHS\s+training epochs \(default: 30\)", text)
    synth = " ".join(_subparsers()["synth"].format_help().split())
    assert "(default: 20000)" in synth and "(default: image,sat,loc,env,text,sound)" in synth
    bench = _subparsers()["benchmark"].parse_args(["--data", "d", "--label", "l", "--out", "o"])
    assert bench.seeds == [0] and bench.etas == [0.7, 0.9]  # list defaults given as text still parse


def test_quiet_everywhere_and_no_progress_a_hidden_alias(capsys):
    subs = _subparsers()
    progress = ["demo", "train", "reconstruct", "evaluate", "index", "embed", "align", "synth", "benchmark"]
    for name in progress:
        assert "--quiet" in subs[name].format_help(), name
    for name in ("embed", "align", "train", "evaluate", "reconstruct", "demo", "index", "synth"):
        assert "--no-progress" not in subs[name].format_help()
    args = build_parser().parse_args(["align", "--data", "d", "--anchor", "a", "--out", "o", "--model-out", "m",
                                      "--no-progress"])
    assert args.quiet is True
    assert "--no-progress is deprecated; use --quiet" in capsys.readouterr().err
    args = build_parser().parse_args(["evaluate", "--model", "m", "--data", "d", "--out", "o", "--no-progress"])
    assert args.quiet is True


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal():
    from prom3e.runtime import progress_bar

    pipe, tty = io.StringIO(), _Terminal()
    assert list(progress_bar(range(3), file=pipe, desc="x")) == [0, 1, 2]
    assert pipe.getvalue() == ""  # a log or a pipe: no redraws
    assert list(progress_bar(range(3), file=tty, desc="x")) == [0, 1, 2]
    assert "3/3" in tty.getvalue()
    quiet = _Terminal()
    list(progress_bar(range(3), show=False, file=quiet))
    assert quiet.getvalue() == ""


def test_train_log_has_epoch_lines_but_no_redraws(small_parquet, tmp_path, capfd):
    base = ["train", "--data", str(small_parquet), "--model", "tiny", "--epochs", "2", "--batch-size", "64",
            "--precision", "fp32", "--threads", "1"]
    assert main([*base, "--out", str(tmp_path / "run") + "/"]) == 0
    out, err = capfd.readouterr()
    assert "\r" not in out + err  # captured output is not a terminal
    assert re.search(r"^epoch 1/2 +loss", out, flags=re.M) and re.search(r"^epoch 2/2 +loss", out, flags=re.M)
    assert "//" not in out and f"{tmp_path / 'run' / 'model.safetensors'}" in out
    assert main([*base, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert "epoch 1/2" not in out and out.startswith("done: best validation R@1")


def test_evaluate_prints_paths_without_double_slash(tiny_run, small_parquet, tmp_path, capfd):
    assert main(["evaluate", "--model", str(tiny_run), "--data", str(small_parquet), "--label", "species",
                 "--out", str(tmp_path / "eval") + "/", "--tasks", "retrieval", "--no-plots", "--threads", "1",
                 "--max-visible", "1"]) == 0
    out, err = capfd.readouterr()
    assert "//" not in out and f"wrote {tmp_path / 'eval' / 'metrics.json'}" in out
    assert "\r" not in out + err


def test_faiss_few_points_warning_becomes_one_line_of_advice(tmp_path, capfd):
    pytest.importorskip("faiss")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prom3e.index.gallery import suggested_lists

    vec = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    pq.write_table(pa.table({"v": pa.array(list(vec), pa.list_(pa.float32()))}), tmp_path / "g.parquet")
    assert main(["index", "build", "--data", str(tmp_path / "g.parquet"), "--column", "v", "--spec", "IVF64,Flat",
                 "--out", str(tmp_path / "g.idx")]) == 0
    out, err = capfd.readouterr()
    assert "WARNING clustering" not in out + err  # faiss's own lines (from C++) are replaced
    advice = [line for line in err.splitlines() if line.startswith("prom3e index build: warning:")]
    assert len(advice) == 1 and "IVF8,Flat" in advice[0] and "exact" in advice[0], err
    assert suggested_lists(500) == 8 and suggested_lists(11200) == 256 and suggested_lists(10) == 1
    # a spec that fits the gallery: nothing to say
    assert main(["index", "build", "--data", str(tmp_path / "g.parquet"), "--column", "v", "--spec", "IVF8,Flat",
                 "--out", str(tmp_path / "h.idx")]) == 0
    out, err = capfd.readouterr()
    assert "warning" not in err.lower()
    # more lists than vectors: refused with the advice, nothing written
    assert main(["index", "build", "--data", str(tmp_path / "g.parquet"), "--column", "v", "--spec", "IVF1024,Flat",
                 "--out", str(tmp_path / "k.idx")]) == 2
    out, err = capfd.readouterr()
    assert "cannot train 'IVF1024,Flat'" in err and "IVF8,Flat" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "k.idx").exists()
