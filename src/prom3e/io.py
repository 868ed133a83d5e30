"""Safe output: atomic files and directories, and output checks made before any work starts.

- :func:`atomic_write` / :func:`write_text`: a file is written to a temporary name beside it
  and renamed, so a reader (or a killed run) never sees half a file.
- :func:`commit_dir`: a directory (a checkpoint) is written completely under a hidden name,
  then a symlink is switched to it in one rename; the previous one is removed after.
- :func:`clean_stale`: temporaries a killed process left behind (``*.prom3e-tmp``, and
  hidden committed directories no link points to) are removed.
- :func:`check_output_file` / :func:`check_output_dir`: called *before* the work; refuse an
  output that would replace an input, an existing result (unless ``overwrite``), a folder
  where a file is needed (or the reverse), or a place that cannot be written.

Guarantees hold against a killed process (``kill -9``), not against power loss (no fsync).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from prom3e.errors import Prom3eError

TMP_SUFFIX = ".prom3e-tmp"
PathLike = str | os.PathLike


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: PathLike, text: str) -> None:
    """Atomic write of a text file."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# --- atomic directories ------------------------------------------------------------------

def _hidden_prefix(link: Path) -> str:
    return f".{link.name}-"


def commit_dir(link: PathLike, write: Callable[[Path], None]) -> Path:
    """Write a directory with ``write(folder)``, then point the symlink ``link`` at it atomically.

    The folder is filled under a temporary name, renamed to a hidden complete name, and only
    then does ``link`` switch (``os.replace`` of a symlink); the previous target is removed
    afterwards. A reader of ``link/…`` sees the old directory or the new one, never a mix.
    Returns the new directory.
    """
    link = Path(link)
    parent = link.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_hidden_prefix(link), suffix=TMP_SUFFIX, dir=parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        final = parent / f"{_hidden_prefix(link)}{uuid.uuid4().hex[:12]}"
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _target(link)
    if link.exists() and not link.is_symlink():  # a plain folder (older runs, or a copied run)
        legacy = parent / f"{_hidden_prefix(link)}{uuid.uuid4().hex[:12]}"
        os.rename(link, legacy)
        old = legacy
    tmp_link = parent / f".{link.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    os.symlink(final.name, tmp_link)
    os.replace(tmp_link, link)
    if old is not None and old != final:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _target(link: Path) -> Path | None:
    if not link.is_symlink():
        return None
    return link.parent / os.readlink(link)


def clean_stale(folder: PathLike, links: Sequence[str] = ()) -> list[Path]:
    """Remove what killed writers left in ``folder``: ``*.prom3e-tmp`` files and folders, and
    hidden committed folders of ``links`` that the link does not point to. A link left
    missing (killed mid-switch) is pointed at its newest committed folder first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    for link_name in links:
        link = folder / link_name
        prefix = _hidden_prefix(link)
        done = sorted((p for p in folder.iterdir() if p.name.startswith(prefix) and not p.name.endswith(TMP_SUFFIX)
                       and p.is_dir() and not p.is_symlink()), key=lambda p: p.stat().st_mtime)
        if not link.exists() and not link.is_symlink() and done:
            tmp_link = folder / f".{link_name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
            os.symlink(done[-1].name, tmp_link)
            os.replace(tmp_link, link)
        current = _target(link)
        for p in done:
            if current is None or p.resolve() != current.resolve():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    for p in folder.iterdir():
        if p.name.endswith(TMP_SUFFIX):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# --- output checks, made before the work ---------------------------------------------------

def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same file (or would, once created)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _check_writable(path: Path, what: str) -> None:
    """The nearest existing ancestor of ``path`` is a folder we can create files in."""
    anc = path.parent
    while not anc.exists():
        if anc.is_symlink():
            raise Prom3eError(f"{what} {path}: {anc} is a broken link")
        anc = anc.parent
    if not anc.is_dir():
        raise Prom3eError(f"{what} {path}: {anc} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".prom3e-probe-", suffix=TMP_SUFFIX, dir=anc)
    except OSError as e:
        raise Prom3eError(f"{what} {path}: cannot write in {anc} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: PathLike, *, inputs: Iterable[PathLike | None] = (), overwrite: bool = False,
                      what: str = "--out") -> Path:
    """Check, before the work, that ``path`` can be written as a file.

    Refused: a folder; an input of the same command (always); an existing file unless
    ``overwrite``; a place that cannot be written.
    """
    path = Path(path)
    for src in inputs:
        if src is not None and same_file(path, src):
            raise Prom3eError(f"{what} {path} is also an input of this command; write somewhere else")
    if path.is_dir():
        raise Prom3eError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise Prom3eError(f"{what} {path} already exists; pass --overwrite to replace it")
    _check_writable(path, what)
    return path


def check_output_dir(path: PathLike, *, products: Iterable[str] = (), inputs: Iterable[PathLike | None] = (),
                     overwrite: bool = False, what: str = "--out") -> Path:
    """Check, before the work, that ``path`` can be used as an output folder.

    ``products``: names (or glob patterns) the command writes inside it; any that exists is
    refused unless ``overwrite``. An input (file or folder) that is the folder, or one of its
    products, is always refused; so is an existing file at ``path`` and an unwritable place.
    """
    path = Path(path)
    products = list(products)
    if path.exists() and not path.is_dir():
        raise Prom3eError(f"{what} {path} is a file; give a folder")
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        if same_file(path, src):
            raise Prom3eError(f"{what} {path} is the input {src}; write somewhere else")
        if any(_inside(src, path / p) or src.resolve() in {q.resolve() for q in path.glob(p)} for p in products):
            raise Prom3eError(f"{what} {path}: writing it would replace the input {src}; write somewhere else")
    if path.is_dir() and not overwrite:
        found = [q for p in products for q in sorted(path.glob(p))]
        if found:
            raise Prom3eError(f"{what} {path} already holds {found[0].name}"
                              f"{f' and {len(found) - 1} more' if len(found) > 1 else ''}; "
                              "pass --overwrite to replace them")
    _check_writable(path / "x", what)
    return path


def remove_products(path: PathLike, products: Iterable[str]) -> None:
    """Delete the named products (globs) in ``path`` (after ``--overwrite`` was given)."""
    path = Path(path)
    for p in products:
        for q in path.glob(p):
            if q.is_dir() and not q.is_symlink():
                shutil.rmtree(q)
            else:
                q.unlink(missing_ok=True)
