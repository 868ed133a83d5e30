"""Vector values a table may hold: finite, and small enough that their squared norm fits in
float32 (checked once where data enters, so no norm downstream turns them into NaN or zero)."""

from __future__ import annotations

import numpy as np

from prom3e.errors import Prom3eError

SQNORM_MAX = float(np.finfo(np.float32).max)


def check_vectors(x: np.ndarray, column: str, source: str, rows: np.ndarray | None = None,
                  select: bool = False) -> None:
    """Refuse NaN/inf and vectors whose squared norm overflows float32 (it would turn into
    NaN or zero in any norm, LayerNorm or cosine downstream): one line naming column and row.
    ``rows[i]`` is the table row of ``x[i]`` (default ``i``); with ``select``, only the rows
    ``x[rows]`` are checked. Chunked: bounded memory."""
    n, d = (len(rows), x.shape[1]) if select and rows is not None else x.shape
    safe = float(np.sqrt(SQNORM_MAX / max(1, d)))  # |values| ≤ this cannot overflow: skip the exact check
    step = max(1, (1 << 20) // max(1, d))
    for i in range(0, n, step):
        block = np.asarray(x[rows[i:i + step]] if select and rows is not None else x[i:i + step])
        finite = np.isfinite(block).all(1)
        bad = np.flatnonzero(~finite)
        sq = None
        if not bad.size:
            big = np.flatnonzero(np.abs(block).max(1, initial=0.0) > safe)
            if big.size:
                sq = np.einsum("ij,ij->i", block[big], block[big], dtype=np.float64)
                bad = big[sq > SQNORM_MAX]
        if bad.size:
            j = int(bad[0])
            r = int(rows[i + j]) if rows is not None else i + j
            if not finite[j]:
                raise Prom3eError(f"{source}: column '{column}' row {r} contains NaN or inf")
            norm2 = float(np.einsum("i,i->", block[j], block[j], dtype=np.float64))
            raise Prom3eError(f"{source}: column '{column}' row {r} has values too large (squared norm "
                              f"{norm2:.3g} overflows float32; rescale the column)")
