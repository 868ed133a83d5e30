"""torchrun for jobs that split rows by rank (``prom3e embed``): rank, world, barrier.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without it a job is rank 0 of 1
and nothing here touches ``torch.distributed``. The process group uses gloo on CPU and NCCL
on GPU, with a long timeout (``PROM3E_DIST_TIMEOUT_MIN``, default 24 h): ranks that finish
their share early wait at the final barrier for the slowest one.
"""

from __future__ import annotations

import os
from datetime import timedelta

from prom3e.errors import Prom3eError


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


def close() -> None:
    """Leave the process group (every rank, after its last collective), so that no rank
    exits while another still talks to it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
