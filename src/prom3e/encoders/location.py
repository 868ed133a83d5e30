"""Location encoders over ``(lat, lon)`` in degrees.

Both follow GeoCLIP: the Equal Earth projection, then per scale σ random Fourier features
``[cos 2πBv, sin 2πBv]`` (``B ~ N(0, σ²)``) and a "capsule" MLP; the capsules' outputs are
summed. ``geoclip`` is GeoCLIP's pretrained encoder (weights from the PyPI ``geoclip``
wheel, read as plain tensors; the package itself is never imported, so its torchvision
dependency is not needed). ``rff_location`` is ours: its fixed front is the multi-scale
RFF features (seeded), its trainable tower the capsule MLPs, trained by ``prom3e align``.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from prom3e.encoders.base import Encoder
from prom3e.errors import Prom3eError

_A1, _A2, _A3, _A4, _SF = 1.340264, -0.081106, 0.000893, 0.003796, 66.50336


def equal_earth(latlon):
    """``[B, 2]`` (lat, lon) degrees → Equal Earth ``(x, y)``, scaled as GeoCLIP (|x| ≲ 1)."""
    import torch

    lat, lon = torch.deg2rad(latlon[:, 0]), torch.deg2rad(latlon[:, 1])
    theta = torch.asin(math.sqrt(3.0) / 2 * torch.sin(lat))
    den = 3 * (9 * _A4 * theta**8 + 7 * _A3 * theta**6 + 3 * _A2 * theta**2 + _A1)
    x = 2 * math.sqrt(3.0) * lon * torch.cos(theta) / den
    y = _A4 * theta**9 + _A3 * theta**7 + _A2 * theta**3 + _A1 * theta
    return torch.stack((x, y), 1) * _SF / 180


def parse_latlon(inputs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(float32[B, 2], bool[B] valid)``: pairs with |lat| ≤ 90 and |lon| ≤ 180, finite."""
    x = np.zeros((len(inputs), 2), np.float64)
    ok = np.zeros(len(inputs), bool)
    for i, p in enumerate(inputs):
        try:
            lat, lon = float(p[0]), float(p[1])  # type: ignore[index]
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180:
            x[i], ok[i] = (lat, lon), True
    return x.astype(np.float32), ok


def _nn():
    import torch.nn as nn

    return nn


