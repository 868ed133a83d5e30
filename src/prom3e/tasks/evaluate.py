"""The evaluation suite: one call runs every task on a table and writes the report.

>>> metrics = evaluate(fuser, table, label="species", out_dir="eval")

Protocol (see ``docs/EVALUATION.md``):

1. The table is matched to the model's schema, then split deterministically by ``seed``
   into a *fit* part (δ selection, probe training) and a *test* part (every reported
   number), stratified by the label when given (``fit_frac`` of each class to fit;
   singleton classes to fit). Each part is capped (``max_fit`` / ``max_test`` rows, a
   stratified deterministic subsample) so the suite stays fast on big tables.
2. For every visible set V: retrieval to every target t ∉ V (cross δ = 0, reconstruction
   δ = 1, inversion δ chosen on fit), zero-shot against the class prototypes, linear
   probes on raw / μ / tokens / reconstructions, ‖σ‖₁ for calibration.
3. Uncertainty per subset up to ``max_subset_size``, "which modality next", and the
   modality gap of raw inputs vs hidden states vs reconstructions.
4. ``metrics.json`` (atomic, stable keys, deterministic), ``report.md`` and PNG plots.

The options travel as one :class:`~prom3e.tasks.eval_config.EvalConfig`
(:func:`run_suite`); :func:`evaluate` is the keyword form of the same call. The shared state
is :class:`~prom3e.tasks.eval_context.EvalContext`, the tasks are
:mod:`prom3e.tasks.eval_tasks`, the paper's claims :mod:`prom3e.tasks.claims`, and
:mod:`prom3e.viz.report` renders the result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prom3e.data.table import ModalTable
from prom3e.io import write_text
from prom3e.runtime import progress_bar, torch_threads
from prom3e.tasks.claims import claims, worded
from prom3e.tasks.common import FuserLike, jsonable
from prom3e.tasks.eval_config import ALL_TASKS, EvalConfig
from prom3e.tasks.eval_context import FIT_VALUES, EvalContext, Need, prepare
from prom3e.tasks.eval_tasks import PROBE_FEATURES, TASKS, Task, TaskResult
from prom3e.tasks.retrieval import DELTA_GRID
from prom3e.viz.report import write_outputs

__all__ = ["FIT_VALUES", "OUTPUTS", "PROBE_FEATURES", "SCHEMA_VERSION", "evaluate", "run_suite", "run_tasks"]
SCHEMA_VERSION = 1
OUTPUTS = ("metrics.json", "report.md", "*.png", "next_modality.csv")  # what an evaluation writes


def evaluate(
    fuser: FuserLike,
    table: ModalTable | str | os.PathLike,
    label: str | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    modalities: Sequence[str] | None = None,
    visible: Sequence[Sequence[str]] | None = None,
    targets: Sequence[str] | None = None,
    max_visible: int = 2,
    class_modality: str | None = "auto",
    class_prototypes: ModalTable | str | os.PathLike | None = None,
    tasks: Sequence[str] = ALL_TASKS,
    seed: int = 0,
    fit_frac: float = 0.5,
    split_column: str | None = None,
    max_fit: int | None = 2000,
    max_test: int | None = 2000,
    max_subset_size: int = 3,
    delta_grid: Sequence[float] = DELTA_GRID,
    batch_size: int = 1024,
    threads: int | None = None,
    plots: bool = True,
    progress: bool = False,
    command: str | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the evaluation suite; return the metrics (and write them when ``out_dir`` is set).

    ``modalities`` restricts the modalities used (default: all of the model's that occur in
    the table); ``visible`` the visible sets (default: every subset of ``modalities`` of
    1 to ``max_visible`` modalities); ``targets`` the retrieval targets (default: every
    modality). ``class_modality``: ``"auto"`` detects a modality holding one embedding per
    class, ``None`` turns zero-shot off. ``class_prototypes``: a table (or path) with the ``label`` column and the class
    modality, one row per class; default: the prototypes found in ``table``.
    ``split_column``: use a column of the table for the split (rows marked ``test`` are the
    test part, rows marked ``train``/``fit``/``val`` the fit part) instead of ``fit_frac``.
    ``threads``: torch CPU threads while evaluating (restored after; default: unchanged) —
    1 is much faster on an oversubscribed machine, where multi-threaded small ops stall.
    ``settings``: entries added to (or replacing) ``metrics["settings"]``, for a caller that
    evaluates rows taken from a larger table (:mod:`prom3e.tasks.evaluate_dataset`).
    Every option is an :class:`~prom3e.tasks.eval_config.EvalConfig` field (validated there).
    """
    config = EvalConfig.from_dict({
        "label": label, "modalities": modalities, "visible": visible, "targets": targets,
        "max_visible": max_visible, "class_modality": class_modality, "class_prototypes": class_prototypes,
        "tasks": tasks, "seed": seed, "fit_frac": fit_frac, "split_column": split_column, "max_fit": max_fit,
        "max_test": max_test, "max_subset_size": max_subset_size, "delta_grid": delta_grid,
        "batch_size": batch_size, "threads": threads, "plots": plots, "progress": progress, "command": command,
        "settings": settings,
    })
    return run_suite(fuser, table, config, out_dir)


