"""The ``prom3e`` command line: thin; each subcommand lives in ``prom3e.commands.<name>``.

A command module defines ``add_parser(subparsers)``; the parser's ``func`` is called with
the parsed arguments. Command modules import heavy libraries inside ``func`` only, so
``prom3e --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from prom3e.errors import Prom3eError

COMMANDS = [
    "demo",
    "synth",
    "split",
    "train",
    "reconstruct",
    "evaluate",
    "import_npy",
    "embed",
    "align",
    "benchmark",
    "perf",
    "index",
    "export",
    "serve",
]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2): ``prom3e train: error: argument --epochs: …``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="prom3e",
        description="Probabilistic multimodal embeddings with missing modalities.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'prom3e COMMAND --help' for a command's options and examples.",
    )
    from prom3e import __version__

    parser.add_argument("--version", action="version", version=f"prom3e {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"prom3e.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version or a bad flag (already reported on one line)
        return e.code if isinstance(e.code, int) else 2
    try:
        result = args.func(args)
    except Prom3eError as e:
        print(f"prom3e {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prom3e {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
