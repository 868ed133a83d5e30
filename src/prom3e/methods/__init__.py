"""Missing-modality methods behind one interface (:class:`prom3e.methods.base.Method`).

>>> from prom3e.methods import create
>>> m = create("cmpt", FitConfig(epochs=20)).fit(train, y)
>>> proba = m.predict_proba(test, visible)

Names (as on the command line and in ``results.json``): see :data:`METHODS`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from prom3e.errors import Prom3eError

if TYPE_CHECKING:
    from prom3e.methods.base import FitConfig, Method

# name → "module:class"; imported on use
METHODS: dict[str, str] = {
    "prom3e": "prom3e_method:Prom3eMethod",
    "cmpt": "cmpt:Cmpt",
    "aoept": "aoept:Aoept",
    "aoept-prom3e": "aoept:AoeptProm3e",
    "moe-retriever": "moe_retriever:MoeRetriever",
    "zero-fill": "impute:ZeroFill",
    "mean-impute": "impute:MeanImpute",
    "knn-impute": "impute:KnnImpute",
    "late-fusion": "late_fusion:LateFusion",
}


def __getattr__(name: str) -> Any:  # FitConfig, Method: imported lazily (torch), so the CLI stays fast
    if name in ("FitConfig", "Method"):
        from prom3e.methods import base

        return getattr(base, name)
    raise AttributeError(name)


def create(name: str, cfg: FitConfig | None = None, **options) -> Method:
    """A fresh, untrained method by name; ``options`` go to its constructor."""
    if name not in METHODS:
        raise Prom3eError(f"unknown method '{name}' (have: {', '.join(METHODS)})")
    module, cls = METHODS[name].split(":")
    klass = getattr(importlib.import_module(f"prom3e.methods.{module}"), cls)
    try:
        return klass(cfg, **options)
    except TypeError as e:
        raise Prom3eError(f"{name}: bad option(s) {options} ({e})") from None


__all__ = ["METHODS", "FitConfig", "Method", "create"]
