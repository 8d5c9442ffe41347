"""The ``edgekd`` command line: a thin layer over the Python API.

Each area registers its sub-commands from its own module (``edgekd/<area>/cli.py`` exposing
``register(subparsers)``), listed in ``_COMMAND_MODULES``. Modules are imported only when the
command line is built, so ``edgekd --help`` stays light.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from edgekd import __version__
from edgekd.errors import EdgekdDeprecationWarning, EdgekdError

# module paths that expose register(subparsers), in the order of the job (and of `edgekd --help`):
# the main job, its steps, then compiling and running bundles; each area adds its own line
_COMMAND_MODULES: list[str] = [
    "edgekd.pipeline.cli",
    "edgekd.distill.cli",
    "edgekd.teacher.cli",
    "edgekd.prune.cli",
    "edgekd.compile.cli",
    "edgekd.runtime.cli",
    "edgekd.llm.cli",
    "edgekd.qa.cli",
]


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
    parser.epilog = _nested_epilog(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `edgekd demo --profile quick train.epochs=3 --threads 2 ig.steps=4`: table.key=value items
        # anywhere after the verb are overrides (argparse takes only the first run of positionals)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "func", None):
        args.func = _under_torchrun(_printing_deprecations(args.func))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except EdgekdError as exc:  # user errors: one clear line, no traceback
        print(f"edgekd: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the user named cannot be read or written
        print(f"edgekd: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgekd: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def _nested_epilog(sub: argparse._SubParsersAction) -> str | None:
    """One line naming every nested command (``teacher finetune``, ``prune tokens``, ...), so
    ``edgekd --help`` lists all of them, flat and nested alike."""
    nested = []
    for name, p in sub.choices.items():
        for action in p._actions:  # noqa: SLF001  (argparse has no public accessor)
            if isinstance(action, argparse._SubParsersAction):
                nested += [f"{name} {child}" for child in action.choices]
    if not nested:
        return None
    return "nested commands: " + ", ".join(nested) + ". Run `edgekd COMMAND --help` for the flags of each."


def _show_deprecation(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """Deprecations of old settings and spellings: one ``edgekd: warning:`` line, as for old flags."""
    if issubclass(category, EdgekdDeprecationWarning):
        print(f"edgekd: warning: {message}", file=sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def _printing_deprecations(func):
    """``func`` with the deprecations it raises printed as one ``edgekd: warning:`` line each."""
    def run(args):
        with warnings.catch_warnings():
            warnings.showwarning = _show_deprecation
            return func(args)

    return run


# the SDK module that runs a verb as one rank of a torchrun job (not in the torch-free runtime wheel,
# whose `edgekd` command never runs under torchrun)
_TORCHRUN_MODULE = "edgekd.distributed"


def _under_torchrun(func):
    """``func`` as one rank of a ``torchrun --nproc-per-node N -m edgekd ...`` job
    (:func:`edgekd.distributed.run_as_rank`: the process group is started first, only rank 0
    prints to stdout, the group is closed at the end). Without torchrun (``WORLD_SIZE`` unset or 1)
    ``func`` runs as is and nothing more is imported."""
    def run(args):
        import os

        if os.environ.get("WORLD_SIZE", "1").strip() in ("", "1"):
            return func(args)
        return importlib.import_module(_TORCHRUN_MODULE).run_as_rank(func, args)

    return run


def _is_self_or_parent(missing: str, module: str) -> bool:
    """``missing`` (a ModuleNotFoundError's name) is ``module`` or a package above it: not installed."""
    return module == missing or module.startswith(missing + ".")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
