"""torchrun for jobs that split rows by rank (``prom3e embed``): rank, world, barrier.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without it a job is rank 0 of 1
and nothing here touches ``torch.distributed``. The process group uses gloo on CPU and NCCL
on GPU, with a long timeout (``PROM3E_DIST_TIMEOUT_MIN``, default 24 h): ranks that finish
their share early wait at the final barrier for the slowest one.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from prom3e.errors import Prom3eError

if TYPE_CHECKING:
    from torch import Tensor


def world_from_env() -> tuple[int, int]:
    """``(rank, world size)`` as torchrun set them (``(0, 1)`` outside torchrun)."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise Prom3eError("RANK and WORLD_SIZE must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise Prom3eError(f"RANK {rank} is not in [0, WORLD_SIZE {world})")
    return rank, world


def local_device(device: str) -> str:
    """``cuda`` → ``cuda:LOCAL_RANK`` under torchrun (one GPU per process); others unchanged."""
    if device == "cuda" and world_from_env()[1] > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def bind_gpu() -> None:
    """Under torchrun with CUDA, make ``cuda`` mean this process's GPU (``LOCAL_RANK``)."""
    if world_from_env()[1] > 1:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def init(device: str = "cpu") -> tuple[int, int]:
    """Join the process group when run under torchrun; return ``(rank, world)``."""
    rank, world = world_from_env()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            minutes = float(os.environ.get("PROM3E_DIST_TIMEOUT_MIN", 24 * 60))
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, timeout=timedelta(minutes=minutes))
    return rank, world


def barrier() -> None:
    """Wait for every rank (a no-op outside torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_ok(ok: bool) -> bool:
    """True when every rank passes ``ok=True`` (so that one rank's error stops them all
    instead of leaving the others waiting at a barrier)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return ok
    flag = torch.tensor([0 if ok else 1])
    dist.all_reduce(flag)
    return int(flag.item()) == 0


def all_sum(value: int) -> int:
    """The sum of ``value`` over the ranks (``value`` itself outside torchrun)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([int(value)], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t.item())


def all_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean over the ranks of each value (the same keys on every rank; ``values`` itself
    outside torchrun)."""
    if not active():
        return values
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist(), strict=True)}


def close() -> None:
    """Leave the process group (every rank, after its last collective), so that no rank
    exits while another still talks to it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# --- collectives for contrastive losses over the global batch ------------------------------
# Under DDP each rank holds a slice of the global batch. For its negatives to span the whole
# batch, a rank gathers every rank's targets (and labels), scores its own predictions against
# them, and scales its loss by world / (global count) so that DDP's averaged gradient is the
# single-process gradient of the global batch.


def active() -> bool:
    """True inside an initialised process group of more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the process group (0 outside one)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Ranks in the process group (1 outside one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _device():
    """Where the process group's collectives run: this process's GPU under NCCL, else the CPU."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _sizes(n: int) -> list[int]:
    import torch
    import torch.distributed as dist

    sizes = [torch.zeros(1, dtype=torch.int64, device=_device()) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.int64, device=_device()))
    return [int(s.item()) for s in sizes]


def _all_gather(t: Tensor, sizes: list[int]) -> Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order (row counts may differ)."""
    import torch
    import torch.distributed as dist

    if t.dtype == torch.bool:  # gloo has no bool
        return _all_gather(t.to(torch.uint8), sizes).bool()
    most = max(sizes)
    pad = t if len(t) == most else torch.cat([t, t.new_zeros((most - len(t), *t.shape[1:]))])
    parts = [torch.empty_like(pad) for _ in sizes]
    dist.all_gather(parts, pad.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def gather(t: Tensor) -> Tensor:
    """Every rank's rows of ``t`` (dim 0, rank order), without gradient: for labels, ids and
    data. ``t`` itself outside a process group."""
    if not active():
        return t
    import torch

    with torch.no_grad():
        return _all_gather(t.detach(), _sizes(len(t)))


def gather_with_grad(t: Tensor) -> Tensor:
    """Every rank's rows of ``t`` (dim 0, rank order) with gradient: the backward pass sums
    the gradients all ranks computed for the gathered tensor and returns this rank's rows of
    the sum (as open_clip's ``gather_with_grad``). ``t`` itself outside a process group."""
    if not active():
        return t
    return _gather_with_grad_function().apply(t)


@functools.cache
def _gather_with_grad_function():
    import torch
    import torch.distributed as dist

    class GatherWithGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            sizes = _sizes(len(t))
            ctx.sizes, ctx.rank = sizes, dist.get_rank()
            return _all_gather(t, sizes)

        @staticmethod
        def backward(ctx, g):
            g = g.contiguous().clone()
            dist.all_reduce(g)  # every rank's loss depends on every rank's rows
            start = sum(ctx.sizes[:ctx.rank])
            return g[start:start + ctx.sizes[ctx.rank]]

    return GatherWithGrad


@dataclass
class RemoteTargets:
    """Other ranks' reconstruction targets, grouped as this rank's queries: extra candidates
    (negatives) for a contrastive loss, and the normaliser that makes N ranks' averaged
    gradient that of one process on the global batch."""

    true: Tensor  # [U, K, D] other ranks' targets of each modality this rank reconstructs
    valid: Tensor  # bool [U, K]: real entries (the rest is zero padding)
    labels: Tensor | None  # [U, K] label ids (−1 = none)
    pairs: int  # (row, modality) targets in the global batch, every rank's
    world: int

    def mean(self, total: Tensor) -> Tensor:
        """This rank's share of the global mean: ``Σ local losses · world / pairs`` (DDP
        divides the summed gradients by ``world``)."""
        return total * (self.world / max(self.pairs, 1))


@dataclass
class GlobalBatch:
    """Every rank's targets of one training step (rank order; this rank's are rows
    ``start .. start + rows``)."""

    x: Tensor  # [N, M, Dmax]
    targets: Tensor  # bool [N, M]: the (row, modality) pairs reconstructed
    labels: Tensor | None  # [N]
    start: int
    rows: int
    world: int

    @property
    def size(self) -> int:
        return len(self.x)


def gather_batch(x: Tensor, targets: Tensor, labels: Tensor | None) -> GlobalBatch | None:
    """Gather every rank's ``x [b, M, D]``, ``targets bool[b, M]`` and ``labels [b]`` (data:
    no gradient; one collective for the row counts and one for the rows, packed as bytes);
    ``None`` outside a process group (the loss then uses the local batch)."""
    if not active():
        return None
    import torch
    import torch.distributed as dist

    b, m, d = x.shape
    fields = [x.detach().contiguous().view(torch.uint8).reshape(b, -1), targets.to(torch.uint8)]
    if labels is not None:
        fields.append(labels.to(torch.int64).contiguous().view(torch.uint8).reshape(b, -1))
    sizes = _sizes(b)
    rows = _all_gather(torch.cat(fields, 1), sizes)
    n, cut = len(rows), x.element_size() * m * d
    gx = rows[:, :cut].contiguous().view(x.dtype).reshape(n, m, d)
    gt = rows[:, cut:cut + m].bool()
    gl = rows[:, cut + m:].contiguous().view(torch.int64).reshape(n) if labels is not None else None
    rank = dist.get_rank()
    return GlobalBatch(gx, gt, gl, sum(sizes[:rank]), sizes[rank], len(sizes))
