"""Options shared by several subcommands, and argparse types that validate where flags enter."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def add_common(p: argparse.ArgumentParser, seed: bool = True, device: bool = True,
               from_config: bool = False) -> None:
    """``--seed`` and ``--device``. With ``from_config`` their defaults are "not given"
    (``None``), so that a value from the command's config file is not overridden."""
    if seed:
        p.add_argument("--seed", type=count(0), default=None if from_config else 0,
                       help="random seed (default: 0)")
    if device:
        p.add_argument(
            "--device", default=None if from_config else "auto", choices=["auto", "cpu", "cuda"],
            help="where to run (default: auto = cuda if available)",
        )


def add_quiet(p: argparse.ArgumentParser, what: str = "progress bars") -> None:
    """``--quiet`` (the one switch for progress output) and ``--no-progress``, its hidden,
    deprecated alias. Bars are drawn only on a terminal anyway; without ``--quiet`` a log
    still gets the one-line summaries (per epoch)."""
    p.add_argument("--quiet", action="store_true",
                   help=f"no {what} and no per-epoch lines; results and warnings still print "
                   "(bars are only drawn on a terminal anyway)")
    p.add_argument("--no-progress", dest="quiet", action=_Deprecated, nargs=0, help=argparse.SUPPRESS)


class _Deprecated(argparse.Action):
    """``--no-progress``: sets ``quiet`` and says on stderr that ``--quiet`` replaces it."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        import sys

        print(f"{parser.prog}: {option_string} is deprecated; use --quiet", file=sys.stderr)
        setattr(namespace, self.dest, True)


def add_overwrite(p: argparse.ArgumentParser, what: str = "OUT") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace an existing {what} (default: refuse; an input is never replaced)")


def count(minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer ≥ ``minimum`` (``1.5``, ``1e3`` or ``-1`` are refused)."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be ≥ {minimum}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in the given range (NaN and inf are refused)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            lo = "-∞" if low is None else f"{low:g}"
            hi = "∞" if high is None else f"{high:g}"
            rng = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
            raise argparse.ArgumentTypeError(f"must be a finite number in {rng}, got '{text}'")
        return value
    parse.__name__ = "number"
    return parse


def int_list(minimum: int = 0) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated integers ≥ ``minimum`` (``1.7`` is refused, not truncated)."""
    one = count(minimum)

    def parse(text: str) -> list[int]:
        items = [v.strip() for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'")
        return [one(v) for v in items]
    parse.__name__ = "integer list"
    return parse


def number_list(low: float | None = None, high: float | None = None, high_open: bool = False
                ) -> Callable[[str], list[float]]:
    """An argparse type: comma-separated finite numbers in a range."""
    one = number(low, high, high_open=high_open)

    def parse(text: str) -> list[float]:
        items = [v.strip() for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'")
        return [one(v) for v in items]
    parse.__name__ = "number list"
    return parse


def names(text: str) -> list[str]:
    """Comma-separated names (modalities, tasks); empty items are dropped."""
    return [v.strip() for v in text.split(",") if v.strip()]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and examples as written; every option's default shown in its help
    (``(default: …)`` is added unless the help already says what the default is)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.required
                or action.default is None or action.default is False or action.default == argparse.SUPPRESS
                or action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def subparser(sub, name: str, help: str, examples: str, aliases: list[str] | None = None
              ) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help, description=help, epilog="examples:\n" + examples,
        formatter_class=HelpFormatter, aliases=aliases or [],
    )
