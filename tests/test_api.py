"""Fuser.reconstruct: a target's reconstruction does not depend on which other targets are asked for."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from prom3e.api import Fuser
from prom3e.data.synthetic import SynthConfig, generate_table
from prom3e.models.prom3e import Prom3e, named_config


def test_targets_in_any_order_get_their_own_decoder():
    table = generate_table(SynthConfig(n=64, dim=8, n_species=4, modalities=("image", "loc", "text"), missing_rate=0.0))
    torch.manual_seed(0)
    fuser = Fuser(Prom3e(named_config("tiny", table.modalities, table.dims)))
    alone = {t: fuser.reconstruct(table, targets=[t], visible=["image"])[t] for t in ("image", "loc", "text")}
    for order in itertools.permutations(("image", "loc", "text")):  # a complete set in any order
        got = fuser.reconstruct(table, targets=list(order), visible=["image"], return_sigma=True)
        assert list(got) == ["sigma_l1", *order]
        for t in order:
            torch.testing.assert_close(got[t], alone[t], rtol=0, atol=1e-6)
    drawn = fuser.reconstruct(table, targets=["text", "image", "loc", "text"], visible=["loc"], n_samples=3, seed=1,
                              return_samples=True)
    ref = fuser.reconstruct(table, targets=["image", "loc", "text"], visible=["loc"], n_samples=3, seed=1,
                            return_samples=True)
    assert list(drawn) == ["text", "text:samples", "image", "image:samples", "loc", "loc:samples"]
    for k, v in ref.items():
        np.testing.assert_array_equal(drawn[k].numpy(), v.numpy())