def run_suite(fuser: FuserLike, table: ModalTable | str | os.PathLike, config: EvalConfig,
              out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """:func:`evaluate` with its options as one validated :class:`EvalConfig`."""
    config.validate()
    with torch_threads(config.threads):
        ctx = prepare(fuser, table, config)
        results, extras = run_tasks(ctx, config)
    metrics: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "settings": _settings(ctx, config),
                               **{name: r.metrics for name, r in results.items()}}
    metrics["claims"] = claims(metrics)
    metrics = jsonable(metrics)
    if out_dir is not None:
        extras["claims"] = worded(metrics["claims"])
        write_outputs(Path(out_dir), metrics, run_extras=extras, plots=config.plots, command=config.command)
        write_text(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def run_tasks(ctx: EvalContext, config: EvalConfig) -> tuple[dict[str, TaskResult], dict[str, Any]]:
    """Run the configured tasks (in the suite's order) → ({name: result}, extras for the report).

    Each visible set is encoded once, with what every task asks for it, and scored by each.
    """
    tasks: list[Task] = [cls(ctx, config) for name, cls in TASKS.items() if name in config.tasks]
    total = len(ctx.sets) + sum(t.steps() for t in tasks)
    with progress_bar(total=total, show=config.progress, desc="evaluate", unit="step") as ctx.progress:
        for s in ctx.sets:
            needs = [t.needs(s) for t in tasks]
            need = Need.merge(needs)
            if need is not None:
                enc = ctx.encode_set(s, need)
                for t, n in zip(tasks, needs, strict=True):
                    if n is not None:
                        t.score(enc)
            ctx.step("+".join(s))
        results = {t.name: t.result() for t in tasks}
    ctx.progress = None
    extras = {name: r.extras for name, r in results.items() if name in ("uncertainty", "gap")}
    extras["calibration"] = ctx.calibration
    return results, extras


def _settings(ctx: EvalContext, cfg: EvalConfig) -> dict[str, Any]:
    return {
        "seed": cfg.seed, "label": cfg.label, "n_classes": len(ctx.classes), "class_modality": ctx.class_mod,
        "prototypes": ctx.proto_source, "modalities": ctx.mods, "model_modalities": ctx.known,
        "model_dims": list(ctx.fuser.dims), "stage1_heads": ctx.stage1,
        "visible_sets": [list(s) for s in ctx.sets], "targets": ctx.targets, "tasks": list(cfg.tasks),
        "n_rows": len(ctx.table), "fit_frac": cfg.fit_frac, "max_fit": cfg.max_fit, "max_test": cfg.max_test,
        "split_column": cfg.split_column, "n_fit": len(ctx.fit.rows), "n_test": len(ctx.test.rows),
        "max_subset_size": cfg.max_subset_size, "delta_grid": list(cfg.delta_grid), **(cfg.settings or {}),
    }
