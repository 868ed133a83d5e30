"""Regenerate the generated blocks of README.md and docs/*.md from experiments/results/*.json.

    python experiments/render_docs.py           # rewrite the blocks in place
    python experiments/render_docs.py --check   # exit 1 if any block is out of date

The modules below register renderers (see docgen.py); add a module here when it adds one.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import docgen  # noqa: E402

MODULES: list[str] = ["serve_load", "scale_figures", "memory_100k", "distributed_gather", "benchmark_docs",
                      "core_results", "ucsc_stage1", "ucsc_eval", "speed", "results_docs"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="report out-of-date blocks, change nothing")
    args = p.parse_args(argv)
    for m in MODULES:
        importlib.import_module(m)
    stale, missing = [], []
    for doc in docgen.DOCS:
        text = doc.read_text()
        new, unknown = docgen.render_text(text)
        missing += [f"{doc.name}: {u}" for u in unknown]
        if new != text:
            stale.append(doc.name)
            if not args.check:
                doc.write_text(new)
    if missing:
        print("no renderer for: " + ", ".join(missing), file=sys.stderr)
    if args.check and stale:
        print("out of date (run python experiments/render_docs.py): " + ", ".join(stale), file=sys.stderr)
    return 1 if missing or (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
