"""Where a benchmark writes: checked before any work, partial results kept as they finish.

Layout of an output folder::

    DIR/results.json, results.md, results.png   the report (rewritten after each method × seed)
    DIR/partial/run.json                         the settings of the run (for --resume)
    DIR/partial/<method>__seed<k>.json           one finished method × seed

A killed run keeps every finished method × seed and a report of them; ``resume=True``
continues it (the settings must be the same: a difference is named and refused; the methods
and seeds may differ, and the report keeps every finished method of the folder), and
``overwrite=True`` starts afresh. ``rerun=True`` (with ``resume``) fits the run's methods
again where they had finished — e.g. only ProM3E after a change of its defaults — and
replaces their records, leaving every other method's as it was. Without either, a folder that already holds results is
refused — nothing is replaced silently.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from prom3e.data.table import atomic_write
from prom3e.errors import Prom3eError


def _write_json(path: Path, obj) -> None:
    from prom3e.tasks.common import jsonable

    text = json.dumps(jsonable(obj), indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


class ResultStore:
    """The output folder of one benchmark run."""

    def __init__(self, out: str | os.PathLike, resume: bool = False, overwrite: bool = False,
                 rerun: bool = False):
        if resume and overwrite:
            raise Prom3eError("--resume and --overwrite exclude each other")
        if rerun and not resume:
            raise Prom3eError("--rerun needs --resume (it re-fits methods of an existing run)")
        self.out, self.resume, self.rerun = Path(out), resume, rerun
        self.partial = self.out / "partial"
        if self.out.exists() and not self.out.is_dir():
            raise Prom3eError(f"--out {self.out}: exists and is not a folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise Prom3eError(f"--out {self.out}: cannot create the folder ({e.strerror})") from None
        probe = self.out / ".prom3e-write-test"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise Prom3eError(f"--out {self.out}: not writable ({e.strerror})") from None
        held = (self.out / "results.json").exists() or any(self.partial.glob("*.json"))
        if held and overwrite:
            shutil.rmtree(self.partial, ignore_errors=True)
            for name in ("results.json", "results.md", "results.png"):
                (self.out / name).unlink(missing_ok=True)
        elif held and not resume:
            raise Prom3eError(f"--out {self.out}: already holds benchmark results; --resume continues that run, "
                              "--overwrite replaces it")
        self.partial.mkdir(exist_ok=True)

    def start(self, settings: dict) -> None:
        """Record the run's settings, or check them against the run being resumed."""
        path = self.partial / "run.json"
        settings = json.loads(json.dumps(settings, default=str))
        if self.resume and path.exists():
            old = json.loads(path.read_text())
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            if diff:
                raise Prom3eError(f"--resume {self.out}: settings differ from the run there ({', '.join(diff)}); "
                                  "use the same options, or --overwrite")
        else:
            _write_json(path, settings)

    def _path(self, method: str, seed: int) -> Path:
        return self.partial / f"{method}__seed{seed}.json"

    def load(self, method: str, seed: int, refit: bool = False) -> dict | None:
        """A finished method × seed, or None (always None for one to be re-fitted under ``rerun``)."""
        path = self._path(method, seed)
        if refit and self.rerun:
            return None
        return json.loads(path.read_text()) if path.exists() else None

    def finished_methods(self) -> list[str]:
        """The methods with at least one finished seed in the folder (when resuming; else none)."""
        if not self.resume:
            return []
        return sorted({p.name.rsplit("__seed", 1)[0] for p in self.partial.glob("*__seed*.json")})

    def save(self, method: str, seed: int, record: dict) -> None:
        _write_json(self._path(method, seed), record)
