"""Issue 10, items 1–4: no silent wrong result (NaN scores, huge values, bad sizes, empty reports)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from cli_helpers import one_line_error

from prom3e.api import Fuser
from prom3e.cli import main
from prom3e.data.table import ModalTable, read_table, write_parquet
from prom3e.errors import Prom3eError
from prom3e.tasks.evaluate import evaluate
from prom3e.tasks.oracle import OracleFuser


def with_value(path, tmp_path, column: str, row: int, value: float, name: str = "huge.parquet"):
    t = pq.read_table(path)
    vals = t.column(column).to_pylist()
    vals[row] = [value] + vals[row][1:]
    t = t.set_column(t.column_names.index(column), column, pa.array(vals, type=pa.list_(pa.float32())))
    out = tmp_path / name
    pq.write_table(t, out)
    return out


# --- item 1: NaN is a miss, and evaluate counts it ------------------------------------------

class NaNFuser(OracleFuser):
    """The oracle, but every other reconstruction is NaN."""

    def reconstruct(self, batch, targets=None, visible=None, n_samples=0, seed=0, batch_size=1024, **kw):
        out = super().reconstruct(batch, targets, visible, n_samples, seed, batch_size)
        for v in out.values():
            v[::2] = float("nan")
        return out


def test_evaluate_scores_nan_reconstructions_as_misses_and_counts_them(small_table):
    m = evaluate(NaNFuser(small_table.modalities, small_table.dims), small_table, label="species",
                 tasks=["retrieval"], visible=[["image"]], targets=["text"], threads=1)
    pair = m["retrieval"]["pairs"][0]
    assert pair["n_nonfinite"] == (pair["n_query"] + 1) // 2
    assert pair["r1_reconstruction"] <= 0.5 + 1e-9  # the oracle scores 1 on the finite half only
    assert m["retrieval"]["summary"]["n_nonfinite"] == pair["n_nonfinite"]


# --- item 2: huge finite values ----------------------------------------------------------------

def test_huge_values_are_refused_naming_column_and_row(small_parquet, tiny_run, tmp_path, capsys):
    huge = with_value(small_parquet, tmp_path, "image", 5, 1e30)
    with pytest.raises(Prom3eError, match="column 'image' row 5 has values too large"):
        read_table(huge)
    out = tmp_path / "rec.parquet"
    err = one_line_error(capsys, ["reconstruct", "--model", str(tiny_run), "--data", str(huge),
                                  "--target", "text", "--out", str(out)])
    assert "column 'image' row 5" in err and not out.exists()
    err = one_line_error(capsys, ["index", "build", "--data", str(huge), "--column", "image",
                                  "--out", str(tmp_path / "i.safetensors")])
    assert "column 'image' row 5" in err and not (tmp_path / "i.safetensors").exists()
    err = one_line_error(capsys, ["align", "--data", str(huge), "--anchor", "image", "--out",
                                  str(tmp_path / "a.parquet"), "--model-out", str(tmp_path / "A")])
    assert "row 5" in err


def test_huge_values_in_memory_are_refused_by_the_api(tiny_run, small_table):
    fuser = Fuser.load(tiny_run)
    part = small_table.take(np.arange(20))
    part.features = [f.copy() for f in part.features]
    row = int(np.flatnonzero(part.present[:, 0])[3])
    part.features[0][row, 0] = 1e30
    with pytest.raises(Prom3eError, match=f"column 'image' row {row} has values too large"):
        fuser.encode(part)
    x, present = torch.from_numpy(part.padded()), torch.from_numpy(part.present)
    with pytest.raises(Prom3eError, match="too large"):
        fuser.encode((x, present))
    with pytest.raises(Prom3eError, match="too large"):
        fuser.encode({"image": np.where(part.present[:, :1], part.features[0], np.nan)})
    from prom3e.align import AlignConfig, fit_aligner

    with pytest.raises(Prom3eError, match="too large"):
        fit_aligner(part, "image", config=AlignConfig(epochs=1, hidden=8), progress=False)


def test_gallery_index_normalises_huge_vectors_safely():
    from prom3e.index import GalleryIndex

    rng = np.random.default_rng(0)
    g = rng.normal(size=(50, 8)).astype(np.float32)
    g[7] *= 1e30 / np.abs(g[7]).max()  # finite, but its squared norm overflows float32
    index = GalleryIndex.build(g)
    scores, ids = index.search(g[7:8] / 1e25, k=1)
    assert ids[0, 0] == 7 and torch.isfinite(scores).all()


# --- item 3: sizes and values of every option ------------------------------------------------

@pytest.mark.parametrize("extra, needle", [
    (["--batch-size", "-1"], "argument --batch-size: must be ≥ 1"),
    (["--batch-size", "0"], "argument --batch-size: must be ≥ 1"),
    (["--samples", "-2"], "argument --samples: must be ≥ 0"),
    (["--samples", "1.5"], "argument --samples: expected an integer"),
    (["--visible", "text,image"], "--target text is also in --visible"),
])
def test_reconstruct_options(extra, needle, tiny_run, small_parquet, tmp_path, capsys):
    out = tmp_path / "o.parquet"
    err = one_line_error(capsys, ["reconstruct", "--model", str(tiny_run), "--data", str(small_parquet),
                                  "--target", "text", "--out", str(out), *extra])
    assert needle in err and not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "--max-test", "-1"], "argument --max-test: must be ≥ 0"),
    (["evaluate", "--max-fit", "-5"], "argument --max-fit: must be ≥ 0"),
    (["evaluate", "--fit-frac", "1.5"], "argument --fit-frac: must be a finite number in (0, 1)"),
    (["evaluate", "--fit-frac", "nan"], "argument --fit-frac: must be a finite number"),
    (["benchmark", "--label", "species", "--max-rows", "-5"], "argument --max-rows: must be ≥ 4"),
    (["benchmark", "--label", "species", "--seeds", "1.7"], "argument --seeds: expected an integer, got '1.7'"),
    (["benchmark", "--label", "species", "--etas", "0.5,1.2"], "argument --etas: must be a finite number"),
    (["train", "--kl-weight", "-1"], "argument --kl-weight: must be a finite number in [0, ∞)"),
    (["train", "--epochs", "1.5"], "argument --epochs: expected an integer, got '1.5'"),
    (["synth", "--missing-rate", "1"], "argument --missing-rate"),
])
def test_cli_sizes_and_values_are_checked(argv, needle, tiny_run, small_parquet, tmp_path, capsys):
    out = tmp_path / "out"
    args = [argv[0], "--data", str(small_parquet), "--out", str(out), *argv[1:]]
    if argv[0] == "evaluate":
        args += ["--model", str(tiny_run)]
    if argv[0] == "synth":
        args = ["synth", "--out", str(out), *argv[1:]]
    err = one_line_error(capsys, args)
    assert needle in err and not out.exists()


def test_config_files_are_validated_not_rounded(small_parquet, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    for text, needle in [("epochs: 1.5\n", "training option 'epochs': input should be a valid integer, got 1.5"),
                         ("kl_weight: -1\n", "training option 'kl_weight': must be ≥ 0, got -1"),
                         ("lr: .nan\n", "training option 'lr': input should be a finite number"),
                         ("betas: [0.9]\n", "training option 'betas'"),
                         ("epochs: true\n", "training option 'epochs': input should be a valid integer"),
                         ("model_overrides: {depth: 2, bogus: 1}\n", "unknown model option(s) bogus"),
                         ("model_overrides: {posterior_head: sideways}\n", "posterior_head"),
                         ("model_overrides: {heads: 3}\n", "must divide embed_dim"),
                         ("- a list\n", "expected a mapping")]:
        cfg.write_text(text)
        err = one_line_error(capsys, ["train", "--data", str(small_parquet), "--out", str(tmp_path / "r"),
                                      "--config", str(cfg)])
        assert needle in err, (text, err)
        assert not (tmp_path / "r").exists()


def test_python_api_configs_are_validated():
    from prom3e.align import AlignConfig
    from prom3e.methods import FitConfig
    from prom3e.models.prom3e import Prom3eConfig
    from prom3e.tasks.comparison.benchmark import BenchConfig
    from prom3e.train.loop import TrainConfig

    cases = [(lambda: TrainConfig(epochs=1.5), "'epochs'"), (lambda: TrainConfig(kl_weight=-0.1), "'kl_weight'"),
             (lambda: TrainConfig(model_overrides={"posterior_head": "x"}), "posterior_head"),
             (lambda: TrainConfig(model_overrides={"nope": 1}), "unknown model option"),
             (lambda: TrainConfig.from_dict({"epochz": 3}), "unknown training option(s): epochz"),
             (lambda: FitConfig(batch_size=0), "'batch_size'"), (lambda: BenchConfig(seeds=[1.7]), "'seeds'"),
             (lambda: BenchConfig(fit={"epochs": 0}), "fit.epochs"),
             (lambda: Prom3eConfig(modalities=["a"], dims=[4], posterior_head="x"), "'posterior_head'"),
             (lambda: AlignConfig(val_frac=2.0), "'val_frac'"), (lambda: AlignConfig(head="cnn"), "'head'")]
    for make, needle in cases:
        with pytest.raises(Prom3eError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            make()
    cfg = TrainConfig(epochs=2)
    cfg.epochs = 0  # mutated after construction: checked again where it is used
    with pytest.raises(Prom3eError, match="'epochs': must be ≥ 1"):
        cfg.validate()
    assert TrainConfig(betas=[0.8, 0.9]).betas == (0.8, 0.9) and TrainConfig(lr=1).lr == 1.0


def test_fuser_call_arguments_are_validated(tiny_run, small_table):
    fuser = Fuser.load(tiny_run)
    part = small_table.take(np.arange(10))
    for call, needle in [(lambda: fuser.reconstruct(part, ["text"], batch_size=-1), "'batch_size': must be ≥ 1"),
                         (lambda: fuser.reconstruct(part, ["text"], batch_size=0), "'batch_size': must be ≥ 1"),
                         (lambda: fuser.reconstruct(part, ["text"], n_samples=1.5), "'n_samples'"),
                         (lambda: fuser.reconstruct(part, "text"), "'targets'"),
                         (lambda: fuser.encode(part, batch_size=2.0), "'batch_size'"),
                         (lambda: Fuser.load(tiny_run, which="first"), "'which'")]:
        with pytest.raises(Prom3eError, match=needle):
            call()


def test_yaml_config_seed_and_device_are_not_overridden_by_flag_defaults(small_parquet, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 5\ndevice: cpu\nepochs: 1\nmodel: tiny\nbatch_size: 64\nlr: 1e-3\n")
    assert main(["train", "--data", str(small_parquet), "--out", str(tmp_path / "r"), "--config", str(cfg),
                 "--quiet"]) == 0
    train = json.loads((tmp_path / "r" / "config.json").read_text())["train"]
    assert (train["seed"], train["device"], train["lr"]) == (5, "cpu", 1e-3)
    assert main(["train", "--data", str(small_parquet), "--out", str(tmp_path / "r2"), "--config", str(cfg),
                 "--seed", "7", "--quiet"]) == 0  # a flag given wins
    assert json.loads((tmp_path / "r2" / "config.json").read_text())["train"]["seed"] == 7


# --- item 4: reports built on nothing ------------------------------------------------------------

def test_evaluate_refuses_to_report_on_nothing(tiny_run, small_table, tmp_path, capsys):
    two = tmp_path / "two.parquet"
    write_parquet(small_table.take(np.arange(2)), two)
    err = one_line_error(capsys, ["evaluate", "--model", str(tiny_run), "--data", str(two), "--out",
                                  str(tmp_path / "e1"), "--label", "species"])
    assert "an evaluation needs both" in err and not (tmp_path / "e1").exists()
    data = tmp_path / "t.parquet"
    write_parquet(small_table, data)
    err = one_line_error(capsys, ["evaluate", "--model", str(tiny_run), "--data", str(data), "--out",
                                  str(tmp_path / "e2"), "--visible", "image", "--targets", "image",
                                  "--tasks", "retrieval"])
    assert "nothing to retrieve" in err


def test_claims_without_data_say_so():
    from prom3e.commands.evaluate import headline
    from prom3e.tasks.claims import claims, worded
    from prom3e.viz.report import render

    m = {"settings": {"n_test": 400}, "retrieval": {"pairs": [], "summary": {}}}
    c = claims(m)["inversion_beats_cross_r1"]
    assert c["holds"] is None and c["n"] == 0 and "n = 0" in c["reason"]
    few = claims({"settings": {"n_test": 5}, "retrieval": {"pairs": [
        {"r1_cross": 0.1, "r1_inversion": 0.2}]}})["inversion_beats_cross_r1"]
    assert few["holds"] is None and "5 test rows" in few["reason"]
    lines = headline({"claims": {"inversion_beats_cross_r1": c}})
    assert lines == ["claim inversion_beats_cross_r1: not enough data (n = 0: no case to compare)"]
    assert "does not hold" not in " ".join(lines)
    settings = {"n_rows": 10, "n_fit": 5, "n_test": 5, "seed": 0, "label": None, "n_classes": 0,
                "class_modality": None, "modalities": ["image"], "delta_grid": [0.0, 1.0], "split_column": None,
                "fit_frac": 0.5, "max_fit": None, "max_test": None}
    report = render({"settings": settings, "claims": {"inversion_beats_cross_r1": c}}, {},
                    claim_rows=worded({"inversion_beats_cross_r1": c}))
    row = next(line for line in report.splitlines() if line.startswith("| inversion beats cross-modal"))
    assert "| not enough data |" in row and "yes" not in row and "| no |" not in row


def test_tiny_table_cannot_train(small_table, tmp_path, capsys):
    one = tmp_path / "one.parquet"
    write_parquet(small_table.take(np.arange(1)), one)
    err = one_line_error(capsys, ["train", "--data", str(one), "--out", str(tmp_path / "r")])
    assert "need at least 2" in err


def test_modal_table_check_values_names_row():
    t = ModalTable(["a"], [np.array([[1.0, 2.0], [np.inf, 0.0]], np.float32)], np.array([[True], [True]]))
    with pytest.raises(Prom3eError, match="column 'a' row 1 contains NaN or inf"):
        t.check_values()


def test_a_modality_with_one_target_in_a_batch_does_not_nan_the_gradients():
    """A group with a single real target is padded with copies of it; with dedup those copies
    had every logit at −∞ and log-softmax's backward turned them into NaN (training 'diverged'
    at step 2 on a valid 600-row table)."""
    from prom3e.models.losses import contrastive_reconstruction

    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 8, generator=g, requires_grad=True)
    true = torch.randn(2, 3, 8, generator=g)
    true[1, 1:] = true[1, 0]  # padding: copies of the one real pair
    valid = torch.tensor([[True, True, True], [True, False, False]])
    loss, _ = contrastive_reconstruction(pred, true, valid, torch.tensor([-5.0, -5.0]), torch.tensor([5.0, 5.0]),
                                         None, dedup=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


def test_report_warns_about_non_finite_reconstructions(small_table, tmp_path):
    evaluate(NaNFuser(small_table.modalities, small_table.dims), small_table, label="species", out_dir=tmp_path,
             tasks=["retrieval"], visible=[["image"]], targets=["text"], plots=False, threads=1)
    assert "reconstruction(s) held NaN/inf; each was scored as a miss" in (tmp_path / "report.md").read_text()
