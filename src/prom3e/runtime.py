"""Device, precision and thread choices, made once and in one place."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

from prom3e.errors import Prom3eError


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (``None``: as they are), restored after."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise Prom3eError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise Prom3eError(f"unknown device '{name}' (use auto, cpu or cuda)")
    return torch.device(name)


@functools.cache
def cpu_has_bf16_matmul() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` where the hardware runs bf16 matmuls fast, else ``fp32``."""
    if name not in ("auto", "fp32", "bf16"):
        raise Prom3eError(f"unknown precision '{name}' (use auto, fp32 or bf16)")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16_matmul() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def progress_bar(iterable=None, *, show: bool = True, **kwargs):
    """A tqdm progress bar that is drawn only when ``show`` and its stream (stderr) is a
    terminal (tqdm's ``disable=None``): a log file or a pipe gets no redraws. Callers print
    their own one-line summaries (per epoch, per stage) so that a log still tells the story."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if show else True, **kwargs)
