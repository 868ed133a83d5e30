"""The guard (issue 10): every command's flags and config keys, and the API's arguments, driven
with random types and values. Whatever comes in:

- the exit code is 0 or 2 (an API call returns or raises :class:`Prom3eError`): never a traceback;
- no written output holds NaN (Parquet values, JSON numbers);
- no file is partial (every output reads back; no temporary is left) and none is replaced
  unless ``--overwrite`` was given (inputs are never replaced).

The default run draws a few examples per command (seeded: ``derandomize``); the slow one many.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prom3e.cli import main
from prom3e.errors import Prom3eError
from prom3e.io import TMP_SUFFIX

INTS = ["-5", "-1", "0", "1", "2", "3", "1.5", "x", ""]
FRACS = ["0", "0.3", "0.5", "1", "1.5", "-0.2", "nan", "inf", "x"]
FLOATS = ["0", "1e-3", "0.01", "-1", "nan", "inf", "x", "1e30"]
NAMES = ["image", "image,loc", "text", "nope", "", "image,image", ","]
SEEDS = ["0", "1", "-1", "1.7", "x"]

# flag → values; "@NAME" is a path from the fixture folder, "@new" a fresh path
FLAGS: dict[str, dict[str, list]] = {
    "synth": {"--out": ["@new.parquet", "@data", "@folder", "@file/x.parquet"], "--n": [*INTS, "50"],
              "--dim": ["4", "8", "3", "0", "x"], "--species": ["2", "5", "1", "x"],
              "--modalities": ["image,loc", "image", "image,bogus", "m3,m4", "", "image,image"],
              "--missing-rate": FRACS, "--noise": FLOATS, "--seed": SEEDS, "--overwrite": [True]},
    "train": {"--data": ["@data", "@data", "@missing", "@file"], "--out": ["@new", "@run", "@data", "@file"],
              "--model": ["tiny", "tiny", "huge"], "--epochs": ["1", "2", "0", "-1", "1.5", "x"],
              "--batch-size": ["2", "16", "64", "1", "0", "x"], "--lr": FLOATS, "--kl-weight": FLOATS,
              "--label": ["species", "nope", ""], "--precision": ["fp32", "bf16", "x"],
              "--threads": ["1", "0", "-1", "x"], "--seed": SEEDS, "--device": ["cpu", "cuda", "x"],
              "--modalities": NAMES, "--resume": [True], "--allow-changes": [True], "--overwrite": [True],
              "--config": ["@config"]},
    "reconstruct": {"--model": ["@run", "@run", "@missing", "@data"], "--data": ["@data", "@data", "@missing"],
                    "--target": ["text", "image", "nope", ""], "--visible": NAMES, "--samples": ["0", "1", "2", "-1"],
                    "--batch-size": INTS, "--out": ["@new.parquet", "@data", "@folder", "@run/model.safetensors"],
                    "--overwrite": [True], "--seed": SEEDS, "--device": ["cpu", "x"]},
    "evaluate": {"--model": ["@run", "@run", "@missing"], "--data": ["@data", "@data", "@missing"],
                 "--out": ["@new", "@run", "@file", "@folder"], "--label": ["species", "nope"],
                 "--modalities": NAMES, "--visible": ["image", "image+loc", "nope", "", "image+image"],
                 "--max-visible": INTS, "--targets": NAMES, "--class-modality": ["auto", "none", "text", "nope"],
                 "--tasks": ["retrieval", "retrieval,gap", "bogus", "", "zeroshot,probe", "uncertainty"],
                 "--fit-frac": FRACS, "--split-column": ["split", "nope"], "--max-fit": INTS, "--max-test": INTS,
                 "--max-subset-size": INTS, "--batch-size": INTS, "--threads": ["1", "0", "x"], "--seed": SEEDS,
                 "--overwrite": [True]},
    "index": {"action": ["build", "search"], "--data": ["@data", "@data", "@missing"],
              "--column": ["text", "image", "nope", "species"], "--out": ["@new.x", "@data", "@folder", "@index"],
              "--index": ["@index", "@index", "@data", "@missing"], "--spec": ["exact", "exact", "Flat", "bogus"],
              "--params": ["", "nprobe=4", "bogus=1"], "--k": INTS, "--threads": ["1", "0"], "--seed": SEEDS,
              "--overwrite": [True]},
    "align": {"--data": ["@data", "@data", "@missing"], "--anchor": ["image", "image", "nope"],
              "--out": ["@new.parquet", "@data", "@folder"], "--model-out": ["@new", "@run", "@file"],
              "--label": ["species", "nope"], "--fit-where": ["split=train", "nope", "split=never"],
              "--modalities": NAMES, "--dim": INTS, "--anchor-proj": ["pca", "center", "x"],
              "--head": ["mlp", "linear", "x"], "--hidden": ["4", "8", "0"], "--epochs": ["1", "2", "0"],
              "--batch-size": ["2", "8", "1"], "--lr": FLOATS, "--weight-decay": FLOATS, "--val-frac": FRACS,
              "--patience": INTS, "--seed": SEEDS, "--overwrite": [True]},
    "embed": {"--observations": ["@obs", "@obs", "@missing", "@data"], "--spec": ["@spec", "@spec", "@badspec"],
              "--out": ["@new.parquet", "@obs", "@folder", "@data"], "--restart": [True], "--overwrite": [True],
              "--no-progress": [True]},
    "import-npy": {"--npy": ["@npy", "@npy", "@data", "@missing"], "--out": ["@new.parquet", "@npy", "@folder"],
                   "--overwrite": [True]},
    "benchmark": {"--data": ["@data", "@data", "@missing"], "--label": ["species", "species", "nope"],
                  "--out": ["@new", "@file", "@run"], "--methods": ["zero-fill", "mean-impute,late-fusion", "nope", ""],
                  "--epochs": ["1", "0", "x"], "--batch-size": ["8", "1"], "--lr": FLOATS, "--width": ["4", "8", "2"],
                  "--seeds": ["0", "0,1", "1.7", "-1", ""], "--etas": ["0.5", "0.7,0.9", "1.2", "x"],
                  "--train-missing": ["natural", "eta", "x"], "--subset-cap": INTS, "--max-rows": [*INTS, "60"],
                  "--option": ["zero-fill.bogus=1", "late-fusion.x"], "--threads": ["1", "0"],
                  "--overwrite": [True]},
    "demo": {"--out": ["@new", "@file", "@run"], "--n": ["10", "60", "0", "x"], "--epochs": ["1", "0"],
             "--model": ["tiny", "x"], "--test-fraction": FRACS, "--seed": SEEDS, "--overwrite": [True]},
    "split": {"--data": ["@data", "@data", "@missing", "@folder", "@file"],
              "--train": ["@new.parquet", "@data", "@folder", "@file"],
              "--test": ["@new2.parquet", "@new.parquet", "@data"],
              "--label": ["species", "species", "nope", "image", "split", ""], "--test-fraction": FRACS,
              "--seed": SEEDS, "--overwrite": [True]},
    "probe": {"--model": ["@run", "@run", "@missing", "@data"], "--data": ["@data", "@data", "@missing", "@file"],
              "--label": ["species", "species", "nope", "image", ""], "--out": ["@new.safetensors", "@data", "@folder",
                                                                              "@run/model.safetensors"],
              "--C": ["1", "0.1", "0", "-1", "nan", "x"], "--views": ["0", "2", "-1", "x"],
              "--holdout": ["0.2", "0", "1", "-0.5"], "--batch-size": INTS, "--seed": SEEDS,
              "--overwrite": [True], "--device": ["cpu", "x"]},
    "perf": {"what": ["retrieval", "x"], "--sizes": ["100", "0", "x", "100,200"], "--threads": ["1", "0", "x"],
             "--repeats": ["1", "0"], "--batch": ["8", "0"], "--config": ["tiny", "x"]},
}
REQUIRED = {"synth": ["--out"], "train": ["--data", "--out", "--epochs", "--model"],
            "reconstruct": ["--model", "--data", "--target", "--out"], "evaluate": ["--model", "--data", "--out"],
            "index": ["action", "--data", "--column", "--out"], "align": ["--data", "--anchor", "--out", "--model-out",
                                                                          "--epochs", "--hidden"],
            "embed": ["--observations", "--spec", "--out"], "import-npy": ["--npy", "--out"],
            "benchmark": ["--data", "--label", "--out", "--methods", "--epochs"],
            "demo": ["--out", "--n", "--epochs", "--model"], "perf": ["what", "--sizes"],
            "split": ["--data", "--train", "--test"], "probe": ["--model", "--data", "--out"]}
OUTPUT_FLAGS = ("--out", "--model-out", "--train", "--test")
FAST = {"synth": 8, "train": 8, "reconstruct": 8, "evaluate": 6, "index": 8, "align": 5, "embed": 5,
        "import-npy": 5, "benchmark": 3, "demo": 2, "perf": 3, "split": 8, "probe": 8}

# train config keys: bounded where a value sets the cost, any type elsewhere
CONFIG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
                          st.text(max_size=5), st.lists(st.integers(-1, 2), max_size=3),
                          st.dictionaries(st.sampled_from(["depth", "heads", "bogus"]), st.integers(-1, 4), max_size=2))
CONFIG_KEYS = st.dictionaries(
    st.sampled_from(["lr", "min_lr", "betas", "eps", "warmup_steps", "kl_weight", "noise", "visible_probs",
                     "reconstruct_all", "label_column", "dedup", "val_fraction", "seed", "precision", "device",
                     "model_overrides", "bogus_key", "restart_epochs", "weight_decay"]),
    CONFIG_VALUES, max_size=4)


# --- the fixture folder ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from prom3e.data.synthetic import SynthConfig, generate_table
    from prom3e.data.table import write_parquet

    root = tmp_path_factory.mktemp("guard")
    t = generate_table(SynthConfig(n=120, dim=8, n_species=4, modalities=("image", "loc", "text"), seed=2))
    t.meta["split"] = np.where(np.arange(len(t)) % 3 == 0, "test", "train")
    write_parquet(t, root / "data.parquet")
    assert main(["train", "--data", str(root / "data.parquet"), "--out", str(root / "run"), "--model", "tiny",
                 "--epochs", "1", "--batch-size", "16", "--quiet", "--precision", "fp32"]) == 0
    assert main(["index", "build", "--data", str(root / "data.parquet"), "--column", "text", "--out",
                 str(root / "index.safetensors")]) == 0
    (root / "obs.csv").write_text("day,species\n2020-01-01,a\n2021-06-30,b\n,c\n")
    (root / "spec.yaml").write_text("modalities:\n  date: {encoder: date, column: day}\n")
    (root / "badspec.yaml").write_text("modalities:\n  date: {encoder: nope, column: day}\n")
    np.save(root / "ref.npy", {"image": np.random.default_rng(0).normal(size=(20, 4)), "sat": np.zeros((20, 4))},
            allow_pickle=True)
    (root / "file.txt").write_text("not a folder")
    (root / "folder").mkdir()
    return root


def _path(token: str, work: Path, config: dict | None) -> str:
    names = {"@data": "data.parquet", "@run": "run", "@index": "index.safetensors", "@obs": "obs.csv",
             "@spec": "spec.yaml", "@badspec": "badspec.yaml", "@npy": "ref.npy", "@file": "file.txt",
             "@folder": "folder", "@missing": "missing.parquet"}
    if token.startswith("@new"):
        return str(work / f"new{token[4:]}")
    if token == "@config":
        (work / "config.yaml").write_text(json.dumps(config or {}))
        return str(work / "config.yaml")
    head, _, rest = token.partition("/")
    return str(work / names[head] / rest) if rest else str(work / names[head])


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _no_nan(path: Path) -> None:
    """Every number in a written Parquet or JSON file is not NaN (± inf sentinels are documented)."""
    if path.suffix == ".parquet":
        t = pq.read_table(path)
        for col in t.columns:
            arr = col.combine_chunks()
            while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
                arr = arr.flatten()
            if pa.types.is_floating(arr.type):
                vals = arr.to_numpy(zero_copy_only=False)
                assert not np.isnan(vals[~np.asarray(arr.is_null().to_numpy(zero_copy_only=False))]).any(), path
    elif path.suffix in (".json", ".jsonl"):
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            if line.strip():
                json.loads(line, parse_constant=lambda c: pytest.fail(f"{path}: {c} in JSON"))


def run_cli(base: Path, command: str, picks: dict[str, object], config: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(base, work, dirs_exist_ok=True, symlinks=True)
        argv = [command]
        outputs, overwrite = [], bool(picks.get("--overwrite"))
        for flag, value in picks.items():
            if flag in ("action", "what"):
                argv.insert(1, str(value))
                continue
            if value is True:
                argv.append(flag)
                continue
            text = _path(value, work, config) if isinstance(value, str) and value.startswith("@") else str(value)
            argv += [flag, text]
            if flag in OUTPUT_FLAGS:
                outputs.append(Path(text))
        if command == "evaluate":
            argv += ["--quiet", "--no-plots"]
        before = _digest(work)
        existed = {o: o.exists() for o in outputs}
        try:
            code = main(argv)
        except Exception as e:  # a traceback: the guard fails, showing the command
            raise AssertionError(f"{' '.join(argv)} raised {type(e).__name__}: {e}") from e
        assert code in (0, 2), (argv, code)
        after = _digest(work)
        left = [p for p in work.rglob("*") if p.name.endswith(TMP_SUFFIX)]
        assert not left, (argv, left)
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}

        def is_output(name: str) -> bool:
            p = (work / name).resolve()
            return any(p == o.resolve() or o.resolve() in p.parents or p.name.startswith(o.name + ".parts")
                       for o in outputs)

        inputs_changed = sorted(k for k in changed if k in before and not is_output(k))
        assert not inputs_changed, (argv, inputs_changed)  # an input is never replaced
        for o in outputs:
            under = [k for k in changed if k in before and ((work / k).resolve() == o.resolve()
                                                             or o.resolve() in (work / k).resolve().parents)]
            resumed = command == "train" and "--resume" in argv
            if existed[o] and under and not (overwrite or resumed or (command == "embed" and code == 0)):
                raise AssertionError(f"{' '.join(argv)}: replaced {under[0]} without --overwrite")
            if code == 2 and not existed[o] and command not in ("train", "embed", "demo", "benchmark"):
                assert not o.exists(), (argv, "partial output", o)
        for k in changed:
            if (work / k).exists():
                _no_nan(work / k)


def _picks(command: str):
    flags = FLAGS[command]

    @st.composite
    def draw(draw_fn):
        picks: dict[str, object] = {}
        for flag, values in flags.items():
            if flag in REQUIRED[command] or draw_fn(st.integers(0, 3)) == 0:
                picks[flag] = draw_fn(st.sampled_from(values))
        return picks
    return draw()


def _cli_test(command: str, examples: int):
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(picks=_picks(command), config=CONFIG_KEYS)
    def test(base, picks, config):
        run_cli(base, command, picks, config)
    return test


@pytest.mark.parametrize("command", list(FLAGS))
def test_cli_guard(base, command):
    _cli_test(command, FAST[command])(base)


@pytest.mark.slow
@pytest.mark.parametrize("command", list(FLAGS))
def test_cli_guard_long(base, command):
    _cli_test(command, 6 * FAST[command])(base)


# --- the Python API -------------------------------------------------------------------------------

ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(-2, 2), st.just(float("nan")),
                st.text(max_size=4), st.lists(st.sampled_from(["image", "loc", "text", "x"]), max_size=3))


def _api_call(base: Path, what: str, kwargs: dict) -> None:
    from prom3e.align import AlignConfig
    from prom3e.api import Fuser
    from prom3e.data.table import read_table
    from prom3e.methods import FitConfig
    from prom3e.models.prom3e import Prom3eConfig
    from prom3e.tasks.comparison.benchmark import BenchConfig
    from prom3e.tasks.evaluate import evaluate
    from prom3e.tasks.oracle import OracleFuser
    from prom3e.train.loop import TrainConfig

    table = read_table(base / "data.parquet")
    try:
        if what == "configs":
            for cls in (TrainConfig, FitConfig, BenchConfig, AlignConfig, Prom3eConfig):
                with contextlib.suppress(Prom3eError):
                    cls(**{k: v for k, v in kwargs.items() if k in cls.field_names()})
        elif what == "fuser":
            fuser = Fuser.load(base / "run", precision="fp32")
            out = fuser.reconstruct(table.take(np.arange(12)), **kwargs)
            assert all(bool(np.isfinite(v.numpy()).all()) for v in out.values())
        elif what == "evaluate":
            kwargs = {k: v for k, v in kwargs.items() if k not in ("max_fit", "max_test")}
            evaluate(OracleFuser(table.modalities, table.dims), table, **kwargs, plots=False, max_fit=40, max_test=40)
    except Prom3eError:
        pass


API_ARGS = {
    "configs": st.dictionaries(st.sampled_from(["epochs", "batch_size", "lr", "seeds", "etas", "width", "dim",
                                                "val_frac", "embed_dim", "heads", "posterior_head", "modalities",
                                                "dims", "kl_weight", "fit", "model_overrides", "visible_probs"]),
                               ANY, max_size=4),
    "fuser": st.dictionaries(st.sampled_from(["targets", "visible", "n_samples", "seed", "batch_size",
                                              "return_sigma"]), ANY, max_size=3),
    "evaluate": st.dictionaries(st.sampled_from(["label", "visible", "targets", "max_visible", "tasks", "seed",
                                                 "fit_frac", "max_subset_size", "batch_size", "class_modality",
                                                 "delta_grid"]), ANY, max_size=3),
}


@pytest.mark.parametrize("what", list(API_ARGS))
def test_api_guard(base, what):
    @settings(max_examples=25 if what != "evaluate" else 8, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(kwargs=API_ARGS[what])
    def test(kwargs):
        _api_call(base, what, kwargs)
    test()


def test_guard_helpers_catch_nan(tmp_path):
    """The guard's own check fails on a NaN in a written file (a guard that cannot fail is no guard)."""
    pq.write_table(pa.table({"x": pa.array([[1.0, math.nan]], type=pa.list_(pa.float32()))}), tmp_path / "a.parquet")
    with pytest.raises(AssertionError):
        _no_nan(tmp_path / "a.parquet")
    (tmp_path / "m.json").write_text('{"a": NaN}')
    with pytest.raises(BaseException):  # noqa: B017 - pytest.fail raises its own exception type
        _no_nan(tmp_path / "m.json")
