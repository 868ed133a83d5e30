"""Observation files as ecologists download them → one Arrow table, without hand editing.

- **Delimited text** (``.csv``, ``.tsv``, ``.tab``, ``.txt``): the delimiter comes from
  ``delimiter`` or the extension (``.csv`` comma, the others tab). A ``.csv`` whose header
  holds tabs and no comma is read as tab-separated: GBIF's "simple" downloads are
  tab-separated under a ``.csv`` name. Comma-separated files use ``"`` quoting (quoted
  values may span lines, as iNaturalist descriptions do); tab-separated files are not
  quoted (IANA TSV; GBIF writes stray quotes verbatim). Empty cells are nulls.
- **Darwin Core Archive** (a ``.zip``, or an unzipped folder, with ``meta.xml``): its core
  file is read with the delimiter, quote character, encoding and header lines that
  ``meta.xml`` states, and its columns are named by their terms' local names
  (``http://rs.tdwg.org/dwc/terms/decimalLatitude`` → ``decimalLatitude``); a field with a
  ``default`` fills that column's empty cells (or the whole column when it has no index).
  Extensions (``multimedia.txt``, …) are not joined.
- **A zip without meta.xml** holding one data file (a GBIF simple download) → that file.
- **Parquet**.

Columns named in ``text_columns`` are read as text, not converted: dates keep the time
zone they were written in (the date encoder reads them; see ``prom3e.encoders.date``).
"""

from __future__ import annotations

import codecs
import io
import os
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from prom3e.errors import Prom3eError

TEXT_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
URL_PREFIXES = ("http://", "https://", "ftp://")


def is_url(value: Any) -> bool:
    """A web address (never fetched: files must be downloaded first)."""
    return isinstance(value, str) and value.strip().lower().startswith(URL_PREFIXES)


def parse_delimiter(value: str | None, option: str = "--delimiter") -> str | None:
    """``tab``/``comma``/``semicolon``/``pipe``, ``\\t`` or one character → that character."""
    if value is None:
        return None
    d = DELIMITER_NAMES.get(value.lower(), value)
    if len(d) != 1 or d in "\r\n\"":
        raise Prom3eError(f"{option} must be one character or tab/comma/semicolon/pipe, got {value!r}")
    return d


def _check_encoding(encoding: str, where: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise Prom3eError(f"{where}: unknown text encoding {encoding!r}") from None


@dataclass
class _Dialect:
    delimiter: str = ","
    quote: str | None = '"'
    encoding: str = "utf-8"
    skip_rows: int = 0  # lines before the data; the header, if any, is read from the first
    header: bool = True
    names: dict[int, str] = field(default_factory=dict)  # column index → name (meta.xml)
    defaults: dict[str, str] = field(default_factory=dict)  # name → default value (meta.xml)


def _read_delimited(stream: Any, d: _Dialect, source: str, text_columns: Iterable[str]) -> pa.Table:
    text_columns = set(text_columns)
    read = pacsv.ReadOptions(encoding=d.encoding, skip_rows=d.skip_rows,
                             autogenerate_column_names=not d.header, block_size=1 << 22)
    parse = pacsv.ParseOptions(delimiter=d.delimiter, quote_char=d.quote or False,
                               newlines_in_values=d.quote is not None)
    if d.names:  # meta.xml names the columns by index; pyarrow calls them f0, f1, …
        types = {f"f{i}": pa.string() for i, n in d.names.items() if n in text_columns}
    else:
        types = {c: pa.string() for c in text_columns}
    conv = pacsv.ConvertOptions(strings_can_be_null=True, column_types=types)
    try:
        t = pacsv.read_csv(stream, read_options=read, parse_options=parse, convert_options=conv)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0]
        hint = ""
        if "UTF8" in first or isinstance(e, UnicodeDecodeError):
            hint = f"; not {d.encoding} text? pass --encoding (e.g. latin-1)"
        elif "columns" in first:
            hint = f"; delimiter {d.delimiter!r}: pass --delimiter if it is another one"
        raise Prom3eError(f"{source}: not a readable table ({first}){hint}") from None
    binary = [f.name for f in t.schema if pa.types.is_binary(f.type)]
    if binary:  # pyarrow reads undecodable text as bytes
        name = d.names.get(int(binary[0][1:]), binary[0]) if d.names else binary[0]
        raise Prom3eError(f"{source}: column '{name}' is not {d.encoding} text; pass --encoding "
                          f"(e.g. latin-1)")
    return t


def _sniff(head: bytes, suffix: str, delimiter: str | None) -> str:
    if delimiter is not None:
        return delimiter
    if suffix == ".csv":
        line = head.split(b"\n", 1)[0]
        return "\t" if b"\t" in line and b"," not in line else ","
    return "\t" if suffix in (".tsv", ".tab", ".txt") else ","


