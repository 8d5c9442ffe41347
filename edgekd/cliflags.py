"""The shared command-line grammar of every ``edgekd`` verb (torch-free, ground floor).

One flag name for one thing in every command:

``--out DIR``           every output (a directory, or a file where the verb writes one file)
``--max-length N``      tokens (or words) per text
``--batch-size N``      rows per batch
``--text-column``, ``--label-column``, ``--label-names a,b,c``  data columns
``--seed N``, ``--device auto|cpu|cuda[:N]``, ``--threads N``
``--limit N``           the FIRST N rows of the file (in file order)
``--sample N``          a class-stratified random sample of N rows (seeded by ``--seed``)

:func:`add_flags` adds any of these to a parser; :func:`add_alias` adds an old spelling as a
hidden flag that still works and prints one deprecation line to stderr; :func:`add_dataclass_flags`
builds flags from a dataclass's fields (type, default and help written once, on the field), and
:func:`dataclass_values` reads the given ones back.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any, Iterable

__all__ = ["FLAGS", "OLD_SPELLINGS", "add_flags", "add_alias", "add_old_spellings", "add_dataclass_flags",
           "dataclass_values", "parse_list", "deprecation", "help_of", "note_limit"]


def parse_list(text: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (empty items dropped)."""
    return [s.strip() for s in str(text).split(",") if s.strip()]


# canonical flag -> argparse keywords (help says what it means in every verb)
FLAGS: dict[str, dict[str, Any]] = {
    "--out": dict(help="output directory (all outputs go under it)"),
    "--max-length": dict(type=int, help="maximum tokens per text"),
    "--batch-size": dict(type=int, help="rows per batch"),
    "--text-column": dict(help="text column of the data file (default: text)"),
    "--label-column": dict(help="label column of the data file (default: label)"),
    "--label-names": dict(type=parse_list, help="comma-separated class names, in label-id order"),
    "--seed": dict(type=int, help="random seed (samples, initialisation, shuffling)"),
    "--device": dict(help="auto, cpu, cuda or cuda:N"),
    "--threads": dict(type=int, help="torch CPU threads"),
    "--limit": dict(type=int, help="use the FIRST N rows of the data (file order)"),
    "--sample": dict(type=int, help="use a class-stratified random sample of N rows (seeded by --seed)"),
}


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_flags(parser: argparse.ArgumentParser, *names: str, **changes: dict[str, Any]) -> None:
    """Add the canonical flags ``names`` (``"--out"``, ``"--seed"``, ...) to ``parser``.

    ``changes`` maps a flag's dest (``out``, ``max_length``) to argparse keywords that replace the
    shared ones for this verb (``out=dict(required=True, help=...)``)."""
    for name in names:
        if name not in FLAGS:
            raise KeyError(f"cliflags: {name} is not a shared flag; choose from {sorted(FLAGS)}")
        kw = {**FLAGS[name], "dest": _dest(name), **changes.get(_dest(name), {})}
        parser.add_argument(name, **kw)


def deprecation(old: str, new: str) -> None:
    """Print the one deprecation line for an old spelling."""
    print(f"edgekd: warning: {old} is deprecated, use {new}", file=sys.stderr)


def add_alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str | None = None,
              **kwargs: Any) -> None:
    """Add ``old`` as a hidden alias of ``new`` that stores into ``dest`` (default: ``new``'s dest)
    and prints one deprecation line to stderr when it is used. ``kwargs`` go to ``add_argument``
    (``type``, ``action="store_true"``, ...; by default the canonical flag's type)."""
    dest = dest or _dest(new)
    base = dict(FLAGS.get(new, {}))
    base.pop("help", None)
    store_true = kwargs.pop("action", None) == "store_true"

    class _Deprecated(argparse.Action):
        def __init__(self, option_strings, dest, **kw):
            if store_true:
                kw["nargs"] = 0
            super().__init__(option_strings, dest, **kw)

        def __call__(self, parser, namespace, values, option_string=None):
            deprecation(option_string or old, new)
            setattr(namespace, self.dest, True if store_true else values)

    if store_true:
        base.pop("type", None)
    parser.add_argument(old, dest=dest, action=_Deprecated, help=argparse.SUPPRESS, default=None,
                        **{**base, **kwargs})


