"""Nested settings dataclasses <-> TOML tables and ``key=value`` overrides (torch-free, ground floor).

A config is a dataclass whose fields are other dataclasses (one per module it configures); each
TOML table maps to one of them (``[train] epochs = 3`` is ``config.train.epochs``), and a
command-line override names a field by its dotted path (``train.epochs=3``; the value is read as
TOML, so ``3``, ``1e-4``, ``true``, ``["a", "b"]`` and ``'text'`` work, and a bare word is a string).

>>> from edgekd.settings import apply_overrides, parse_overrides   # doctest: +SKIP
>>> cfg = apply_overrides(cfg, parse_overrides(["train.epochs=3", "run.out=runs/x"]))   # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Iterable

from edgekd.errors import EdgekdDeprecationWarning, EdgekdValueError  # noqa: F401  (re-exported)

__all__ = ["EdgekdDeprecationWarning", "parse_value", "parse_overrides", "load_toml", "from_mapping",
           "apply_overrides", "to_toml", "section_types", "field_names"]


def parse_value(text: str) -> Any:
    """A command-line value read as TOML (``3``, ``0.5``, ``true``, ``[1, 2]``, ``'x'``); anything
    that is not valid TOML is the bare string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["train.epochs=3", ...]`` -> ``{"train.epochs": 3, ...}`` (values as :func:`parse_value`)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise EdgekdValueError(f"override {item!r}: expected KEY=VALUE (for example train.epochs=3)")
        out[key.strip()] = parse_value(value.strip())
    return out


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML file; a missing or invalid file is an :class:`EdgekdValueError` naming it."""
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise EdgekdValueError(f"config file {p} does not exist")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise EdgekdValueError(f"{p}: invalid TOML ({exc})") from None


def read_json_object(path: str | os.PathLike, where: str) -> dict[str, Any]:
    """The JSON object in ``path`` (a model's ``config.json``, say); an ``EdgekdValueError`` starting
    with ``where`` when it is not valid UTF-8 JSON or not an object."""
    import json

    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgekdValueError(f"{where}: {path} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise EdgekdValueError(f"{where}: {path} is not a JSON object")
    return obj


def field_names(cls_or_obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(cls_or_obj)]


def section_types(cls: type) -> dict[str, type]:
    """{field name: dataclass type} for the fields of ``cls`` that are dataclasses (its tables)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if isinstance(hints.get(f.name), type) and dataclasses.is_dataclass(hints[f.name])}


def _coerce(cls: type, name: str, value: Any, where: str) -> Any:
    """Light type check of a TOML/CLI value against the field's annotation."""
    import types

    tp = typing.get_type_hints(cls).get(name)
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        optional = type(None) in typing.get_args(tp)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
    else:
        args = [tp]
    base = args[0] if len(args) == 1 else None
    if optional and base is not str and isinstance(value, str) and value.strip().lower() == "none":
        value = None  # TOML has no null: "none" unsets an optional number, list or flag
    if value is None:
        if optional:
            return None
        raise EdgekdValueError(f"{where}: {name} cannot be empty")
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (base in (int, float, bool, str) and not isinstance(value, base)) or (base in (int, float) and isinstance(value, bool)):
        raise EdgekdValueError(f"{where}: {name} must be {base.__name__}, got {value!r}")
    if typing.get_origin(base) is list and not isinstance(value, list):
        if isinstance(value, str):  # a comma-separated command-line value
            return [s.strip() for s in value.split(",") if s.strip()]
        raise EdgekdValueError(f"{where}: {name} must be a list, got {value!r}")
    return value


def from_mapping(cls: type, d: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a (nested) mapping; an unknown key is an
    :class:`EdgekdValueError` that names it (``where: unknown setting [train] epoch``)."""
    names = set(field_names(cls))
    sections = section_types(cls)
    kw: dict[str, Any] = {}
    for k, v in d.items():
        if k not in names:
            raise EdgekdValueError(f"{where}: unknown setting {k!r}; known: {sorted(names)}")
        if k in sections:
            if dataclasses.is_dataclass(v):
                kw[k] = v
            elif isinstance(v, dict):
                kw[k] = from_mapping(sections[k], v, f"{where} [{k}]")
            else:
                raise EdgekdValueError(f"{where}: [{k}] must be a table, got {v!r}")
        else:
            kw[k] = _coerce(cls, k, v, where)
    return cls(**kw)


def apply_overrides(obj: Any, overrides: dict[str, Any], where: str = "override") -> Any:
    """A copy of dataclass ``obj`` with dotted keys set (``{"train.epochs": 3}``); an unknown key
    is an :class:`EdgekdValueError` naming it."""
    for key, value in overrides.items():
        obj = _set(obj, key.split("."), value, key, where)
    return obj


def _set(obj: Any, parts: list[str], value: Any, key: str, where: str) -> Any:
    head = parts[0]
    names = field_names(obj)
    if head not in names:
        raise EdgekdValueError(f"{where}: unknown setting {key!r} ({head!r} is not one of {names})")
    sections = section_types(type(obj))
    if len(parts) == 1:
        if head in sections:
            if isinstance(value, dict):
                value = from_mapping(sections[head], value, f"{where} {key}")
            elif not dataclasses.is_dataclass(value):
                raise EdgekdValueError(f"{where}: {key!r} is a table; set one of its keys ({key}.<name>=...)")
        else:
            value = _coerce(type(obj), head, value, f"{where} {key}")
        return dataclasses.replace(obj, **{head: value})
    if head not in sections:
        raise EdgekdValueError(f"{where}: unknown setting {key!r} ({head!r} has no sub-keys)")
    return dataclasses.replace(obj, **{head: _set(getattr(obj, head), parts[1:], value, key, where)})


def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise EdgekdValueError(f"to_toml: cannot write {v!r}")


def _lines(obj: Any) -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) or f.metadata.get("config") is False:
            continue
        if v is None:
            if f.default is None:
                continue  # the default: nothing to write
            v = "none"  # TOML has no null; read back as None (see _coerce)
        out.append(f"{f.name} = {_toml_value(v)}")
    return out


def to_toml(obj: Any) -> str:
    """Write a (nested) settings dataclass as TOML that :func:`from_mapping` reads back to an equal
    object (a ``None`` that is the default is left out; another ``None`` is written as ``"none"``;
    a field whose metadata says ``config=False`` is left out)."""
    parts = ["\n".join(_lines(obj))] if _lines(obj) else []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            parts.append("\n".join([f"[{f.name}]", *_lines(v)]))
    return "\n\n".join(parts) + "\n"
