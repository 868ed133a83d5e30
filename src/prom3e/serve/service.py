"""The model behind the HTTP service: loaded once per worker, every call batched over the
request's rows and run under ``torch.inference_mode`` (one call at a time per worker).

Independent of the web framework: :mod:`prom3e.serve.app` turns requests into these calls.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prom3e.api import Fuser
from prom3e.errors import Prom3eError
from prom3e.serve.inputs import BadInput, RowParser
from prom3e.serve.raw import build_raw_inputs
from prom3e.serve.resources import Examples, Gallery, Prototypes, load_examples, load_galleries, load_prototypes
from prom3e.tasks import uncertainty as unc
from prom3e.tasks.common import l2n

MAX_SUBSET_ROWS = 4096  # rows × subsets encoded for one /encode?subsets request


@dataclass
class ServeConfig:
    """Everything a worker needs to load (JSON-able: passed to workers through the environment)."""

    model: str
    aligner: str | None = None
    encoders: str | None = None
    indexes: dict[str, str] = field(default_factory=dict)
    index_meta: dict[str, str] = field(default_factory=dict)
    gallery: str | None = None
    prototypes: str | None = None
    label: str = "species"
    class_modality: str | None = None
    examples: str | None = None
    max_rows: int = 512
    max_body_bytes: int = 32 * 2**20
    api_key_env: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    device: str = "cpu"
    precision: str = "auto"  # as Fuser.load: bf16 where the hardware has bf16 matrix units
    threads: int | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class Service:
    def __init__(self, cfg: ServeConfig) -> None:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.fuser = Fuser.load(cfg.model, device=cfg.device, precision=cfg.precision)
        self.aligner = None
        if cfg.aligner:
            from prom3e.align import load_aligner

            self.aligner = load_aligner(cfg.aligner)
            self._check_aligner()
        self.modalities, self.dims = self.fuser.modalities, self.fuser.dims
        self.raw, self.raw_unavailable = build_raw_inputs(self.modalities, self.dims, cfg.model, self.aligner,
                                                          cfg.encoders, "cpu")
        self.parser = RowParser(self.modalities, self.dims, self.raw, self.raw_unavailable, self.aligner,
                                cfg.max_rows)
        self.galleries: dict[str, Gallery] = load_galleries(self.modalities, self.dims, cfg.indexes,
                                                            cfg.index_meta, cfg.gallery)
        self.prototypes: Prototypes | None = None
        if cfg.prototypes:
            self.prototypes = load_prototypes(self.fuser, cfg.prototypes, cfg.label, cfg.class_modality, cfg.seed)
        self.examples: Examples | None = None
        if cfg.examples:
            self.examples = load_examples(cfg.examples, self.modalities, self.dims)
        self.lock = threading.Lock()

    def _check_aligner(self) -> None:
        a, dims = self.aligner, self.fuser.dims
        unknown = [m for m in a.modalities if m not in self.fuser.modalities]
        if unknown or len(set(dims)) != 1 or a.dim != dims[0]:
            raise Prom3eError(f"{self.cfg.aligner}: its heads ({', '.join(a.modalities)} → {a.dim}-d) do not fit "
                              f"the model in {self.cfg.model} ({', '.join(self.fuser.modalities)}, dims "
                              f"{sorted(set(dims))})")

    # --- description ---------------------------------------------------------------------
    def schema(self) -> dict:
        mods = []
        for m, d in zip(self.modalities, self.dims, strict=True):
            head = self.aligner is not None and m in self.aligner.modalities
            mods.append({"name": m, "dim": d,
                         "feature_dim": self.aligner.in_dims[m] if head else None,
                         "raw": self.raw[m].describe() if m in self.raw else None,
                         "raw_unavailable": self.raw_unavailable.get(m)})
        mc = self.fuser.model.cfg
        return {
            "model": {"path": str(Path(self.cfg.model)), "config": mc.to_dict(), "precision": self.fuser.precision,
                      "parameters": sum(p.numel() for p in self.fuser.model.parameters())},
            "modalities": mods,
            "aligner": None if self.aligner is None else {"path": self.cfg.aligner, "anchor": self.aligner.anchor,
                                                          "dim": self.aligner.dim,
                                                          "modalities": self.aligner.modalities},
            "indexes": {k: g.describe() for k, g in self.galleries.items()},
            "prototypes": None if self.prototypes is None else self.prototypes.describe(),
            "examples": None if self.examples is None else {"source": self.examples.source,
                                                            "rows": len(self.examples.table)},
            "limits": {"max_rows": self.cfg.max_rows, "max_body_bytes": self.cfg.max_body_bytes},
        }

    # --- the calls -----------------------------------------------------------------------
    def _run(self, fn, *args, **kwargs):
        with self.lock, torch.inference_mode():
            return fn(*args, **kwargs)

    def visible_names(self, present: torch.Tensor) -> list[list[str]]:
        return [[self.modalities[j] for j in np.flatnonzero(row)] for row in present.numpy()]

    def encode(self, rows: list[dict], logvar: bool = False, subsets: bool = False) -> list[dict]:
        x, present = self.parser.parse(rows)
        post = self._run(self.fuser.encode, (x, present))
        sig = post.sigma_l1.tolist()
        mu = post.mu.numpy()  # rows of float32 arrays: the response writes them directly
        lv = post.logvar.numpy() if logvar else None
        out = [{"visible": v, "mu": mu[i], "sigma_l1": sig[i], **({"logvar": lv[i]} if logvar else {})}
               for i, v in enumerate(self.visible_names(present))]
        if subsets:
            for i, s in enumerate(self.sigma_by_subset(x, present)):
                out[i]["subsets"] = s
        return out

    def sigma_by_subset(self, x: torch.Tensor, present: torch.Tensor) -> list[list[dict]]:
        """‖σ‖₁ of every non-empty subset of each row's visible modalities (one batch)."""
        rows, masks, names = [], [], []
        for i, p in enumerate(present.numpy()):
            vis = np.flatnonzero(p)
            subs = [c for k in range(1, len(vis) + 1) for c in itertools.combinations(vis, k)]
            for c in subs:
                m = np.zeros(len(p), bool)
                m[list(c)] = True
                rows.append(i)
                masks.append(m)
                names.append([self.modalities[j] for j in c])
        if len(rows) > MAX_SUBSET_ROWS:
            raise BadInput("subsets", f"{len(rows)} (row, subset) pairs; the limit is {MAX_SUBSET_ROWS} "
                           "(send fewer rows or fewer visible modalities)")
        idx = torch.tensor(rows)
        sig = self._run(self.fuser.encode, (x[idx], torch.from_numpy(np.stack(masks)))).sigma_l1.tolist()
        out: list[list[dict]] = [[] for _ in range(len(x))]
        for r, n, s in zip(rows, names, sig, strict=True):
            out[r].append({"visible": n, "sigma_l1": s})
        return out

    def _targets(self, targets: list[str] | None, field_name: str = "targets") -> list[str]:
        if targets is None:
            return list(self.modalities)
        if not targets:
            raise BadInput(field_name, "empty list (omit it for every modality)")
        for t in targets:
            if t not in self.modalities:
                raise BadInput(field_name, f"unknown modality '{t}' (the model knows: {', '.join(self.modalities)})")
        return list(dict.fromkeys(targets))

    def reconstruct(self, rows: list[dict], targets: list[str] | None, n_samples: int, seed: int,
                    spread: bool) -> list[dict]:
        x, present = self.parser.parse(rows)
        targets = self._targets(targets)
        if spread and n_samples < 2:
            raise BadInput("return_spread", "needs n_samples ≥ 2 (the spread is over the draws)")
        rec = self._run(self.fuser.reconstruct, (x, present), targets=targets, n_samples=n_samples, seed=seed,
                        return_samples=spread, return_sigma=True)
        vis = self.visible_names(present)
        out = []
        values = {t: rec[t].numpy() for t in targets}
        spreads = {}
        if spread:  # mean over draws of 1 − cos(draw, the draws' normalised mean)
            for t in targets:
                draws = l2n(rec[f"{t}:samples"].reshape(-1, rec[t].shape[1])).reshape(rec[f"{t}:samples"].shape)
                spreads[t] = (1 - (draws * rec[t][None]).sum(-1)).mean(0).tolist()
        sig = rec["sigma_l1"].tolist()
        for i in range(len(x)):
            item = {"visible": vis[i], "sigma_l1": sig[i], "reconstructions": {t: values[t][i] for t in targets}}
            if spread:
                item["spread"] = {t: spreads[t][i] for t in targets}
            out.append(item)
        return out

    def _query(self, x: torch.Tensor, present: torch.Tensor, target: str, delta: float) -> torch.Tensor:
        """Modality inversion: ``(1 − δ)·mean of the visible vectors + δ·reconstruction``
        (δ = 1 where a row's visible modalities differ in dim from the target)."""
        t = self.modalities.index(target)
        d = self.dims[t]
        rec = l2n(self._run(self.fuser.reconstruct, (x, present), targets=[target])[target])
        if delta >= 1:
            return rec
        b, m, _ = x.shape
        same = torch.tensor([dd == d for dd in self.dims])
        usable = ~(present & ~same).any(1)  # rows whose visible vectors all have the target's dim
        xs = l2n(x[..., :d].reshape(-1, d)).reshape(b, m, d) * present[..., None]
        raw = l2n(xs.sum(1))  # = query_mean of the visible vectors
        return l2n(torch.where(usable[:, None], (1 - delta) * raw + delta * rec, rec))

    def retrieve(self, rows: list[dict], target: str, k: int, delta: float) -> list[dict]:
        if target not in self.modalities:
            raise BadInput("target", f"unknown modality '{target}' (the model knows: {', '.join(self.modalities)})")
        if target not in self.galleries:
            have = ", ".join(self.galleries) or "none"
            raise BadInput("target", f"no gallery index for '{target}' (loaded: {have}); start the server with "
                           f"--index {target}=FILE or --gallery TABLE", 501)
        x, present = self.parser.parse(rows)
        q = self._query(x, present, target, delta)
        g = self.galleries[target]
        scores, ids = self._run(g.index.search, q, k)
        vis = self.visible_names(present)
        return [{"visible": vis[i], "items": items} for i, items in enumerate(g.items(scores, ids))]

    def classify(self, rows: list[dict], k: int, delta: float) -> list[dict]:
        if self.prototypes is None:
            raise BadInput("", "no class prototypes loaded; start the server with --prototypes TABLE "
                           "(a labelled table with the class modality)", 501)
        x, present = self.parser.parse(rows)
        p = self.prototypes
        q = self._query(x, present, p.modality, delta)
        prob, idx = p.top(q, k)
        vis = self.visible_names(present)
        return [{"visible": vis[i], "labels": [{"label": p.labels[j], "probability": float(pr)}
                                               for j, pr in zip(idx[i].tolist(), prob[i].tolist(), strict=True)]}
                for i in range(len(x))]

    def next_modality(self, rows: list[dict]) -> list[dict]:
        x, present = self.parser.parse(rows)
        base, expected = self._run(unc.expected_reductions, self.fuser, x, present, self.modalities)
        out = []
        for i, v in enumerate(self.visible_names(present)):
            ranking = sorted(((self.modalities[j], float(expected[i, j])) for j in range(len(self.modalities))
                              if np.isfinite(expected[i, j])), key=lambda t: -t[1])
            out.append({"visible": v, "sigma_l1": float(base[i]),
                        "ranking": [{"modality": m, "expected_reduction": r} for m, r in ranking],
                        "next": ranking[0][0] if ranking else None})
        return out

    def example_list(self) -> list[dict]:
        if self.examples is None:
            raise BadInput("", "no example table loaded; start the server with --examples TABLE", 501)
        return self.examples.listing()

    def example(self, row: int) -> dict[str, Any]:
        if self.examples is None:
            raise BadInput("", "no example table loaded; start the server with --examples TABLE", 501)
        if not 0 <= row < len(self.examples.table):
            raise BadInput("row", f"{row} is not an example row (0 … {len(self.examples.table) - 1})", 404)
        return self.examples.row(row)
