"""The options of :func:`prom3e.tasks.evaluate.evaluate`, validated as every config is
(:mod:`prom3e.config`): wrong types and out-of-range values are refused in one line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from prom3e.config import Options
from prom3e.tasks.retrieval import DELTA_GRID

Task = Literal["retrieval", "zeroshot", "probe", "uncertainty", "gap"]
ALL_TASKS: tuple[str, ...] = ("retrieval", "zeroshot", "probe", "uncertainty", "gap")


@dataclass
class EvalConfig(Options):
    label: str | None = None  # label column (zero-shot, probes, stratified split)
    modalities: list[str] | None = None  # default: the model's modalities present in the table
    visible: list[list[str]] | None = None  # default: every set of 1..max_visible modalities
    targets: list[str] | None = None  # retrieval targets (default: every modality)
    max_visible: int = 2
    class_modality: str | None = "auto"  # a name, "auto" (detect) or None (no zero-shot)
    tasks: list[Task] = field(default_factory=lambda: list(ALL_TASKS))
    seed: int = 0
    fit_frac: float = 0.5  # share of each class that chooses δ and fits the probes
    split_column: str | None = None  # rows "test" are evaluated, "train"/"fit"/"val" fit
    max_fit: int | None = 2000  # None: no cap
    max_test: int | None = 2000
    max_subset_size: int = 3
    delta_grid: tuple[float, ...] = DELTA_GRID
    batch_size: int = 1024
    threads: int | None = None
    plots: bool = True
    progress: bool = False
    command: str | None = None  # the command line, for the report

    WHAT: ClassVar[str] = "evaluation option"
    BOUNDS: ClassVar[dict[str, str]] = {"max_visible": ">= 1", "seed": ">= 0", "fit_frac": "(0, 1)",
                                        "max_fit": ">= 1", "max_test": ">= 1", "max_subset_size": ">= 1",
                                        "delta_grid": "[0, 1]", "batch_size": ">= 1", "threads": ">= 1"}

    def check(self) -> None:
        if not self.tasks:
            self.fail("tasks", "give at least one task")
        if not self.delta_grid:
            self.fail("delta_grid", "give at least one δ")
