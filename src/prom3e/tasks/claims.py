"""The paper's central claims, computed once from the evaluation metrics (rendered by ``viz``).

A claim holds when most of its cases agree. It gets no verdict (``holds: null`` and a
``reason``) when it has no case, or when the test part has fewer than ``MIN_TEST_ROWS``
rows: a report never states a finding from too little data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prom3e.tasks.common import mean_or_none

MIN_TEST_ROWS = 20


def _verdict(cases: list[bool], m: dict) -> dict[str, Any]:
    n_test = m.get("settings", {}).get("n_test", MIN_TEST_ROWS)
    if not cases:
        return {"holds": None, "reason": "n = 0: no case to compare"}
    if n_test < MIN_TEST_ROWS:
        return {"holds": None, "reason": f"only {n_test} test rows (< {MIN_TEST_ROWS})"}
    return {"holds": float(np.mean(cases)) > 0.5}


def claims(m: dict) -> dict:
    """The paper's central claims, checked on these numbers (``holds`` = majority agrees;
    ``None`` with a ``reason`` when there is not enough data to say)."""
    out: dict[str, Any] = {}
    if "retrieval" in m:
        pairs = [p for p in m["retrieval"]["pairs"] if p["r1_cross"] is not None and p["r1_inversion"] is not None]
        better = [p["r1_inversion"] > p["r1_cross"] for p in pairs]
        out["inversion_beats_cross_r1"] = {
            "n": len(pairs), "frac_better": mean_or_none(better),
            "frac_not_worse": mean_or_none([p["r1_inversion"] >= p["r1_cross"] for p in pairs]),
            **_verdict(better, m),
        }
    if "zeroshot" in m:
        sets = {tuple(s["visible"]): s for s in m["zeroshot"]["sets"]}
        cmp = []
        for s, v in sets.items():
            if len(s) == 2 and (s[0],) in sets and (s[1],) in sets and v["top1_inversion"] is not None:
                single = max(sets[(s[0],)]["top1_inversion"] or 0, sets[(s[1],)]["top1_inversion"] or 0)
                cmp.append(v["top1_inversion"] > single)
        out["two_visible_beat_one_zeroshot"] = {
            "n": len(cmp), "frac_better_than_best_single": mean_or_none(cmp),
            **_verdict(cmp, m),
        }
    if "probe" in m:
        sets = [s for s in m["probe"]["sets"] if s["acc_reconstruction"] is not None and s["acc_mu"] is not None]
        best_hidden = [max(s["acc_mu"], s["acc_tokens"] if s["acc_tokens"] is not None else 0) for s in sets]
        cmp = [h > s["acc_reconstruction"] for h, s in zip(best_hidden, sets, strict=True)]
        out["hidden_probe_beats_reconstructed"] = {
            "n": len(cmp), "frac_better": mean_or_none(cmp),
            "frac_mu_better": mean_or_none([s["acc_mu"] > s["acc_reconstruction"] for s in sets]),
            **_verdict(cmp, m),
        }
    if "uncertainty" in m:
        red = [r for n in m["uncertainty"]["next"] for r in n["ranking"] if r["actual_reduction"] is not None]
        lower = [r["actual_reduction"] > 0 for r in red]
        out["adding_modality_lowers_sigma"] = {
            "n": len(red), "frac_mean_lower": mean_or_none(lower),
            "mean_frac_rows_lower": mean_or_none([r["frac_actual_lower"] for r in red]),
            **_verdict(lower, m),
        }
    return out
