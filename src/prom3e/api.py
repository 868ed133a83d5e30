"""``Fuser``: the few calls most users need, on a trained run folder.

>>> fuser = Fuser.load("runs/demo")
>>> post = fuser.encode(table, visible=["image", "loc"])      # μ, logσ², ‖σ‖₁
>>> recon = fuser.reconstruct(table, targets=["text"])        # {"text": [N, d]}
>>> feats = fuser.features(table)                             # {"mu", "tokens"} for probing

Batches are a :class:`ModalTable`, a ``{name: array [B, d] or None}`` dict (rows that are
all-NaN count as missing), or an ``(x [B, M, Dmax], present [B, M])`` pair, as NumPy or
torch. Outputs are CPU float32 tensors. Evaluation is deterministic: decoding uses μ, or
a seeded average of ``n_samples`` draws.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch

from prom3e.config import check_args
from prom3e.data.table import ModalTable
from prom3e.data.vectors import check_vectors
from prom3e.errors import Prom3eError
from prom3e.models.prom3e import Posterior, Prom3e, Prom3eConfig
from prom3e.runtime import autocast, resolve_device, resolve_precision
from prom3e.train import checkpoint as ckpt

Batch = ModalTable | dict | tuple
_BOUNDS = {"batch_size": ">= 1", "n_samples": ">= 0", "seed": ">= 0"}


class Fuser:
    def __init__(self, model: Prom3e, device: str | torch.device = "cpu", precision: str = "fp32",
                 aligner=None):
        self.model = model.eval()
        self.device = torch.device(device)
        self.model.to(self.device)
        self.precision = precision
        self.aligner = aligner  # stage-1 heads: raw features → the aligned space (optional)

    @property
    def modalities(self) -> list[str]:
        return list(self.model.cfg.modalities)

    @property
    def dims(self) -> list[int]:
        return list(self.model.cfg.dims)

    @classmethod
    def load(cls, run: str | os.PathLike, device: Literal["auto", "cpu", "cuda"] = "auto",
             which: Literal["best", "last"] = "best", precision: Literal["auto", "fp32", "bf16"] = "auto",
             aligner: str | os.PathLike | None = None) -> Fuser:
        """Load a trained model (``which='last'`` for a run's latest epoch instead of the best).

        ``run``: a run folder (``prom3e train``) or exported folder (``prom3e export``), as a
        path, ``local-dir:PATH`` or ``hf-hub:ORG/NAME[@REVISION]`` (see :mod:`prom3e.hub`).
        ``precision='auto'`` runs bf16 where the hardware has bf16 matrix units (as training
        does); ``'fp32'`` for bit-exact comparisons with a model in memory. ``aligner``: a
        folder written by ``prom3e align --model-out`` (any reference form), or ``"bundled"``
        for the heads an exported model carries; batches then hold raw encoder features,
        which its heads map into the aligned space before fusion.
        """
        check_args(Fuser.load, {"device": device, "which": which, "precision": precision}, where="Fuser.load")
        from prom3e.hub import resolve_folder

        run = resolve_folder(run, what="run folder")  # a reference → a local folder
        if aligner == "bundled":
            aligner = run / "aligner"
            if not aligner.is_dir():
                raise Prom3eError(f"{run}: bundles no aligner (export it with --aligner)")
        elif aligner is not None:
            aligner = resolve_folder(aligner, what="aligner folder")
        modalities, dims = ckpt.read_schema(run)
        config = ckpt.read_json(run / "config.json")
        if not isinstance(config.get("model"), dict):
            raise Prom3eError(f"{run}/config.json: malformed (no 'model' mapping)")
        mc = Prom3eConfig.from_dict(config["model"], where=f"{run}/config.json: model")
        if mc.modalities != modalities or mc.dims != dims:
            raise Prom3eError(f"{run}: config.json and schema.json disagree on the modalities")
        weights = run / ("model.safetensors" if which == "best" else "last/model.safetensors")
        with torch.device("meta"):  # shapes only: a damaged config allocates nothing before the check
            ckpt.check_header(Prom3e(mc), weights)
        model = Prom3e(mc)
        ckpt.load_state_into(model, weights)
        dev = resolve_device(device)
        heads = None
        if aligner is not None:
            from prom3e.align import load_aligner

            heads = load_aligner(aligner)
            unknown = [m for m in heads.modalities if m not in modalities]
            if unknown or heads.dim != max(dims) or len(set(dims)) != 1:
                raise Prom3eError(f"{aligner}: its heads ({', '.join(heads.modalities)} → {heads.dim}-d) do not "
                                  f"fit the model in {run} ({', '.join(modalities)}, dims {sorted(set(dims))})")
        return cls(model, dev, resolve_precision(precision, dev), heads)

    # --- inputs --------------------------------------------------------------------------
    def as_tensors(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Any accepted batch → ``(x float32[B, M, Dmax], present bool[B, M])`` on CPU."""
        if isinstance(batch, dict) and self.aligner is not None:
            batch = self._dict_to_table(batch)
        if isinstance(batch, ModalTable):
            batch.check_values()  # NaN/inf or overflowing vectors: one clear line, not a NaN output
            if self.aligner is not None:
                batch = self.aligner.transform(batch)
            t = batch.check_schema(self.modalities, self.dims)
            return torch.from_numpy(t.padded()), torch.from_numpy(t.present)
        if isinstance(batch, tuple):
            x, present = (torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v) for v in batch)
            if x.dim() != 3 or x.shape[1] != len(self.dims) or x.shape[2] < max(self.dims):
                raise Prom3eError(f"x has shape {tuple(x.shape)}, want (B, {len(self.dims)}, {max(self.dims)})")
            if present.shape != x.shape[:2]:
                raise Prom3eError(f"present has shape {tuple(present.shape)}, want {tuple(x.shape[:2])}")
            x = x[..., : max(self.dims)].float()
            for m, name in enumerate(self.modalities):
                rows = present[:, m].bool().nonzero()[:, 0].numpy()
                check_vectors(x[:, m, : self.dims[m]].numpy(), name, "x", rows, select=True)
            return x, present.bool()
        if isinstance(batch, dict):
            return self._from_dict(batch)
        raise Prom3eError(f"unsupported batch type {type(batch).__name__}")

    @staticmethod
    def _dict_to_table(batch: dict) -> ModalTable:
        """``{name: [B, d] with all-NaN rows missing, or None}`` → a table (raw features)."""
        names = [k for k, v in batch.items() if v is not None]
        feats = [np.asarray(batch[k], dtype=np.float32) for k in names]
        if not feats or any(f.ndim != 2 for f in feats) or len({len(f) for f in feats}) != 1:
            raise Prom3eError("batch dict: give 2-D arrays [B, d] with one row count")
        present = np.stack([~np.isnan(f).all(1) for f in feats], 1)
        feats = [np.where(present[:, i, None], f, 0).astype(np.float32) for i, f in enumerate(feats)]
        return ModalTable(names, feats, present, {}, "<batch>")

    def _from_dict(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        unknown = [k for k in batch if k not in self.modalities]
        if unknown:
            raise Prom3eError(f"unknown modality '{unknown[0]}' (the model knows: {', '.join(self.modalities)})")
        sizes = {len(v) for v in batch.values() if v is not None}
        if len(sizes) != 1:
            raise Prom3eError("batch dict: arrays must share one non-zero row count")
        b = sizes.pop()
        x = torch.zeros(b, len(self.dims), max(self.dims))
        present = torch.zeros(b, len(self.dims), dtype=torch.bool)
        for m, (name, dim) in enumerate(zip(self.modalities, self.dims, strict=True)):
            v = batch.get(name)
            if v is None:
                continue
            v = torch.as_tensor(v).float()
            if v.dim() != 2 or v.shape[1] != dim:
                raise Prom3eError(f"modality '{name}' has shape {tuple(v.shape)}, want (B, {dim})")
            missing = torch.isnan(v).all(1)
            check_vectors(v.numpy(), name, "batch", (~missing).nonzero()[:, 0].numpy(), select=True)
            x[:, m, :dim] = torch.where(missing[:, None], 0.0, v)
            present[:, m] = ~missing
        return x, present

    def visible_mask(self, present: torch.Tensor, visible: Sequence[str] | None) -> torch.Tensor:
        if visible is None:
            mask = present
        else:
            cols = torch.zeros(len(self.modalities), dtype=torch.bool)
            for name in visible:
                if name not in self.modalities:
                    raise Prom3eError(f"unknown modality '{name}' (the model knows: {', '.join(self.modalities)})")
                cols[self.modalities.index(name)] = True
            mask = present & cols
        empty = (~mask.any(1)).nonzero()
        if len(empty):
            which = "no modality present" if visible is None else f"none of {', '.join(visible)} present"
            raise Prom3eError(f"row {int(empty[0])}: {which} ({len(empty)} such row(s))")
        return mask

    def _chunks(self, batch: Batch, visible: Sequence[str] | None, batch_size: int
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, present = self.as_tensors(batch)
        vis = self.visible_mask(present, visible)
        for i in range(0, len(x), batch_size):
            yield (x[i:i + batch_size].to(self.device, non_blocking=True),
                   vis[i:i + batch_size].to(self.device, non_blocking=True))

    # --- the calls -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, batch: Batch, visible: Sequence[str] | None = None, hidden: bool = False,
               batch_size: int = 1024) -> Posterior:
        """Posterior of each row given its visible modalities (default: all present)."""
        check_args(Fuser.encode, {"visible": visible, "hidden": hidden, "batch_size": batch_size}, _BOUNDS,
                   "Fuser.encode")
        parts = []
        for x, vis in self._chunks(batch, visible, batch_size):
            with autocast(self.device, self.precision):
                p = self.model.encode(x, vis, hidden=hidden)
            parts.append(p)
        cat = lambda name: torch.cat([getattr(p, name).float().cpu() for p in parts])  # noqa: E731
        return Posterior(cat("mu"), cat("logvar"), cat("hidden") if hidden else None)

    @torch.no_grad()
    def reconstruct(self, batch: Batch, targets: Sequence[str] | None = None,
                    visible: Sequence[str] | None = None, n_samples: int = 0, seed: int = 0,
                    batch_size: int = 1024, return_samples: bool = False,
                    return_sigma: bool = False) -> dict[str, torch.Tensor]:
        """Reconstruct ``targets`` (default: every modality) → ``{name: [B, d]}``, unit norm.

        ``n_samples = 0`` decodes μ; ``n > 0`` averages n seeded draws (re-normalised). With
        ``return_samples``, ``'{name}:samples'`` holds the draws ``[n, B, d]`` too; with
        ``return_sigma``, ``'sigma_l1'`` holds each row's ‖σ‖₁ ``[B]`` (same encoding pass).
        """
        check_args(Fuser.reconstruct, {"targets": targets, "visible": visible, "n_samples": n_samples, "seed": seed,
                                       "batch_size": batch_size, "return_samples": return_samples,
                                       "return_sigma": return_sigma}, _BOUNDS, "Fuser.reconstruct")
        targets = list(dict.fromkeys(targets)) if targets is not None else self.modalities
        # decoded in the model's modality order: its stacked decoders read a complete set of
        # modalities as 0..M-1 (a permuted complete set would get each other's decoders)
        mods = sorted(self._index(t) for t in targets)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out: dict[str, list[torch.Tensor]] = {}
        for x, vis in self._chunks(batch, visible, batch_size):
            with autocast(self.device, self.precision):
                post = self.model.encode(x, vis)
                if n_samples:
                    mean, draws = self.model.decode_mean(post, mods, n_samples, gen, return_samples)
                else:
                    mean, draws = self.model.decode(post.mu, mods), None
            if return_sigma:
                out.setdefault("sigma_l1", []).append(post.sigma_l1.float().cpu())
            for t, m in enumerate(mods):
                name, d = self.modalities[m], self.dims[m]
                out.setdefault(name, []).append(mean[t, :, :d].float().cpu())
                if return_samples and draws is not None:
                    out.setdefault(f"{name}:samples", []).append(draws[t, ..., :d].float().cpu())
        keys = [k for k in ("sigma_l1", *(f"{n}{s}" for n in targets for s in ("", ":samples"))) if k in out]
        return {k: torch.cat(out[k], dim=1 if k.endswith(":samples") else 0) for k in keys}

    def features(self, batch: Batch, visible: Sequence[str] | None = None,
                 batch_size: int = 1024) -> dict[str, torch.Tensor]:
        """Features for probing: ``mu [B, E]`` and all special + register tokens flattened."""
        post = self.encode(batch, visible, hidden=True, batch_size=batch_size)
        return {"mu": post.mu, "tokens": post.hidden.flatten(1)}

    def _index(self, name: str) -> int:
        if name not in self.modalities:
            raise Prom3eError(f"unknown modality '{name}' (the model knows: {', '.join(self.modalities)})")
        return self.modalities.index(name)
