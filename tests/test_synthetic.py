"""The synthetic generator: contract, structure, determinism, and that fusion is useful."""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow.parquet as pq
import pytest

from prom3e.data.synthetic import LEVELS, SynthConfig, generate, generate_table
from prom3e.data.table import read_table
from prom3e.errors import Prom3eError

SMALL = SynthConfig(n=3000, dim=32, n_species=30, seed=3)


@pytest.fixture(scope="module")
def small():
    return generate_table(SMALL)


@pytest.fixture(scope="module")
def probe_data():
    return generate_table(SynthConfig(n=6000, n_species=40, seed=1, modalities=("image", "loc")))


def _labels(t) -> np.ndarray:
    return np.unique(t.meta["species"], return_inverse=True)[1]


def test_deterministic_and_seed_dependent(tmp_path):
    a, b = generate(SMALL), generate(SMALL)
    assert a.equals(b)
    pq.write_table(a, tmp_path / "a.parquet")
    pq.write_table(b, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    c = generate(SynthConfig(n=3000, dim=32, n_species=30, seed=4))
    assert not a.equals(c)


def test_world_does_not_depend_on_modality_choice(small):
    other = generate_table(SynthConfig(n=3000, dim=32, n_species=30, seed=3,
                                       modalities=("loc", "image")))
    np.testing.assert_array_equal(other.feature("image"), small.feature("image"))
    np.testing.assert_array_equal(other.meta["species"], small.meta["species"])
    np.testing.assert_array_equal(other.meta["lat"], small.meta["lat"])


def test_columns_shapes_unit_norm(small):
    table = generate(SMALL)
    meta = ["id", *LEVELS, "lat", "lon", "day_of_year", "cell"]
    assert table.column_names == meta + list(SMALL.modalities)
    assert small.modalities == list(SMALL.modalities)
    assert small.dims == [32] * 6 and len(small) == 3000
    for m, f in enumerate(small.features):
        assert f.dtype == np.float32
        norms = np.linalg.norm(f[small.present[:, m]], axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert np.all(np.abs(small.meta["lat"]) <= 90) and np.all(np.abs(small.meta["lon"]) <= 180)
    assert small.meta["day_of_year"].min() >= 1 and small.meta["day_of_year"].max() <= 365
    assert set(small.meta["kingdom"]) == {"Plantae", "Animalia"}
    # the taxonomy is a tree: each genus has one family, each species one genus
    for child, parent in zip(LEVELS[1:], LEVELS[:-1], strict=True):
        pairs = set(zip(small.meta[child], small.meta[parent], strict=True))
        assert len(pairs) == len({c for c, _ in pairs})


def test_missingness_pattern(small):
    p = small.present
    assert p.any(1).all()
    assert p[:, small.index("image")].all()  # always_present default
    plants = small.meta["kingdom"] == "Plantae"
    assert not p[plants, small.index("sound")].any()
    assert p[~plants, small.index("sound")].mean() > 0.5
    for m in ("sat", "loc", "env", "text"):
        assert abs(p[:, small.index(m)].mean() - 0.7) < 0.05


def test_no_always_present_still_one_per_row():
    t = generate_table(SynthConfig(n=2000, dim=16, n_species=10, missing_rate=0.9,
                                   always_present=(), modalities=("sound", "text", "m7")))
    assert t.present.any(1).all()
    assert t.present[:, 0].any() and t.present.mean() < 0.5


def test_text_per_species_sat_per_cell(small):
    pt = small.present[:, small.index("text")]
    text, sp = small.feature("text")[pt], small.meta["species"][pt]
    for s in np.unique(sp)[:10]:
        assert (text[sp == s] == text[sp == s][0]).all()
    assert len(np.unique(text, axis=0)) == len(np.unique(sp))
    ps = small.present[:, small.index("sat")]
    sat, cell = small.feature("sat")[ps], small.meta["cell"][ps]
    for c in np.unique(cell)[:20]:
        assert (sat[cell == c] == sat[cell == c][0]).all()
    # many-to-many: some cell holds several species
    pairs = np.unique(np.stack([cell, _labels(small)[ps]], 1), axis=0)
    assert np.bincount(np.unique(pairs[:, 0], return_inverse=True)[1]).max() > 1


def test_cross_modal_retrieval_above_chance(small):
    y = _labels(small)
    pt = small.present[:, small.index("text")]
    text = np.zeros((y.max() + 1, small.dims[0]), np.float32)
    text[y[pt]] = small.feature("text")[pt]
    acc = (np.argmax(small.feature("image") @ text.T, 1) == y).mean()
    assert 5 / (y.max() + 1) < acc < 0.9  # clearly above chance, far from perfect
    # row-level: an image is closer to its own row's loc than to other rows' loc
    both = np.flatnonzero(small.present[:, small.index("loc")])[:1000]
    s = small.feature("image")[both] @ small.feature("loc")[both].T
    assert np.diag(s).mean() > s.mean() + 0.05


def _ridge_accuracy(x: np.ndarray, y: np.ndarray, split: int) -> float:
    x = np.hstack([x, np.ones((len(x), 1), np.float32)]).astype(np.float64)
    onehot = np.eye(y.max() + 1)[y]
    xt = x[:split]
    w = np.linalg.solve(xt.T @ xt + 1e-2 * np.eye(x.shape[1]), xt.T @ onehot[:split])
    return float((np.argmax(x[split:] @ w, 1) == y[split:]).mean())


def test_fusion_with_location_beats_image_alone(probe_data):
    t = probe_data
    y, split = _labels(t), 4000
    img = t.feature("image")
    both = np.hstack([img, t.feature("loc")])
    acc_img = _ridge_accuracy(img, y, split)
    acc_both = _ridge_accuracy(both, y, split)
    assert acc_img > 0.2  # the image is informative on its own ...
    assert acc_both > acc_img + 0.05  # ... and location disambiguates look-alike species


def test_generic_modalities_and_dims():
    t = generate_table(SynthConfig(n=500, dim=8, n_species=5, modalities=("image", "m3", "m12")))
    assert t.modalities == ["image", "m3", "m12"] and t.dims == [8, 8, 8]


@pytest.mark.parametrize("kw", [
    {"n": 0}, {"n": -5}, {"missing_rate": 1.0}, {"missing_rate": -0.1}, {"dim": 1},
    {"n_species": 1}, {"modalities": ("image", "photo")}, {"modalities": ("image",)},
    {"modalities": ("image", "image")},
    {"always_present": ("sat",), "modalities": ("image", "loc")},
])
def test_bad_config_raises(kw):
    with pytest.raises(Prom3eError):
        generate(SynthConfig(**kw))


def test_cli_writes_readable_table(tmp_path, capsys):
    from prom3e import cli
    from prom3e.commands import synth

    assert "synth" in cli.COMMANDS
    parser = argparse.ArgumentParser()
    synth.add_parser(parser.add_subparsers())
    out = tmp_path / "sub" / "t.parquet"
    args = parser.parse_args(["synth", "--out", str(out), "--n", "300", "--dim", "16",
                              "--species", "12", "--modalities", "image,loc,sound",
                              "--missing-rate", "0.2", "--seed", "5"])
    assert args.func(args) == 0
    assert "300 rows" in capsys.readouterr().out
    t = read_table(out)
    assert t.modalities == ["image", "loc", "sound"] and t.dims == [16, 16, 16] and len(t) == 300
    assert list(tmp_path.joinpath("sub").iterdir()) == [out]  # atomic: no temp file left
    assert cli.main(["synth", "--out", str(tmp_path / "x.parquet"), "--n", "0"]) == 2
    assert "argument --n: must be ≥ 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()
    bad = parser.parse_args(["synth", "--out", str(tmp_path / "x.parquet"), "--modalities", "image"])
    with pytest.raises(Prom3eError):
        bad.func(bad)


def test_resolution_makes_a_view_ambiguous_by_a_known_amount():
    cfg = SynthConfig(n=400, dim=16, n_species=32, modalities=("m1", "m2"), resolution={"m2": "order"},
                      missing_rate=0.0, always_present=("m1", "m2"), noise=0.0, seed=2)
    t = generate_table(cfg)
    species, order = np.asarray(t.meta["species"]), np.asarray(t.meta["order"])
    for m, level in (("m1", species), ("m2", order)):  # noise 0: one vector per node of the level
        x = t.feature(m)
        for node in np.unique(level)[:5]:
            rows = x[level == node]
            np.testing.assert_allclose(rows, rows[:1].repeat(len(rows), 0), atol=1e-6)
    assert len(np.unique(t.feature("m2").round(5), axis=0)) == len(np.unique(order)) < len(np.unique(species))
    with pytest.raises(Prom3eError, match="not a species view"):
        generate(SynthConfig(n=50, modalities=("image", "loc"), resolution={"loc": "genus"}))
    with pytest.raises(Prom3eError, match="unknown level"):
        generate(SynthConfig(n=50, modalities=("image", "m2"), resolution={"m2": "tribe"}))


def test_sigma_ranks_visible_sets_by_their_true_ambiguity(tmp_path):
    """A view that resolves only the order (or class, or phylum) leaves more candidate species
    than a species-level view: the trained posterior's ‖σ‖₁ must order the views that way, and
    a second view must lower it (issue 11's ground truth for σ)."""
    from prom3e.api import Fuser
    from prom3e.metrics import spearman
    from prom3e.train.loop import TrainConfig, train

    mods = ("m1", "m2", "m3", "m4")
    levels = ("species", "order", "class", "phylum")
    t = generate_table(SynthConfig(n=2000, dim=16, n_species=32, modalities=mods, noise=0.0, missing_rate=0.0,
                                   always_present=mods, resolution=dict(zip(mods[1:], levels[1:], strict=True)),
                                   seed=0))
    train(t, tmp_path / "r", TrainConfig(model="tiny", epochs=40, batch_size=128, lr=3e-3, warmup_steps=10,
                                          precision="fp32", seed=0), progress=False)
    fuser = Fuser.load(tmp_path / "r", precision="fp32")
    sigma = [float(fuser.encode(t, visible=[m]).sigma_l1.mean()) for m in mods]
    candidates = [len(np.unique(np.asarray(t.meta[lev]))) for lev in levels]  # fewer nodes: more species each
    assert spearman(sigma, candidates) == pytest.approx(-1.0), sigma
    both = float(fuser.encode(t, visible=["m1", "m4"]).sigma_l1.mean())
    assert both < min(sigma[0], sigma[3])
