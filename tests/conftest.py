"""Shared fixtures: small seeded synthetic tables and a trained tiny run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prom3e.data.synthetic import SynthConfig, generate_table

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - seeds any code still using the legacy global RNG


@pytest.fixture(scope="session")
def small_table():
    return generate_table(SynthConfig(n=800, dim=16, n_species=20, seed=1))


@pytest.fixture(scope="session")
def small_parquet(tmp_path_factory, small_table):
    from prom3e.data.table import write_parquet

    path = tmp_path_factory.mktemp("data") / "small.parquet"
    write_parquet(small_table, path)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, small_parquet):
    from prom3e.cli import main

    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--data", str(small_parquet), "--out", str(run), "--model", "tiny",
                 "--epochs", "3", "--batch-size", "64", "--quiet", "--precision", "fp32"]) == 0
    return run


RAW_SPECIES = {"Rosa californica": (37.0, -122.0), "Quercus agrifolia": (34.0, -118.3),
               "Salvia mellifera": (32.7, -117.1), "Pinus radiata": (36.6, -121.9)}


@pytest.fixture(scope="session")
def raw_chain(tmp_path_factory):
    """A real stage-1 chain on a small observation file (serve tests): `prom3e embed` (GeoCLIP
    location, MiniLM text, cyclic date) → `prom3e align` (anchor: location) → `prom3e train`."""
    from prom3e.cli import main
    from prom3e.encoders import get_encoder

    pytest.importorskip("sentence_transformers", reason="the text encoder needs prom3e[text]")
    try:
        get_encoder("geoclip").prepare()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"GeoCLIP's weights are not installed (pip install --no-deps geoclip): {e}")
    d = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    lines = ["species,lat,lon,observed_on"]
    for i in range(160):
        name = list(RAW_SPECIES)[i % 4]
        lat, lon = RAW_SPECIES[name]
        lines.append(f"{name},{lat + rng.normal(0, 0.5):.4f},{lon + rng.normal(0, 0.5):.4f},"
                     f"2023-{1 + i % 12:02d}-{1 + i % 27:02d}")
    (d / "obs.csv").write_text("\n".join(lines) + "\n")
    (d / "spec.yaml").write_text(
        "keep: [species]\nmodalities:\n"
        "  loc: {encoder: geoclip, columns: [lat, lon]}\n"
        "  text: {encoder: minilm, column: species}\n"
        "  date: {encoder: date, column: observed_on}\n")
    assert main(["embed", "--observations", str(d / "obs.csv"), "--spec", str(d / "spec.yaml"),
                 "--out", str(d / "features.parquet"), "--no-progress"]) == 0
    assert main(["align", "--data", str(d / "features.parquet"), "--anchor", "loc", "--label", "species",
                 "--dim", "16", "--hidden", "64", "--epochs", "3", "--out", str(d / "aligned.parquet"),
                 "--model-out", str(d / "align"), "--no-progress"]) == 0
    assert main(["train", "--data", str(d / "aligned.parquet"), "--out", str(d / "run"), "--model", "tiny",
                 "--epochs", "2", "--batch-size", "32", "--quiet", "--precision", "fp32"]) == 0
    return d
