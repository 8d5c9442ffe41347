"""The ``edgekd`` command line: a thin layer over the Python API.

Each area registers its sub-commands from its own module (``edgekd/<area>/cli.py`` exposing
``register(subparsers)``), listed in ``_COMMAND_MODULES``. Modules are imported only when the
command line is built, so ``edgekd --help`` stays light.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from edgekd import __version__
from edgekd.errors import EdgekdError

# module paths that expose register(subparsers); each area adds its own line
_COMMAND_MODULES: list[str] = [
    "edgekd.compile.cli",
    "edgekd.runtime.cli",
    "edgekd.teacher.cli",
    "edgekd.distill.cli",
    "edgekd.prune.cli",
]


def _is_self_or_parent(missing: str, module: str) -> bool:
    return module == missing or module.startswith(missing + ".")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgekd",
        description="Distil, prune, compile and benchmark small self-explaining NLP models for edge devices.",
    )
    parser.add_argument("--version", action="version", version=f"edgekd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            # a device with only edgekd-runtime installed has neither torch nor the SDK's modules:
            # the commands that need them are left out and the torch-free ones (predict, bench,
            # compare) still work. A missing edgekd module that is not the command module itself
            # (or a package above it) is a bug and is raised.
            missing = exc.name or ""
            if missing.split(".")[0] == "edgekd" and not _is_self_or_parent(missing, mod):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except EdgekdError as exc:  # user errors: one clear line, no traceback
        print(f"edgekd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgekd: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
