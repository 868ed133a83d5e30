"""Helpers shared by the CLI tests."""

from __future__ import annotations

from prom3e.cli import main


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI; assert exit 2 with one line on stderr and no traceback; return that line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err
