"""Data-parallel contrastive training equals one big batch: 2 gloo processes × B/2 take the
same steps as 1 process × B (stage 2 and the stage-1 align SupCon), and would not if each
rank's negatives were only its own rows."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from prom3e import distributed
from prom3e.align.heads import Head
from prom3e.align.supcon import LogitScale, supcon_loss
from prom3e.data.labels import encode_labels
from prom3e.data.masking import sample_visible, training_targets
from prom3e.data.synthetic import SynthConfig, generate_table
from prom3e.train.loop import TrainConfig, Trainer, training_step

BATCH, STEPS = 64, 3


def _table():
    # shared satellite tiles (dedup across ranks) and species labels (labels across ranks)
    return generate_table(SynthConfig(n=400, dim=16, n_species=12, seed=1))


def _stage2(run: Path) -> tuple[list[float], dict[str, torch.Tensor]]:
    """STEPS training steps as the training loop takes them; the global loss of each step."""
    cfg = TrainConfig(model="tiny", epochs=1, batch_size=BATCH, precision="fp32", device="cpu",
                      label_column="species", seed=0)
    tr = Trainer(_table(), cfg, run, progress=False)
    net = tr.ddp or tr.model
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(6)
    losses = []
    for _, batch in zip(range(STEPS), tr.source.batches(0, cfg.batch_size, gen), strict=False):
        visible = sample_visible(batch.present, cfg.visible_probs, gen)
        targets = training_targets(batch.present, visible, cfg.reconstruct_all)
        loss, _ = training_step(net, tr.opt, batch.x, visible[batch.mine], targets[batch.mine], batch.labels,
                                cfg, tr.device, tr.precision)
        losses.append(_global_mean(loss))
    return losses, {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


class _Align(nn.Module):
    def __init__(self, x: torch.Tensor, gather: bool):
        super().__init__()
        self.gather = gather
        torch.manual_seed(3)
        self.head, self.scale = Head(x.shape[1], 16, "mlp", hidden=32, dropout=0.0), LogitScale()
        self.head.norm.fit(x)

    def forward(self, x, anchor, labels):
        return supcon_loss(self.head(x), anchor, self.scale(), labels, gather=self.gather)


def _align(gather: bool = True) -> tuple[list[float], dict[str, torch.Tensor]]:
    """STEPS AdamW steps of a head against fixed anchors, each rank on its slice of the batch."""
    t = _table()
    have = torch.from_numpy(t.present[:, t.index("sat")])
    x = torch.from_numpy(t.features[t.index("sat")])[have]
    anchor = torch.nn.functional.normalize(torch.from_numpy(t.features[t.index("image")])[have], dim=-1)
    labels = torch.from_numpy(encode_labels(t.label("species"))[0])[have]
    model = _Align(x, gather)
    net = nn.parallel.DistributedDataParallel(model) if distributed.active() else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    per = BATCH // distributed.world_size()
    mine = slice(distributed.rank() * per, (distributed.rank() + 1) * per)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(2))
    losses = []
    for step in range(STEPS):
        rows = order[step * BATCH:(step + 1) * BATCH][mine]
        loss = net(x[rows], anchor[rows], labels[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(_global_mean(loss))
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _gathers(rank: int) -> dict:
    """Unequal row counts, bool data, and the gradient that comes back through a gather."""
    local = torch.arange(rank + 1, dtype=torch.float32).requires_grad_()
    both = distributed.gather_with_grad(local)  # rank 0: [0], rank 1: [0, 1] → [0, 0, 1]
    (both * torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)).sum().backward()
    return {"rows": both.detach(), "flags": distributed.gather(torch.tensor([rank == 1] * (rank + 1))),
            "grad": local.grad}


def _global_mean(loss: torch.Tensor) -> float:
    """The global batch's loss: each rank's loss is its share × world, so their mean."""
    if not distributed.active():
        return float(loss.detach())
    t = loss.detach().clone()
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {"stage2": _stage2(Path(out) / "gathered"), "align": _align(), "gather": _gathers(rank)}
    # the same with each rank's negatives only its own rows (what the gather replaces)
    distributed.gather_batch = lambda *a: None
    results["stage2_local"] = _stage2(Path(out) / "local")
    results["align_local"] = _align(gather=False)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("gather")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        assert k not in os.environ
    one = {"stage2": _stage2(out / "one"), "align": _align()}
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return one, torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["stage2", "align"])
def test_two_processes_equal_one_big_batch(runs, stage):
    one, two, _ = runs
    (loss1, params1), (loss2, params2) = one[stage], two[stage]
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    # float rounding differs (gradients summed in another order); AdamW turns the rounding
    # noise of stage 2's β gradient (zero in exact arithmetic) into updates of ~1e-5
    assert _max_diff(params1, params2) < 5e-5


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["stage2", "align"])
def test_local_negatives_would_differ(runs, stage):
    """The tolerance above sees the difference the gather makes."""
    one, two, _ = runs
    (loss1, params1), (loss_local, params_local) = one[stage], two[f"{stage}_local"]
    assert abs(loss_local[0] - loss1[0]) > 1e-3 * abs(loss1[0])
    assert _max_diff(params1, params_local) > 1e-3


@pytest.mark.slow
def test_gathers(runs):
    _, r0, r1 = runs
    for r in (r0, r1):
        assert r["gather"]["rows"].tolist() == [0.0, 0.0, 1.0]
        assert r["gather"]["flags"].tolist() == [False, True, True]
    # each rank's rows get the gradient of every rank's loss: weights (1, 2, 3) × (1 + rank)
    assert r0["gather"]["grad"].tolist() == [1.0 + 2.0]
    assert r1["gather"]["grad"].tolist() == [2.0 * 1 + 2.0 * 2, 3.0 * 1 + 3.0 * 2]


def test_halves_with_global_batch_equal_the_whole(small_table):
    """In one process: two half batches, each scored against the whole batch's targets
    (as ranks are), give the whole batch's loss and gradient."""
    from prom3e.distributed import GlobalBatch
    from prom3e.models.prom3e import Prom3e, named_config
    from prom3e.train.data import label_ids

    t = small_table
    model = Prom3e(named_config("tiny", list(t.modalities), list(t.dims)))
    x, present = torch.from_numpy(t.padded()[:BATCH]), torch.from_numpy(t.present[:BATCH])
    labels = torch.from_numpy(label_ids(t, "species")[:BATCH])
    gen = torch.Generator().manual_seed(0)
    visible = sample_visible(present, (0.9, 0.1), gen)
    targets = training_targets(present, visible, False)

    def run(rows: slice, batch: GlobalBatch | None) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(1)
        loss, _ = model(x[rows], visible[rows], targets[rows], labels[rows], batch=batch)
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.parameters()]

    whole, g_whole = run(slice(None), None)
    half = BATCH // 2
    parts = [run(slice(s, s + half), GlobalBatch(x, targets, labels, s, half, 2)) for s in (0, half)]
    assert (parts[0][0] + parts[1][0]) / 2 == pytest.approx(whole, rel=1e-5)
    for a, b, g in zip(parts[0][1], parts[1][1], g_whole, strict=True):
        torch.testing.assert_close((a + b) / 2, g, rtol=1e-4, atol=1e-6)
    # each half alone (its own rows as the only negatives) is another objective
    local = [run(slice(s, s + half), None)[0] for s in (0, half)]
    assert abs(sum(local) / 2 - whole) > 1e-2 * whole
