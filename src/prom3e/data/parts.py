"""Outputs too large for one file: a directory of Parquet parts, atomic and resumable.

Layout of ``OUT/``::

    _state.json                  while unfinished: what is being written (a fingerprint)
    part-000000000000.parquet    rows [0, R) of the input (named by its first input row)
    part-000000065536.parquet    …
    _manifest.json               written last: the parts in order, their rows, the fingerprint

Each part is written to a temporary name and renamed, so a part is whole or absent; the
manifest appears only after every part exists, and readers (:mod:`prom3e.data.dataset`)
refuse a folder that has ``_state.json`` and no manifest. A run killed at any point resumes
by writing only the parts that are missing; a run with another fingerprint (another spec,
model or input) refuses the folder unless told to restart, which deletes the parts first.
Under torchrun each rank writes its own parts, and rank 0 writes the manifest after a
barrier; the parts do not depend on the number of ranks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prom3e import distributed
from prom3e.data.dataset import MANIFEST, STATE
from prom3e.data.table import atomic_write
from prom3e.errors import Prom3eError

FORMAT = "prom3e-parts/1"
ROW_GROUP_ROWS = 65536  # rows per Parquet row group in a part (readers' unit of memory)


def part_name(first_row: int) -> str:
    return f"part-{first_row:012d}.parquet"


def file_fingerprint(paths: list[Path]) -> list[list]:
    """Names, sizes and modification times: enough to notice a changed input between runs."""
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


class PartWriter:
    """Write ``OUT/`` part by part (see the module docstring); one per rank."""

    def __init__(self, out: str | os.PathLike, fingerprint: dict[str, Any], restart: bool = False) -> None:
        self.dir = Path(out)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.rank, self.world = distributed.world_from_env()
        self.complete = False
        error = None
        if self.rank == 0:
            try:
                self._prepare(restart)
            except Prom3eError as e:
                error = e
        if not distributed.all_ok(error is None):
            raise error or Prom3eError(f"{self.dir}: rank 0 could not prepare the output folder")
        if self.rank != 0:
            self.complete = (self.dir / MANIFEST).exists() and not (self.dir / STATE).exists()

    def _prepare(self, restart: bool) -> None:
        d = self.dir
        if d.exists() and not d.is_dir():
            raise Prom3eError(f"{d}: exists and is a file; a folder of parts is written here")
        ours = d.exists() and ((d / STATE).exists() or (d / MANIFEST).exists())
        if d.exists() and any(d.iterdir()) and not ours:
            raise Prom3eError(f"{d}: a folder that is not a prom3e output; choose another --out")
        if ours and restart:
            for f in d.iterdir():
                if f.name in (STATE, MANIFEST) or (f.name.startswith("part-") and f.suffix == ".parquet") \
                        or f.name.startswith(".part-"):
                    f.unlink()
            ours = False
        if ours:
            old = _read_json(d / (STATE if (d / STATE).exists() else MANIFEST)).get("fingerprint")
            if old != self.fingerprint:
                raise Prom3eError(f"{d}: holds the output of a different run (other inputs or options); "
                                  f"pass --restart to discard it")
            if not (d / STATE).exists():
                self.complete = True
                return
        d.mkdir(parents=True, exist_ok=True)
        if not (d / STATE).exists():
            atomic_write(d / STATE, lambda tmp: Path(tmp).write_text(
                json.dumps({"format": FORMAT, "fingerprint": self.fingerprint}, indent=1)))

    def path(self, first_row: int) -> Path:
        return self.dir / part_name(first_row)

    def done(self, first_row: int) -> bool:
        return self.complete or self.path(first_row).exists()

    def write(self, first_row: int, table: pa.Table) -> None:
        atomic_write(self.path(first_row),
                     lambda tmp: pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS))

    def finish(self, first_rows: list[int], extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """After every rank wrote its parts: rank 0 writes the manifest (the parts
        ``first_rows``, in order). Returns the manifest on rank 0, ``None`` elsewhere."""
        distributed.barrier()
        manifest = None
        error = None
        if self.rank == 0:
            try:
                manifest = self._write_manifest(first_rows, extra or {})
            except Prom3eError as e:
                error = e
        if not distributed.all_ok(error is None):
            raise error or Prom3eError(f"{self.dir}: rank 0 could not write {MANIFEST}")
        return manifest

    def _write_manifest(self, first_rows: list[int], extra: dict[str, Any]) -> dict[str, Any]:
        if self.complete:
            return _read_json(self.dir / MANIFEST)
        missing = [part_name(r) for r in first_rows if not self.path(r).exists()]
        if missing:
            raise Prom3eError(f"{self.dir}: {len(missing)} part(s) missing, e.g. {missing[0]}; "
                              f"run the command again to write them")
        parts = []
        for r in first_rows:
            md = pq.read_metadata(self.path(r))
            parts.append({"file": part_name(r), "first_row": r, "rows": md.num_rows})
        manifest = {"format": FORMAT, "fingerprint": self.fingerprint, "parts": parts,
                    "rows": sum(p["rows"] for p in parts), **extra}
        atomic_write(self.dir / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
        (self.dir / STATE).unlink(missing_ok=True)
        self.complete = True
        return manifest


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise Prom3eError(f"{path}: unreadable ({e})") from None