def _text_head(path: Path, suffix: str, src: str) -> tuple[str, bytes]:
    """The text format's suffix (under a compression suffix: ``.csv.gz`` → ``.csv``) and the
    file's first 64 KiB, decompressed (pyarrow decompresses by extension)."""
    if suffix in (".gz", ".bz2", ".zst", ".lz4"):
        suffix = Path(path.stem).suffix.lower()
    try:
        with pa.input_stream(str(path)) as fh:
            return suffix, fh.read(1 << 16)
    except (pa.ArrowInvalid, OSError) as e:
        raise Prom3eError(f"{src}: not readable ({str(e).splitlines()[0]})") from None


def _text_dialect(head: bytes, suffix: str, delimiter: str | None, encoding: str | None) -> _Dialect:
    delim = _sniff(head, suffix, delimiter)
    return _Dialect(delimiter=delim, quote=None if delim == "\t" else '"', encoding=encoding or "utf-8")


def text_parse_options(path: str | os.PathLike, delimiter: str | None = None) -> pacsv.ParseOptions:
    """How :func:`read_observations` would split a plain delimited file (sniffed from its
    start, or ``delimiter``), for readers that stream it instead of reading it whole."""
    path = Path(path)
    suffix, head = _text_head(path, path.suffix.lower(), str(path))
    d = _text_dialect(head, suffix, parse_delimiter(delimiter), None)
    return pacsv.ParseOptions(delimiter=d.delimiter, quote_char=d.quote or False,
                              newlines_in_values=d.quote is not None)


# --- Darwin Core Archive ---------------------------------------------------------------

def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _unescape(value: str) -> str:
    """meta.xml writes ``\\t`` for a tab (sometimes ``\\\\t``)."""
    for _ in range(2):
        if len(value) <= 1:
            break
        value = value.encode("latin-1", "backslashreplace").decode("unicode_escape")
    return value


