"""The one label encoder: any label column → integer codes, with "no label" kept apart.

Missing labels — null/None, NaN and the empty string — are ``−1`` ("no label"), never a
class of their own: an unlabelled row is nobody's positive (it stays a negative for every
other row in contrastive losses and is left out of classification metrics). Classes are
compared as strings and numbered in sorted order.
"""

from __future__ import annotations

import numpy as np


def encode_labels(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Any label column → (``int64[N]`` codes, −1 where missing; sorted class names)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(np.asarray(values), from_pandas=True)  # NaN → null
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    strings = np.asarray(arr.fill_null("").to_numpy(zero_copy_only=False), dtype=object)
    classes, inv = np.unique(strings[valid].astype(str), return_inverse=True)
    codes = np.full(len(strings), -1, np.int64)
    codes[valid] = inv.reshape(-1)
    return codes, [str(c) for c in classes]
