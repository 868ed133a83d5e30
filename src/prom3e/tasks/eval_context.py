"""What every evaluation task reads: the prepared table, labels, split, galleries, encodings.

:func:`prepare` turns (model, table, :class:`~prom3e.tasks.eval_config.EvalConfig`) into an
:class:`EvalContext` once — schema check, stage-1 heads, modality and visible-set choice,
label codes, class modality and prototypes, the deterministic fit/test split — so the tasks
(:mod:`prom3e.tasks.eval_tasks`) start from the same state and compute only their own part.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from prom3e.data.labels import encode_labels
from prom3e.data.table import ModalTable, read_table
from prom3e.errors import Prom3eError
from prom3e.metrics import dedup_gallery, l2n
from prom3e.tasks import zeroshot as zs
from prom3e.tasks.common import FuserLike, stratified_split, stratified_subsample, visible_sets
from prom3e.tasks.eval_config import EvalConfig
from prom3e.tasks.uncertainty import rows_with

FIT_VALUES = ("train", "fit", "val", "validation")  # split-column values of the fit part


@dataclass
class Split:
    """Rows of one part of the split and its per-target galleries (built lazily)."""

    name: str
    rows: np.ndarray
    galleries: dict[str, tuple[torch.Tensor, np.ndarray]] = field(default_factory=dict)


@dataclass
class Need:
    """What a task needs encoded for one visible set (merged over the tasks by :meth:`Need.merge`)."""

    targets: list[str] = field(default_factory=list)  # modalities to reconstruct (unit norm)
    posterior: bool = False  # μ / logσ² of the visible set
    hidden: bool = False  # the posterior's hidden tokens too

    @staticmethod
    def merge(needs: Sequence[Need | None]) -> Need | None:
        given = [n for n in needs if n is not None]
        if not given:
            return None
        return Need(list(dict.fromkeys(t for n in given for t in n.targets)),
                    any(n.posterior or n.hidden for n in given), any(n.hidden for n in given))


@dataclass
class Encoded:
    """One split's rows that hold every visible modality, their posterior and reconstructions."""

    rows: np.ndarray
    post: Any  # the fuser's posterior (``mu``, ``logvar``, ``hidden``), or None
    recon: dict[str, torch.Tensor]


@dataclass
class EncodedSet:
    visible: tuple[str, ...]
    fit: Encoded
    test: Encoded

    def split(self, name: str) -> Encoded:
        return self.fit if name == "fit" else self.test