def term_name(term: str) -> str:
    """``http://rs.tdwg.org/dwc/terms/decimalLatitude`` → ``decimalLatitude``."""
    return term.rstrip("/#").replace("#", "/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def parse_meta(xml: bytes, source: str) -> tuple[_Dialect, list[str]]:
    """meta.xml → the core file's dialect and its file locations."""
    if b"<!DOCTYPE" in xml.upper() or b"<!ENTITY" in xml.upper():
        raise Prom3eError(f"{source}: meta.xml declares a DOCTYPE/entities; refusing to parse it")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise Prom3eError(f"{source}: meta.xml is not valid XML ({e})") from None
    core = next((el for el in root if _local(el.tag) == "core"), None)
    if core is None:
        raise Prom3eError(f"{source}: meta.xml has no <core> element")
    a = core.attrib
    where = f"{source}: meta.xml <core>"
    delim = _unescape(a.get("fieldsTerminatedBy", ","))
    if len(delim) != 1:
        raise Prom3eError(f"{where}: fieldsTerminatedBy={a['fieldsTerminatedBy']!r} is not one character")
    quote = _unescape(a.get("fieldsEnclosedBy", '"'))
    if len(quote) > 1:
        raise Prom3eError(f"{where}: fieldsEnclosedBy={a['fieldsEnclosedBy']!r} is not one character")
    lines = _unescape(a.get("linesTerminatedBy", "\n"))
    if lines not in ("\n", "\r\n", "\r"):
        raise Prom3eError(f"{where}: linesTerminatedBy={a['linesTerminatedBy']!r} is not supported "
                          f"(only \\n, \\r\\n, \\r)")
    try:
        skip = int(a.get("ignoreHeaderLines", "0"))
    except ValueError:
        raise Prom3eError(f"{where}: ignoreHeaderLines={a['ignoreHeaderLines']!r} is not a number") from None
    encoding = _check_encoding(a.get("encoding", "UTF-8"), where)
    names: dict[int, str] = {}
    defaults: dict[str, str] = {}
    id_index = None
    for el in core:
        tag = _local(el.tag)
        if tag == "id" and el.get("index") is not None:
            id_index = int(el.get("index"))
        if tag != "field":
            continue
        term = el.get("term")
        if not term:
            raise Prom3eError(f"{where}: a <field> has no term")
        name = term_name(term)
        while name in names.values() or name in defaults:
            name += "_"
        if el.get("default") is not None:
            defaults[name] = el.get("default")
        idx = el.get("index")
        if idx is not None:
            try:
                names[int(idx)] = name
            except ValueError:
                raise Prom3eError(f"{where}: field {term} has index {idx!r}, not a number") from None
        elif el.get("default") is None:
            raise Prom3eError(f"{where}: field {term} has neither an index nor a default")
    if id_index is not None and id_index not in names:
        names[id_index] = "id"
    files = [loc.text.strip() for el in core if _local(el.tag) == "files"
             for loc in el if _local(loc.tag) == "location" and loc.text]
    if not files:
        raise Prom3eError(f"{where}: no <files><location>")
    return _Dialect(delim, quote or None, encoding, skip, False, names, defaults), files


def _apply_meta(t: pa.Table, d: _Dialect, source: str) -> pa.Table:
    n_cols = t.num_columns
    bad = [i for i in d.names if i >= n_cols]
    if bad:
        raise Prom3eError(f"{source}: meta.xml maps column {bad[0]} ('{d.names[bad[0]]}'), "
                          f"the file has {n_cols} column(s)")
    cols, names = [], []
    for i in sorted(d.names):
        col, name = t.column(i), d.names[i]
        if name in d.defaults:
            col = col.cast(pa.string()).fill_null(d.defaults[name])
        cols.append(col)
        names.append(name)
    for name, value in d.defaults.items():
        if name not in names:
            cols.append(pa.array([value] * t.num_rows, pa.string()))
            names.append(name)
    return pa.Table.from_arrays(cols, names=names)


def _read_archive(open_member, members: list[str], prefix: str, source: str, encoding: str | None,
                  text_columns: Iterable[str]) -> pa.Table:
    with open_member(prefix + "meta.xml") as fh:
        d, files = parse_meta(fh.read(), source)
    if encoding is not None:
        d.encoding = encoding
    parts = []
    for loc in files:
        name = prefix + loc.removeprefix("./")
        if name not in members:
            raise Prom3eError(f"{source}: meta.xml names the core file '{loc}', which is not in the archive")
        with open_member(name) as fh:
            t = _read_delimited(fh, d, f"{source}:{loc}", text_columns)
        parts.append(_apply_meta(t, d, f"{source}:{loc}"))
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except pa.ArrowInvalid as e:
        raise Prom3eError(f"{source}: the core files do not share columns ({e})") from None


# --- the entry point -------------------------------------------------------------------

def read_observations(path: str | os.PathLike, delimiter: str | None = None, encoding: str | None = None,
                      text_columns: Iterable[str] = ()) -> pa.Table:
    """Read an observation export (see the module docstring) into an Arrow table."""
    path = Path(path)
    src = str(path)
    if not path.exists():
        raise Prom3eError(f"{src}: no such observations file")
    delimiter = parse_delimiter(delimiter)
    if encoding is not None:
        encoding = _check_encoding(encoding, "--encoding")
    text_columns = list(text_columns)
    suffix = path.suffix.lower()
    if path.is_dir():
        if not (path / "meta.xml").exists():
            raise Prom3eError(f"{src}: a folder, but not a Darwin Core Archive (no meta.xml)")
        members = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
        table = _dwca(lambda m: (path / m).open("rb"), members, "", src, delimiter, encoding, text_columns)
    elif suffix == ".zip":
        table = _read_zip(path, delimiter, encoding, text_columns)
    elif suffix in (".parquet", ".pq"):
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise Prom3eError(f"{src}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    else:  # delimited text, perhaps compressed (.csv.gz): pyarrow decompresses by extension
        suffix, head = _text_head(path, suffix, src)
        d = _text_dialect(head, suffix, delimiter, encoding)
        table = _read_delimited(str(path), d, src, text_columns)
    if table.num_rows == 0:
        raise Prom3eError(f"{src}: no observations")
    return table


def _dwca(open_member, members, prefix, src, delimiter, encoding, text_columns) -> pa.Table:
    if delimiter is not None:
        raise Prom3eError(f"{src}: a Darwin Core Archive; its meta.xml sets the delimiter "
                          f"(leave out --delimiter)")
    return _read_archive(open_member, members, prefix, src, encoding, text_columns)


def _read_zip(path: Path, delimiter: str | None, encoding: str | None, text_columns: list[str]) -> pa.Table:
    src = str(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise Prom3eError(f"{src}: not a readable zip file ({e})") from None
    with zf:
        members = [i.filename for i in zf.infolist() if not i.is_dir()]
        metas = sorted((m for m in members if m.rsplit("/", 1)[-1] == "meta.xml"), key=len)
        if metas:
            prefix = metas[0][: -len("meta.xml")]
            return _dwca(zf.open, members, prefix, src, delimiter, encoding, text_columns)
        data = [m for m in members if m.lower().endswith(TEXT_SUFFIXES + (".parquet",))]
        if len(data) != 1:
            raise Prom3eError(f"{src}: a zip without meta.xml must hold exactly one data file "
                              f"(.csv/.tsv/.txt/.parquet); it holds {', '.join(members[:8]) or 'nothing'}")
        name = data[0]
        if name.lower().endswith(".parquet"):
            return pq.read_table(io.BytesIO(zf.read(name)))
        with zf.open(name) as fh:
            d = _text_dialect(fh.read(1 << 16), Path(name).suffix.lower(), delimiter, encoding)
        with zf.open(name) as fh:
            return _read_delimited(fh, d, f"{src}:{name}", text_columns)
