"""Typed options, validated where they enter: CLI flags, YAML/JSON files and the Python API.

A config is a dataclass that inherits :class:`Options` and declares its fields plainly
(``name: type = default  # comment``). Every field is checked against its type hint on
construction, in :meth:`Options.from_dict` and in :meth:`Options.validate`:

- types are strict (pydantic v2, JSON mode): ``epochs: 1.5`` is refused, not rounded;
  ``True`` is not a number and ``"3"`` not an integer; lists and tuples are interchangeable;
  an integer is accepted where a float is wanted; NaN and infinity are refused;
- ``BOUNDS`` (a class variable, optional) adds ranges: ``{"epochs": ">= 1", "lr": "> 0",
  "val_fraction": "(0, 1)", "dropout": "[0, 1)"}`` (applied to each element of a tuple);
- :meth:`Options.check` (optional) holds checks across fields.

A bad value raises one :class:`~prom3e.errors.Prom3eError` line naming the field. Adding a
field needs nothing but its declaration. :func:`check_args` applies the same rules to a
function's keyword arguments (``Fuser.reconstruct(batch_size=…)``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from prom3e.errors import Prom3eError


@functools.cache
def _adapter(hint: Any):
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(hint, config=ConfigDict(strict=True, allow_inf_nan=False))


def _to_json(value: Any) -> str:
    def default(o: Any) -> Any:
        if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:  # NumPy / torch scalars
            return o.item()
        if isinstance(o, os.PathLike):
            return os.fspath(o)
        if isinstance(o, set | frozenset):
            return sorted(o, key=str)
        raise TypeError
    return json.dumps(value, default=default, allow_nan=True)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_value(hint: Any, value: Any, name: str) -> Any:
    """``value`` checked against the type ``hint`` (strict, see the module doc) → the value
    as that type (a list becomes a tuple where a tuple is wanted). ``name`` is for errors."""
    if hint is Any or hint is object:
        return value
    if isinstance(hint, type) and issubclass(hint, Options):
        if isinstance(value, hint):
            value.validate()
            return value
        if isinstance(value, Mapping):
            return hint.from_dict(value, where=name)
        raise Prom3eError(f"{name}: expected a mapping of {hint.__name__} options, got {_show(value)}")
    from pydantic import ValidationError

    try:
        text = _to_json(value)
    except (TypeError, ValueError):
        raise Prom3eError(f"{name}: unsupported value {_show(value)} ({type(value).__name__})") from None
    try:
        return _adapter(hint).validate_json(text)
    except ValidationError as e:
        err = e.errors()[0]
        where = "".join(f"[{p}]" for p in err["loc"])
        msg = err["msg"]
        raise Prom3eError(f"{name}{where}: {msg[0].lower()}{msg[1:]}, got {_show(value)}") from None


def _parse_bound(spec: str) -> Callable[[float], bool]:
    spec = spec.strip()
    if spec[0] in "([" and spec[-1] in ")]":
        lo, hi = (float(v) for v in spec[1:-1].split(","))
        left = (lambda v: v > lo) if spec[0] == "(" else (lambda v: v >= lo)
        right = (lambda v: v < hi) if spec[-1] == ")" else (lambda v: v <= hi)
        return lambda v: left(v) and right(v)
    op, num = spec.split()
    x = float(num)
    return {">=": lambda v: v >= x, ">": lambda v: v > x, "<=": lambda v: v <= x, "<": lambda v: v < x}[op]


def check_bound(value: Any, spec: str, name: str) -> None:
    """Refuse a number (or any element of a tuple/list of numbers) outside ``spec``."""
    if value is None:
        return
    ok = _parse_bound(spec)
    items = value if isinstance(value, tuple | list) else (value,)
    for v in items:
        if isinstance(v, int | float) and not isinstance(v, bool) and not ok(v):
            described = spec if spec[0] in "([" else spec.replace(">=", "≥").replace("<=", "≤")
            where = "in " if spec[0] in "([" else ""
            raise Prom3eError(f"{name}: must be {where}{described}, got {_show(value)}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Options:
    """Mixin for config dataclasses: validation from the type hints (see the module doc)."""

    BOUNDS: ClassVar[dict[str, str]] = {}
    WHAT: ClassVar[str] = "option"  # how errors name a field: "training option 'epochs'"

    def __post_init__(self) -> None:
        self.validate()

    def _name(self, field: str, where: str | None = None) -> str:
        if not where:
            return f"{self.WHAT} '{field}'"
        return f"{where[:-1]}.{field}'" if where.endswith("'") else f"{where}.{field}"

    def validate(self, where: str | None = None) -> None:
        """Check every field (and :meth:`check`); store the values as their declared types."""
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            name = self._name(f.name, where)
            value = check_value(hints[f.name], getattr(self, f.name), name)
            if f.name in self.BOUNDS:
                check_bound(value, self.BOUNDS[f.name], name)
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Checks across fields (raise :class:`Prom3eError`); none by default."""

    def fail(self, field: str, message: str) -> typing.NoReturn:
        raise Prom3eError(f"{self._name(field)}: {message}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | None = None) -> typing.Self:
        """Build from a mapping (a parsed YAML/JSON file); unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise Prom3eError(f"{where or cls.WHAT + 's'}: expected a mapping, got {_show(data)}")
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise Prom3eError(f"{where + ': ' if where else ''}unknown {cls.WHAT}(s): {', '.join(unknown)} "
                              f"(known: {', '.join(known)})")
        obj = cls.__new__(cls)
        for f in dataclasses.fields(cls):  # defaults first, so errors name the field, not __init__
            if f.name in data:
                value = data[f.name]
            elif f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                raise Prom3eError(f"{obj._name(f.name, where)}: required")
            object.__setattr__(obj, f.name, value)
        obj.validate(where)
        return obj

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_args(fn: Callable, values: Mapping[str, Any], bounds: Mapping[str, str] | None = None,
               where: str | None = None) -> None:
    """Check keyword arguments of ``fn`` against its type hints (and ``bounds``), as configs are.

    Only the named ``values`` are checked; arguments of types pydantic cannot describe
    (tables, tensors) are left to ``fn``.
    """
    hints = _hints(fn)
    label = where or getattr(fn, "__qualname__", "argument")
    for name, value in values.items():
        arg = f"{label}: argument '{name}'"
        check_value(hints.get(name, Any), value, arg)
        if bounds and name in bounds:
            check_bound(value, bounds[name], arg)


def load_mapping(path: str | os.PathLike, what: str = "options") -> dict:
    """A YAML or JSON file holding one mapping (``1e-3`` reads as a number, as in JSON)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    # YAML 1.1 reads 1e-3 (no dot) as a string; read it as the number everyone means
    import re

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    try:
        data = yaml.load(Path(path).read_text(), Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise Prom3eError(f"{path}: cannot read {what} ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise Prom3eError(f"{path}: expected a mapping of {what}, got {type(data).__name__}")
    return data