# old spelling -> canonical flag, for every verb
OLD_SPELLINGS: dict[str, str] = {
    "--max-len": "--max-length",
    "--batch": "--batch-size",
    "--text-col": "--text-column",
    "--label-col": "--label-column",
}


def add_old_spellings(parser: argparse.ArgumentParser) -> None:
    """Add the hidden deprecated :data:`OLD_SPELLINGS` of the canonical flags ``parser`` has."""
    have = parser._option_string_actions  # noqa: SLF001  (argparse has no public lookup)
    for old, new in OLD_SPELLINGS.items():
        if new in have and old not in have:
            add_alias(parser, old, new, dest=have[new].dest, type=have[new].type)


def note_limit(args: argparse.Namespace, verb: str) -> None:
    """One stderr line for verbs whose ``--limit`` used to take a stratified sample."""
    if getattr(args, "limit", None) is not None:
        print(f"edgekd: note: {verb} --limit now takes the FIRST N rows; --sample N takes the class-stratified "
              "sample it took before", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# flags built from dataclass fields


def _scalar_type(tp: Any) -> tuple[Any, bool]:
    """(the argparse type for annotation ``tp``, whether it is a list)."""
    if isinstance(tp, str):  # `from __future__ import annotations` left it as text
        tp = {"int": int, "float": float, "str": str, "bool": bool}.get(tp.split("|")[0].strip(), tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar_type(args[0]) if args else (str, False)
    if origin in (list, tuple):
        return str, True
    if tp in (int, float, str, bool):
        return tp, False
    return str, False


def _bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def help_of(f: dataclasses.Field) -> str:
    """A field's help text (``metadata["help"]``) with its default."""
    h = f.metadata.get("help", "")
    if f.default is not dataclasses.MISSING:
        d = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        d = f.default_factory()  # type: ignore[misc]
    else:
        return h
    if d is None:
        return h
    if isinstance(d, list):
        d = ",".join(map(str, d))
    return f"{h} (default: {d})".strip() if h else f"default: {d}"


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                        only: Iterable[str] | None = None, skip: Iterable[str] = (),
                        rename: dict[str, str] | None = None, group: str | None = None,
                        helps: dict[str, str] | None = None) -> dict[str, str]:
    """Add one ``--<prefix><field>`` flag per field of dataclass ``cls``.

    Flags default to None (not given), so the dataclass's own default is the only one; the help
    text shows it. ``only``/``skip`` choose fields, ``rename`` maps a field name to another flag
    (``{"lr": "--teacher-lr"}``), ``helps`` replaces a field's help text for this verb. Returns {argparse dest: field name} for :func:`dataclass_values`.
    Fields whose metadata has ``cli=False`` are left out."""
    hints = typing.get_type_hints(cls)
    rename = rename or {}
    only = set(only) if only is not None else None
    target = parser.add_argument_group(group) if group else parser
    mapping: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only) or f.metadata.get("cli") is False:
            continue
        flag = rename.get(f.name) or "--" + (prefix + f.name).replace("_", "-")
        dest = _dest(flag)
        tp, is_list = _scalar_type(hints.get(f.name, str))
        kw: dict[str, Any] = dict(dest=dest, default=None, help=help_of(f))
        if flag in FLAGS and not f.metadata.get("help"):
            kw["help"] = f"{FLAGS[flag]['help']} ({help_of(f)})"
        if helps and f.name in helps:
            kw["help"] = helps[f.name]
        if is_list:
            kw.update(type=parse_list, metavar="A,B")
        elif tp is bool:
            kw.update(type=_bool, metavar="true|false")
        else:
            kw["type"] = tp
            if tp in (int, float):
                kw["metavar"] = "N" if tp is int else "X"
        if "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"])
        target.add_argument(flag, **kw)
        mapping[dest] = f.name
    return mapping


def dataclass_values(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    """The fields whose flags were given: {field name: value}."""
    out: dict[str, Any] = {}
    for dest, name in mapping.items():
        v = getattr(args, dest, None)
        if v is not None:
            out[name] = v
    return out
