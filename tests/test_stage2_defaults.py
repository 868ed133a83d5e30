"""The library's default stage-2 objective is the winner of the study in docs/STAGE2.md, and the
``paper`` config stays the reference."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_default_objective_is_the_study_winner_and_paper_the_reference():
    sys.path.insert(0, str(ROOT / "experiments"))
    import stage2_ablation

    from prom3e.models.prom3e import CONFIGS, Prom3eConfig, named_config
    from prom3e.train.loop import TrainConfig

    win = stage2_ablation.VARIANTS[stage2_ablation.WINNER]
    assert TrainConfig().kl_weight == win.get("kl_weight", 1e-3)
    ref = Prom3eConfig(modalities=["a", "b"], dims=[4, 4])
    for name in ("tiny", "base", "large"):
        cfg = named_config(name, ["a", "b"], [4, 4])
        for k, v in win["model_overrides"].items():
            assert getattr(cfg, k) == v, (name, k)
    paper = named_config("paper", ["a", "b"], [4, 4])
    objective = {f.name for f in fields(Prom3eConfig)} - set(CONFIGS["paper"]) - {"modalities", "dims"}
    for k in objective:  # every objective field of `paper` is the dataclass's (the reference's) default
        assert getattr(paper, k) == getattr(ref, k), k
    for k, v in stage2_ablation.REF.items():
        if k != "posterior_head":
            assert getattr(paper, k) == v, k
