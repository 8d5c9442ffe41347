"""Which files of the ``edgekd`` import package belong to the edgekd-runtime distribution.

Read by both build scripts (``packaging/runtime/setup.py`` for edgekd-runtime, the root
``setup.py`` for the SDK, which leaves these files out of its wheel) and by the packaging tests,
from the single list in ``modules.txt`` next to this file. Standard library only.
"""
from __future__ import annotations

import pathlib

HERE = pathlib.Path(__file__).resolve().parent
MODULES_TXT = HERE / "modules.txt"


def runtime_modules(path: pathlib.Path = MODULES_TXT) -> list[str]:
    """The dotted names listed in ``modules.txt`` (``pkg.*`` kept as written)."""
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def runtime_files(package_root: pathlib.Path, path: pathlib.Path = MODULES_TXT) -> list[str]:
    """The .py files (POSIX paths relative to the directory that holds ``edgekd/``) that the
    runtime distribution installs. ``package_root`` is that directory."""
    package_root = pathlib.Path(package_root)
    files: set[str] = set()
    for name in runtime_modules(path):
        parts = name.split(".")
        if parts[-1] == "*":
            pkg = package_root.joinpath(*parts[:-1])
            if pkg.is_dir():
                files.update(p.relative_to(package_root).as_posix() for p in pkg.rglob("*.py")
                             if "__pycache__" not in p.parts)
            continue
        base = package_root.joinpath(*parts)
        candidate = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if candidate.is_file():
            files.add(candidate.relative_to(package_root).as_posix())
    return sorted(files)


def runtime_packages(files: list[str]) -> list[str]:
    """The dotted package names that hold ``files``."""
    return sorted({".".join(pathlib.PurePosixPath(f).parent.parts) for f in files})


def package_version(package_root: pathlib.Path) -> str:
    """``edgekd.__version__``, read from the source (both distributions carry this version)."""
    import re

    text = (pathlib.Path(package_root) / "edgekd" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if match is None:
        raise RuntimeError("edgekd/__init__.py has no __version__ = \"...\" line")
    return match.group(1)
