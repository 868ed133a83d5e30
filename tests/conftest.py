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
