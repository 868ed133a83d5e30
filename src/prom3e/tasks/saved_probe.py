"""A linear probe on the fused posterior mean μ, fitted once and saved beside a model.

``prom3e probe`` fits it; ``prom3e serve --probe FILE`` answers ``/classify`` with it.
Each labelled row is seen with all its present modalities and with ``views`` seeded random
non-empty subsets of them, so the probe classifies whatever a query row carries. Features
are standardised; the classifier is :func:`prom3e.tasks.probe.fit_softmax` (scikit-learn's
``LogisticRegression(C)`` objective). Accuracy is measured on a stratified held-out share of
the rows (by number of visible modalities), then the probe is refitted on every row.

The file is safetensors (no pickle): tensors ``weight [E, C]``, ``bias``, ``mean``,
``std``; metadata ``labels`` (JSON), ``modalities``, ``dims``, ``model`` (a fingerprint of
the weights: a probe refuses a model it was not fitted on), ``C``, ``views`` and the
held-out ``accuracy``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from prom3e import metrics
from prom3e.data.labels import encode_labels
from prom3e.data.table import ModalTable
from prom3e.errors import Prom3eError
from prom3e.io import atomic_write
from prom3e.tasks.common import stratified_split
from prom3e.tasks.probe import fit_softmax

FORMAT = "prom3e-probe/1"


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's parameters and buffers (names, shapes and values), 16 hex digits."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class SavedProbe:
    labels: list[str]
    weight: torch.Tensor  # [E, C]
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [E]
    std: torch.Tensor  # [E]
    modalities: list[str]
    dims: list[int]
    model: str
    info: dict = field(default_factory=dict)  # C, views, accuracy, rows

    def probabilities(self, mu: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` posterior means → class probabilities ``[B, C]`` (NaN rows stay NaN)."""
        z = (mu.float() - self.mean) / self.std
        return torch.softmax(torch.addmm(self.bias, z, self.weight), dim=1)

    def check_model(self, fuser, where: str) -> None:
        if fuser.modalities != self.modalities or fuser.dims != self.dims:
            raise Prom3eError(f"{where}: fitted on a model of {', '.join(self.modalities)}, not "
                              f"{', '.join(fuser.modalities)}")
        if model_fingerprint(fuser.model) != self.model:
            raise Prom3eError(f"{where}: fitted on another model (weights fingerprint {self.model}); "
                              "refit it with prom3e probe on this run")

    def save(self, path: str | os.PathLike) -> None:
        meta = {"format": FORMAT, "labels": json.dumps(self.labels), "modalities": json.dumps(self.modalities),
                "dims": json.dumps(self.dims), "model": self.model, "info": json.dumps(self.info)}
        tensors = {"weight": self.weight, "bias": self.bias, "mean": self.mean, "std": self.std}
        atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SavedProbe:
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
        except (SafetensorError, OSError) as e:
            raise Prom3eError(f"{path}: not a readable probe file ({str(e).splitlines()[0]})") from None
        if meta.get("format") != FORMAT or set(tensors) != {"weight", "bias", "mean", "std"}:
            raise Prom3eError(f"{path}: not a prom3e probe (write one with prom3e probe)")
        try:
            p = cls(json.loads(meta["labels"]), tensors["weight"].float(), tensors["bias"].float(),
                    tensors["mean"].float(), tensors["std"].float(), json.loads(meta["modalities"]),
                    json.loads(meta["dims"]), meta["model"], json.loads(meta.get("info", "{}")))
        except (KeyError, json.JSONDecodeError) as e:
            raise Prom3eError(f"{path}: damaged probe metadata ({e})") from None
        c, e = len(p.labels), p.mean.numel()
        if p.weight.shape != (e, c) or p.bias.shape != (c,) or p.std.shape != (e,):
            raise Prom3eError(f"{path}: damaged probe (weight {tuple(p.weight.shape)} for {c} labels, {e} features)")
        return p


def _views(present: np.ndarray, views: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Row index and visible mask of each training view: the full set, then random subsets."""
    rows = [np.arange(len(present))]
    masks = [present]
    for _ in range(views):
        keep = present & (rng.random(present.shape) < 0.5)
        empty = ~keep.any(1)  # keep one present modality, drawn uniformly
        if empty.any():
            pick = np.argmax(rng.random(present[empty].shape) * present[empty], axis=1)
            keep[np.flatnonzero(empty), pick] = True
        rows.append(np.arange(len(present)))
        masks.append(keep)
    return np.concatenate(rows), np.concatenate(masks)


def fit_probe(fuser, table: ModalTable, label: str, C: float = 1.0, views: int = 2, holdout: float = 0.2,
              seed: int = 0, max_iter: int = 100, batch_size: int = 1024) -> SavedProbe:
    """Fit a probe on ``table``'s labelled rows (see the module docstring)."""
    codes, classes = encode_labels(np.asarray(table.label(label), dtype=object))
    keep = np.flatnonzero(codes >= 0)
    if len(classes) < 2 or len(keep) < 4:
        raise Prom3eError(f"{table.source}: '{label}' has {len(classes)} class(es) on {len(keep)} labelled rows; "
                          "a probe needs ≥ 2 classes and ≥ 4 rows")
    sub = table.take(keep)
    y = codes[keep]
    rng = np.random.default_rng(seed)
    x, present = fuser.as_tensors(sub)  # the model's modality order (and the aligner's heads, if any)
    rows, masks = _views(present.numpy(), views, rng)
    mu = fuser.encode((x[rows], torch.from_numpy(masks)), batch_size=batch_size).mu.numpy()
    fit, test = stratified_split(y, 1.0 - holdout, seed) if holdout > 0 else (np.arange(len(y)), np.arange(0))
    in_fit = np.isin(rows, fit)
    accuracy: dict[str, float | None] = {}
    model = dict(modalities=fuser.modalities, dims=fuser.dims, model=model_fingerprint(fuser.model))
    if len(test):
        held = SavedProbe(classes, *_fit(mu[in_fit], y[rows[in_fit]], len(classes), C, max_iter), **model)
        pred = metrics.predict(held.probabilities(torch.from_numpy(mu[~in_fit])))
        sizes = masks[~in_fit].sum(1)
        yt = y[rows[~in_fit]]
        for k in sorted(set(sizes.tolist())):
            accuracy[str(k)] = metrics.accuracy(yt[sizes == k], pred[sizes == k])
    info = {"C": C, "views": views, "holdout": holdout, "seed": seed, "rows": int(len(keep)),
            "accuracy_by_visible": accuracy, "chance": float(np.bincount(y).max() / len(y))}
    return SavedProbe(classes, *_fit(mu, y[rows], len(classes), C, max_iter), **model, info=info)


def _fit(x: np.ndarray, y: np.ndarray, n_classes: int, C: float, max_iter: int):
    """``(weight, bias, mean, std)`` of a probe on standardised ``x``."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    w, b = fit_softmax((x - mean) / std, y, n_classes, C, max_iter)
    return w, b, torch.from_numpy(mean), torch.from_numpy(std)