@dataclass
class EvalContext:
    fuser: FuserLike  # works in the aligned space (stage-1 heads already applied to ``table``)
    table: ModalTable
    known: list[str]  # the model's modalities
    mods: list[str]  # those evaluated
    sets: list[tuple[str, ...]]  # visible sets (model order)
    targets: list[str]  # retrieval targets
    y: np.ndarray  # int64 [N] class codes, −1 = no label
    classes: list[str]
    class_mod: str | None
    fit: Split
    test: Split
    stage1: bool  # the fuser's stage-1 heads mapped a table of raw features
    protos: torch.Tensor | None = None  # class prototypes for zero-shot
    proto_classes: np.ndarray | None = None
    proto_source: str | None = None
    calibration: list[dict] = field(default_factory=list)  # per retrieval pair: σ / error / rank (filled
    # by the retrieval task, pooled by the uncertainty task)
    batch_size: int = 1024
    progress: Any = None  # a tqdm bar (or None)

    def raw(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self.table.features[self.table.index(name)][rows]

    def has(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self.table.present[rows, self.table.index(name)]

    def dim(self, name: str) -> int:
        return self.table.dims[self.table.index(name)]

    @property
    def splits(self) -> tuple[Split, Split]:
        return self.fit, self.test

    def gallery(self, split: Split, t: str) -> tuple[torch.Tensor, np.ndarray]:
        """Distinct t-embeddings of the split's rows, and each table row's gallery index."""
        if t not in split.galleries:
            rows = split.rows[self.has(t, split.rows)]
            g, inv = dedup_gallery(self.raw(t, rows))
            where = np.full(len(self.table), -1, np.int64)
            where[rows] = inv.numpy()
            split.galleries[t] = (g, where)
        return split.galleries[t]

    def encode(self, rows: np.ndarray, visible: Sequence[str], need: Need) -> Encoded:
        """Posterior and reconstructions of ``rows`` from ``visible`` (each at most one fuser call)."""
        if len(rows) == 0:
            return Encoded(rows, None, {})
        batch = self.table.take(rows)
        post = self.fuser.encode(batch, visible=list(visible), hidden=need.hidden,
                                 batch_size=self.batch_size) if need.posterior else None
        rec = self.fuser.reconstruct(batch, targets=need.targets, visible=list(visible),
                                     batch_size=self.batch_size) if need.targets else {}
        return Encoded(rows, post, {k: l2n(v) for k, v in rec.items()})

    def encode_set(self, s: tuple[str, ...], need: Need) -> EncodedSet:
        """One visible set on the fit and test rows that hold all of it."""
        fit, test = (self.encode(rows_with(self.table, sp.rows, s), s, need) for sp in self.splits)
        return EncodedSet(s, fit, test)

    def step(self, label: str | None = None) -> None:
        """Advance the progress bar by one step (``label``: shown beside it)."""
        if self.progress is not None:
            if label is not None:
                self.progress.set_postfix_str(label)
            self.progress.update(1)


def _resolve_sets(sets: Sequence[Sequence[str]] | None, mods: list[str], known: list[str],
                  max_visible: int) -> list[tuple[str, ...]]:
    if sets is None:
        return visible_sets(mods, max_visible)
    out = []
    for s in sets:
        s = tuple(s)
        for n in s:
            if n not in known:
                raise Prom3eError(f"unknown modality '{n}' in visible set (the model knows: {', '.join(known)})")
        if not s or len(set(s)) != len(s):
            raise Prom3eError(f"visible set {'+'.join(s) or '(empty)'}: give distinct modality names")
        out.append(tuple(n for n in known if n in s))  # model order: stable keys
    return list(dict.fromkeys(out))


def _prototypes(table: ModalTable, y: np.ndarray, classes: list[str], class_mod: str,
                source: ModalTable | str | os.PathLike | None, label: str) -> tuple[torch.Tensor, np.ndarray, str]:
    """Class prototypes: from a file (label column + class-modality column) or the table."""
    if source is None:
        has = table.present[:, table.index(class_mod)] & (y >= 0)
        p, c = zs.class_prototypes(table.feature(class_mod)[has], y[has], len(classes))
        return p, c, "table"
    src = source if isinstance(source, ModalTable) else read_table(source)
    emb = src.feature(class_mod)
    names = np.asarray(src.label(label)).astype(str)
    lookup = {c: i for i, c in enumerate(classes)}
    extra = sorted(set(names) - set(lookup))  # classes unseen in the table: distractors
    lookup |= {c: len(classes) + i for i, c in enumerate(extra)}
    codes = np.array([lookup[n] for n in names], np.int64)  # one per class name: not per sample
    ok = src.present[:, src.index(class_mod)]
    p, c = zs.class_prototypes(emb[ok], codes[ok], len(lookup))
    return p, c, str(getattr(src, "source", "file"))


def _split(table: ModalTable, y: np.ndarray, cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Fit and test rows: by the split column or seeded and stratified, each capped."""
    if cfg.split_column is not None:
        part = np.asarray(table.label(cfg.split_column)).astype(str)
        fit_rows, test_rows = np.flatnonzero(np.isin(part, FIT_VALUES)), np.flatnonzero(part == "test")
        if not len(fit_rows) or not len(test_rows):
            raise Prom3eError(f"split column '{cfg.split_column}': need rows marked 'test' and rows marked "
                              f"{' / '.join(FIT_VALUES)}")
    else:
        fit_rows, test_rows = stratified_split(y, cfg.fit_frac, cfg.seed)
    fit_rows = stratified_subsample(fit_rows, y, cfg.max_fit, cfg.seed + 1)
    test_rows = stratified_subsample(test_rows, y, cfg.max_test, cfg.seed + 2)
    if len(test_rows) == 0 or len(fit_rows) == 0:  # an evaluation never reports on nothing
        raise Prom3eError(f"{table.source}: {len(table)} row(s) give {len(fit_rows)} fit and {len(test_rows)} test "
                          "rows; an evaluation needs both (a bigger table, or --split-column)")
    return fit_rows, test_rows


def prepare(fuser: FuserLike, table: ModalTable | str | os.PathLike, cfg: EvalConfig) -> EvalContext:
    """Check and prepare everything the tasks share (see the module docstring)."""
    if isinstance(table, str | os.PathLike):
        table = read_table(table)
    stage1 = getattr(fuser, "aligner", None) is not None
    if stage1:
        # raw encoder features + the fuser's stage-1 heads: map the table once, then evaluate
        # everything (δ = 0 queries, galleries, probes) in the aligned space with the bare model
        table = fuser.aligner.transform(table)
        fuser = copy.copy(fuser)
        fuser.aligner = None
    table = table.check_schema(fuser.modalities, fuser.dims)
    known = list(fuser.modalities)
    in_table = [m for m in known if table.present[:, table.index(m)].any()]
    mods = list(cfg.modalities) if cfg.modalities is not None else in_table
    for m in mods:
        if m not in known:
            raise Prom3eError(f"unknown modality '{m}' (the model knows: {', '.join(known)})")
    mods = [m for m in known if m in mods]
    sets = _resolve_sets(cfg.visible, mods, known, cfg.max_visible)
    targets = [t for t in known if t in (cfg.targets if cfg.targets is not None else mods)]
    for t in cfg.targets or []:
        if t not in known:
            raise Prom3eError(f"unknown target '{t}' (the model knows: {', '.join(known)})")

    label = cfg.label
    if label is not None:
        y, classes = encode_labels(table.label(label))
        if not (y >= 0).any():
            raise Prom3eError(f"label column '{label}' has no value")
    else:
        y, classes = np.full(len(table), -1, np.int64), []
    class_mod = None
    if label is not None and cfg.class_modality == "auto":
        class_mod = zs.detect_class_modality(table.features, table.present, table.modalities, y)
    elif cfg.class_modality not in (None, "auto", "none"):
        if cfg.class_modality not in known:
            raise Prom3eError(f"class modality '{cfg.class_modality}' is not a model modality ({', '.join(known)})")
        class_mod = cfg.class_modality
    fit_rows, test_rows = _split(table, y, cfg)
    if "retrieval" in cfg.tasks and not any(t not in s for s in sets for t in targets):
        raise Prom3eError("nothing to retrieve: every target is visible in every visible set")
    ctx = EvalContext(fuser, table, known, mods, sets, targets, y, classes, class_mod, Split("fit", fit_rows),
                      Split("test", test_rows), stage1, batch_size=cfg.batch_size)
    if class_mod is not None and label is not None and "zeroshot" in cfg.tasks:
        ctx.protos, ctx.proto_classes, ctx.proto_source = _prototypes(table, y, classes, class_mod,
                                                                      cfg.class_prototypes, label)
    return ctx
