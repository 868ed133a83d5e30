"""Analytic FLOPs per training sample: only the work that is actually needed.

Counted: matrix multiplies (2 FLOPs per multiply-add); element-wise work, norms and the
optimiser are left out (they are memory-bound and small next to the matmuls). Training is
forward + backward = 3 × forward. Formulas (E = width, F = MLP width, D = input dim,
P = 2 + registers prefix tokens, v = mean visible modalities per row, t = mean decoded
target modalities per row, B = batch):

ours, per sample
  projection      v · 2(D·E + E·E)                 (visible pairs only)
  first layer     P·(6E²)/B                         (constant prefix: once per batch)
                  + v · 6E² (4E² if it is also the last layer: no queries needed there)
  middle layers   (P + v) · (8E² + 4EF) + 4E(P + v)²
  last layer      2 · (2E² + 2E² + 4EF) + 2 · 4E(P + v) + K/V of (P + v) positions
                  (outputs only at [mu], [logvar]; in a 1-layer model the prefix queries
                  are batch-constant too)
  decoders        t · 2(E·E + E·D)                  (target pairs only)
  loss            t · 2·B·D                         (pairwise distances of each target group)

reference, per sample (everything it computes)
  projection      M · 2(D·E + E·E)
  encoder         depth · [(P + v)(8E² + 4EF) + 4E(P + v)²]
  decoders        M · 2(E·E + E·D)
  loss            M · 2·B·D
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Shape:
    n_mod: int = 6
    in_dim: int = 512
    embed_dim: int = 1024
    mlp_dim: int = 2048
    depth: int = 1
    registers: int = 4
    batch: int = 1024
    visible: float = 1.1  # mean visible modalities per row: P(1) = 0.9, P(2) = 0.1
    targets: float | None = None  # mean decoded modalities per row; default: n_mod − visible


def _layer_full(e: int, f: int, n: float) -> float:
    return n * (8 * e * e + 4 * e * f) + 4 * e * n * n


def ours_forward(s: Shape) -> dict[str, float]:
    """Forward matmul FLOPs per sample for our model, by part."""
    e, f, d, b, v = s.embed_dim, s.mlp_dim, s.in_dim, s.batch, s.visible
    t = s.n_mod - v if s.targets is None else s.targets
    p = 2 + s.registers
    out = 2
    parts = {"projection": v * 2 * (d * e + e * e)}
    enc = p * 6 * e * e / b  # prefix QKV, once per batch
    if s.depth == 1:
        enc += v * 4 * e * e  # keys/values of the visible tokens
        enc += out * (2 * e * e + 4 * e * f) + out * 4 * e * (p + v)  # out-proj + MLP + attention at 2 positions
    else:
        enc += v * 6 * e * e + (p + v) * (2 * e * e + 4 * e * f) + 4 * e * (p + v) ** 2  # first layer
        enc += (s.depth - 2) * _layer_full(e, f, p + v)
        enc += (p + v) * 4 * e * e + out * (2 * e * e + 2 * e * e + 4 * e * f) + out * 4 * e * (p + v)
    parts["encoder"] = enc
    parts["decoders"] = t * 2 * (e * e + e * d)
    parts["loss"] = t * 2 * b * d
    return parts


def reference_forward(s: Shape) -> dict[str, float]:
    """Forward matmul FLOPs per sample for the reference structure, by part."""
    e, f, d, b, m = s.embed_dim, s.mlp_dim, s.in_dim, s.batch, s.n_mod
    n = 2 + s.registers + s.visible
    return {"projection": m * 2 * (d * e + e * e), "encoder": s.depth * _layer_full(e, f, n),
            "decoders": m * 2 * (e * e + e * d), "loss": m * 2 * b * d}


def train_flops(parts: dict[str, float]) -> float:
    """Forward + backward = 3 × the forward FLOPs."""
    return 3 * sum(parts.values())


def encode_flops(s: Shape, ours: bool = True) -> float:
    """Forward FLOPs per sample of encoding only."""
    parts = ours_forward(s) if ours else reference_forward(s)
    return parts["projection"] + parts["encoder"]
