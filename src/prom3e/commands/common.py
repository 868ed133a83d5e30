"""Options shared by several subcommands."""

from __future__ import annotations

import argparse


def add_common(p: argparse.ArgumentParser, seed: bool = True, device: bool = True) -> None:
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    if device:
        p.add_argument(
            "--device", default="auto", choices=["auto", "cpu", "cuda"],
            help="where to run (default: auto = cuda if available)",
        )


def subparser(sub, name: str, help: str, examples: str, aliases: list[str] | None = None
              ) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help, description=help, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter, aliases=aliases or [],
    )
