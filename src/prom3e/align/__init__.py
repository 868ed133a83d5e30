"""Stage 1 alignment: per-modality heads trained against a frozen anchor modality.

``fit_aligner(table, anchor, label)`` trains; ``load_aligner(path).transform(table)`` maps
raw feature tables into the shared D-space (what a fusion model consumes).
"""

from prom3e.align.aligner import Aligner, load_aligner
from prom3e.align.supcon import LogitScale, supcon_loss
from prom3e.align.trainer import AlignConfig, align_file, fit_aligner

__all__ = ["AlignConfig", "Aligner", "LogitScale", "align_file", "fit_aligner", "load_aligner",
           "supcon_loss"]
