"""fp32 training is reproducible with more than one thread (issue 10 item 5)."""

from __future__ import annotations

import numpy as np
import torch

from prom3e.data.masking import sample_visible, training_targets
from prom3e.data.synthetic import SynthConfig, generate_table
from prom3e.models.prom3e import Prom3e, named_config


def test_backward_is_bitwise_reproducible_with_two_threads():
    """The backward of ``z[index]`` (parallel atomic adds on CPU) changed the gradients run to
    run with 2 threads; the model gathers with ``index_select`` so they are identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        table = generate_table(SynthConfig(n=256, dim=32, n_species=10, seed=3))
        torch.manual_seed(0)
        model = Prom3e(named_config("tiny", table.modalities, table.dims))
        x, present = torch.from_numpy(table.padded()), torch.from_numpy(table.present)
        gen = torch.Generator().manual_seed(0)
        visible = sample_visible(present, (0.9, 0.1), gen)
        targets = training_targets(present, visible, False)
        grads = []
        for _ in range(4):
            model.zero_grad()
            torch.manual_seed(5)
            loss, _ = model(x, visible, targets)
            loss.backward()
            grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        for g in grads[1:]:
            assert all(torch.equal(grads[0][k], g[k]) for k in g), \
                [k for k in g if not torch.equal(grads[0][k], g[k])]
    finally:
        torch.set_num_threads(before)
    assert np.isfinite(float(loss.detach()))