class RFF:  # namespace for the module factories below (keeps torch import lazy)
    @staticmethod
    def features(sigmas: Sequence[float], n_features: int, seed: int):
        """Fixed multi-scale RFF module: ``[B, 2]`` lat/lon → ``[B, len(σ)·2·n_features]``."""
        import torch

        nn = _nn()

        class MultiScaleRFF(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                g = torch.Generator().manual_seed(int(seed))
                b = torch.stack([torch.randn(n_features, 2, generator=g) * s for s in sigmas])
                self.register_buffer("b", b)  # [S, m, 2]

            def forward(self, latlon):
                v = equal_earth(latlon)
                vp = 2 * math.pi * torch.einsum("bi,smi->bsm", v, self.b)
                return torch.cat((torch.cos(vp), torch.sin(vp)), -1).flatten(1)

        return MultiScaleRFF()

    @staticmethod
    def tower(n_scales: int, in_per_scale: int, hidden: int, dim: int, layers: int = 3):
        """Per-scale capsule MLPs over the RFF features, summed: ``→ [B, dim]``."""
        import torch

        nn = _nn()

        class CapsuleTower(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.in_per_scale, self.out_dim = in_per_scale, dim
                for i in range(n_scales):
                    mods: list[nn.Module] = []
                    width = in_per_scale
                    for _ in range(layers):
                        mods += [nn.Linear(width, hidden), nn.ReLU()]
                        width = hidden
                    mods.append(nn.Linear(hidden, dim))
                    self.add_module(f"LocEnc{i}", nn.Sequential(*mods))
                self.n = n_scales

            def forward(self, feats):
                parts = feats.split(self.in_per_scale, dim=1)
                return torch.stack([self._modules[f"LocEnc{i}"](p)
                                    for i, p in enumerate(parts)]).sum(0)

        return CapsuleTower()


def geoclip_state_to_ours(state: dict) -> tuple[dict, dict]:
    """GeoCLIP/ecogeo state dict → (RFF buffers, tower state) in our module layout."""
    import torch

    bs, tower = {}, {}
    remap = {"capsule.1": "0", "capsule.3": "2", "capsule.5": "4", "head.0": "6"}
    for k, v in state.items():
        m = re.match(r"(?:.*\.)?LocEnc(\d+)\.(capsule\.0\.b|capsule\.\d|head\.0)\.?(\w*)$", k)
        if not m:
            continue
        i, part, leaf = int(m.group(1)), m.group(2), m.group(3)
        if part == "capsule.0.b":
            bs[i] = v
        else:
            tower[f"LocEnc{i}.{remap[part]}.{leaf}"] = v
    if not bs:
        raise Prom3eError("not a GeoCLIP location-encoder state dict (no LocEnc*.capsule.0.b)")
    return {"b": torch.stack([bs[i] for i in sorted(bs)])}, tower


class LocationNet:
    """Builds the full GeoCLIP-style module (RFF + capsule tower) from a state dict."""

    @staticmethod
    def from_geoclip_state(state: dict):
        nn = _nn()
        buffers, tower_state = geoclip_state_to_ours(state)
        b = buffers["b"]
        n_scales, m = int(b.shape[0]), int(b.shape[1])
        hidden = int(tower_state["LocEnc0.0.weight"].shape[0])
        dim = int(tower_state["LocEnc0.6.weight"].shape[0])
        rff = RFF.features([1.0] * n_scales, m, 0)
        rff.b.copy_(b)
        tower = RFF.tower(n_scales, 2 * m, hidden, dim)
        tower.load_state_dict(tower_state, strict=True)
        return nn.Sequential(rff, tower).eval(), dim


def geoclip_weights_path() -> str:
    spec = importlib.util.find_spec("geoclip")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise Prom3eError(
            "the 'geoclip' encoder needs GeoCLIP's weights: pip install --no-deps geoclip "
            "(or pass weights=PATH to location_encoder_weights.pth)"
        )
    root = Path(spec.submodule_search_locations[0])
    return str(root / "model" / "weights" / "location_encoder_weights.pth")


@lru_cache(maxsize=2)
def _load_geoclip(weights: str, device: str):
    import torch

    if not Path(weights).exists():
        raise Prom3eError(f"{weights}: no such GeoCLIP weights file")
    state = torch.load(weights, map_location="cpu", weights_only=True)  # tensors only
    net, dim = LocationNet.from_geoclip_state(state)
    return net.to(device), dim


def _encode_latlon(net, inputs: Sequence[Any], dim: int, device: str):
    import torch

    x, ok = parse_latlon(inputs)
    out = np.zeros((len(inputs), dim), np.float32)
    if ok.any():
        with torch.inference_mode():
            out[ok] = net(torch.from_numpy(x[ok]).to(device)).float().cpu().numpy()
    return out, ok


class GeoCLIPEncoder(Encoder):
    """GeoCLIP's pretrained location encoder (frozen), 512-d."""

    name = "geoclip"
    input_kind = "latlon"
    description = "GeoCLIP location encoder, 512-d"

    def __init__(self, weights: str | None = None, device: str = "cpu",
                 batch_size: int = 1024) -> None:
        super().__init__(device, batch_size)
        self.weights = weights
        self.dim = 512

    def options(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def prepare(self) -> None:
        _, self.dim = _load_geoclip(self.weights or geoclip_weights_path(), self.device)

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        net, self.dim = _load_geoclip(self.weights or geoclip_weights_path(), self.device)
        return _encode_latlon(net, inputs, self.dim, self.device)


class RFFLocationEncoder(Encoder):
    """Our location encoder: fixed multi-scale RFF front, trainable capsule tower."""

    name = "rff_location"
    input_kind = "latlon"
    trainable = True
    description = "multi-scale RFF of Equal-Earth (lat, lon) + capsule MLP tower"

    def __init__(self, sigmas: Sequence[float] = (1.0, 16.0, 256.0), n_features: int = 128,
                 hidden: int = 512, out_dim: int = 512, layers: int = 2, seed: int = 0,
                 device: str = "cpu", batch_size: int = 4096) -> None:
        super().__init__(device, batch_size)
        if not sigmas or any(float(s) <= 0 for s in sigmas):
            raise Prom3eError(f"rff_location: sigmas must be positive, got {list(sigmas)}")
        self.sigmas = [float(s) for s in sigmas]
        self.n_features, self.hidden, self.out_dim = int(n_features), int(hidden), int(out_dim)
        self.layers, self.seed = int(layers), int(seed)
        self.dim = 2 * self.n_features * len(self.sigmas)
        self._rff = None

    def options(self) -> dict[str, Any]:
        return {"sigmas": self.sigmas, "n_features": self.n_features, "hidden": self.hidden,
                "out_dim": self.out_dim, "layers": self.layers, "seed": self.seed}

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        if self._rff is None:
            self._rff = RFF.features(self.sigmas, self.n_features, self.seed).to(self.device)
        return _encode_latlon(self._rff, inputs, self.dim, self.device)

    def tower(self):
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return RFF.tower(len(self.sigmas), 2 * self.n_features, self.hidden, self.out_dim,
                             self.layers)
