"""The encoder interface shared by every stage-1 encoder.

An encoder turns a batch of raw inputs of one *input kind* into ``float32[B, dim]``:

========  ====================================================================
kind      one input is
========  ====================================================================
image     a path to a photo (``str`` / ``Path``) or a ``PIL.Image``
text      a string
latlon    a ``(lat, lon)`` pair in degrees
vector    a sequence of floats (covariates)
date      a ``numpy.datetime64`` day (the embed command parses date columns)
audio     a path to a sound file
time      a time of day (``HH:MM`` string, ``datetime.time``, minutes since midnight)
list      a list of strings, or a string holding one (``['call', 'song']``)
========  ====================================================================

``encode`` may return ``None`` rows for inputs it cannot use (an unreadable image); the
caller records them as missing. Frozen encoders are used as they are. A *trainable*
encoder is split in two: ``encode`` is its fixed front (deterministic features written
by ``prom3e embed``) and ``tower()`` builds its trainable back, which ``prom3e align``
trains as that modality's head. Backends are imported lazily, inside the encoder.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from prom3e.errors import Prom3eError

INPUT_KINDS = ("image", "text", "latlon", "vector", "date", "audio", "time", "list")


class Encoder:
    """Base class: subclasses set ``name``, ``input_kind``, ``dim`` and implement ``_encode``."""

    name: ClassVar[str] = "encoder"
    input_kind: ClassVar[str] = "vector"
    trainable: ClassVar[bool] = False
    description: ClassVar[str] = ""
    dim: int

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)

    def options(self) -> dict[str, Any]:
        """JSON-able constructor options that rebuild this encoder (device excluded)."""
        return {}

    def config(self) -> dict[str, Any]:
        """What ``embed`` records in the output column's metadata."""
        return {"encoder": self.name, "options": self.options(), "dim": self.dim,
                "input_kind": self.input_kind, "trainable": self.trainable}

    def encode(self, inputs: Sequence[Any]) -> np.ndarray:
        """``float32[B, dim]``; rows the encoder could not use are NaN (see ``encode_masked``)."""
        x, ok = self.encode_masked(inputs)
        x = x.copy()
        x[~ok] = np.nan
        return x

    def encode_masked(self, inputs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(float32[B, dim] with zeros where unusable, bool[B] usable)``, in sub-batches."""
        self.prepare()
        n = len(inputs)
        out = np.zeros((n, self.dim), np.float32)
        ok = np.zeros(n, bool)
        for s in range(0, n, self.batch_size):
            part = list(inputs[s : s + self.batch_size])
            x, m = self._encode(part)
            x = np.asarray(x, np.float32)
            if x.shape != (len(part), self.dim):
                raise Prom3eError(f"encoder '{self.name}' returned shape {x.shape}, "
                                  f"want ({len(part)}, {self.dim})")
            m = np.asarray(m, bool) & np.isfinite(x).all(1)
            out[s : s + len(part)][m] = x[m]
            ok[s : s + len(part)] = m
        return out, ok

    def prepare(self) -> None:
        """Load the backbone (and fix ``dim`` where it depends on the weights); idempotent."""

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def tower(self):  # -> torch.nn.Module | None
        """The trainable back of a trainable encoder (``None`` for frozen ones)."""
        return None

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts}) -> {self.dim}-d"


def resolve_device(device: str | None) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    device = device or "cpu"
    if device == "cpu":
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise Prom3eError("--device cuda was asked for, but no CUDA device is available")
    return device


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)).astype(np.float32)


def require(module: str, package: str, extra: str | None = None):
    """Import an optional backend or fail with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = f"pip install 'prom3e[{extra}]'" if extra else f"pip install {package}"
        raise Prom3eError(f"this encoder needs the package '{package}' ({hint}): {e}") from None
