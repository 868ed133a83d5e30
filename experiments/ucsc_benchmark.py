"""The UCSC plants table of the benchmark (../shared/data/ucsc-plants).

The table (written to ``experiments/out/ucsc_plants_table.parquet``; the benchmark itself is
``experiments/benchmark.py --dataset ucsc``):

- ``image``: the 1280-d EfficientNet-Lite0 features, PCA to 64 dims (fitted on all rows:
  unsupervised preprocessing, no label), L2-normalised;
- ``date``: ``[sin, cos]`` of the day of year and the year scaled to [−1, 1] (3 dims).

Text is left out on purpose: there is one text embedding per species, so for a species
label it is the label itself (a leak: any method would score 100 % whenever it is visible).
Stage 1's aligned table (``experiments/out/ucsc_aligned.parquet``, with text) can be benchmarked
with ``experiments/benchmark.py --dataset ucsc --data experiments/out/ucsc_aligned.parquet``:
its text is detected as a label leak and left out.

    .venv/bin/python experiments/ucsc_benchmark.py            # (re)build the table
    .venv/bin/python experiments/benchmark.py --dataset ucsc   # the benchmark
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from prom3e.data.table import vectors_to_arrow, write_parquet

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ucsc-plants"
OUT = Path(__file__).resolve().parent / "out"


def build_table(data: Path = DATA, dim: int = 64) -> pa.Table:
    obs = pcsv.read_csv(data / "observations.csv")
    img = np.load(data / "image_effnet_lite0_f16.npy").astype(np.float32)
    if len(img) != obs.num_rows:
        raise SystemExit(f"{data}: {len(img)} image rows but {obs.num_rows} observations")
    x = img - img.mean(0)
    _, _, vt = np.linalg.svd(x[:: max(1, len(x) // 4000)], full_matrices=False)  # PCA basis from ≤ 4000 rows
    z = x @ vt[:dim].T
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    day = pc.day_of_year(obs["observed_on"]).to_numpy(zero_copy_only=False).astype(np.float32)
    year = pc.year(obs["observed_on"]).to_numpy(zero_copy_only=False).astype(np.float32)
    span = max(year.max() - year.min(), 1.0)
    date = np.stack([np.sin(2 * np.pi * day / 365.25), np.cos(2 * np.pi * day / 365.25),
                     2 * (year - year.min()) / span - 1], 1).astype(np.float32)
    cols = {c: obs[c] for c in ("inat_id", "scientific_name", "genus", "family")}
    cols["image"] = vectors_to_arrow(z)
    cols["date"] = vectors_to_arrow(date)
    return pa.table(cols)


def main() -> int:
    path = OUT / "ucsc_plants_table.parquet"
    write_parquet(build_table(), path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
