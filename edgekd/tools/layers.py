"""The layer table of edgekd and a check that imports only go downward.

``python -m edgekd.tools.layers`` prints the table (layer -> packages and modules, ``(absent)`` for
one not in the tree) and every back-edge: an import, at module level or inside a function, of a
package on a higher layer than the importer. It exits 1 when there is a back-edge or a module that
the table does not place, else 0. Imports inside the same layer are allowed.

Found imports: ``import edgekd.x``, ``from edgekd.x import y``, ``from edgekd import x``, relative
imports, and ``importlib.import_module("edgekd.x")`` with a literal name. The check reads the source
with :mod:`ast`; it imports nothing, so it runs without torch.
"""
from __future__ import annotations

import ast
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT_PACKAGE = "edgekd"

# layer -> the top-level packages/modules of edgekd on it (an import may only go to the same or a
# lower layer). "edgekd" is the package's own __init__.
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("edgekd", "errors", "_C", "_ext", "_lazy", "metrics", "assets", "cliflags", "settings", "chunks", "distributed"),
    1: ("ops", "data", "runtime", "training", "kernels"),
    2: ("students", "teacher", "prune", "quantize", "llm"),
    3: ("distill", "qa"),
    4: ("compile",),
    5: ("pipeline",),
    6: ("cli", "__main__", "tools"),
}
LAYER_NAMES = {0: "ground floor", 1: "building blocks", 2: "models and model surgery", 3: "distillation",
               4: "export", 5: "main job", 6: "command line and tools"}
LAYER_OF: dict[str, int] = {name: layer for layer, names in LAYERS.items() for name in names}


@dataclass(frozen=True)
class Edge:
    importer: str  # dotted module name
    imported: str  # dotted module name
    line: int
    path: str

    def __str__(self) -> str:
        a, b = top_level(self.importer), top_level(self.imported)
        return (f"{self.path}:{self.line}: {self.importer} (layer {LAYER_OF.get(a, '?')}) imports "
                f"{self.imported} (layer {LAYER_OF.get(b, '?')})")


def top_level(module: str) -> str:
    """``edgekd.distill.api`` -> ``distill``; ``edgekd`` -> ``edgekd``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def iter_modules(pkg_dir: Path | None = None, package: str = ROOT_PACKAGE):
    """(dotted name, path) of every ``.py`` file under ``pkg_dir`` (symlinked sub-packages included)."""
    default = pkg_dir is None or Path(pkg_dir).resolve() == package_dir()
    pkg_dir = Path(pkg_dir or package_dir())
    yield from _walk(pkg_dir, package)
    if default and not (pkg_dir / "kernels").is_dir():
        # a source checkout ships the Triton kernels from the repository's kernels/ folder as
        # edgekd.kernels (setup.py's package_dir): walk them where the import system finds them
        kernels = _subpackage_dir(f"{package}.kernels")
        if kernels is not None:
            yield from _walk(kernels, f"{package}.kernels")


def _subpackage_dir(name: str) -> Path | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _walk(pkg_dir: Path, package: str):
    for dirpath, dirnames, filenames in os.walk(pkg_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        rel = Path(dirpath).relative_to(pkg_dir)
        for f in sorted(filenames):
            if not f.endswith(".py"):
                continue
            parts = [package, *rel.parts]
            if f != "__init__.py":
                parts.append(f[:-3])
            yield ".".join(parts), Path(dirpath) / f


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports_of(module: str, path: Path, package: str = ROOT_PACKAGE) -> list[tuple[str, int]]:
    """Every ``package.*`` module imported anywhere in ``path`` (module level and inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, is_package, node.level, node.module) if node.level else node.module
            if base is None:
                continue
            if base == package:  # from edgekd import x: x may be a sub-package
                found += [(f"{package}.{a.name}" if a.name in LAYER_OF else package, node.lineno) for a in node.names]
            else:
                found.append((base, node.lineno))
        elif isinstance(node, ast.Call):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if fname == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append((node.args[0].value, node.lineno))
    return [(m, line) for m, line in found if m == package or m.startswith(package + ".")]


def check(pkg_dir: Path | None = None, package: str = ROOT_PACKAGE) -> tuple[list[Edge], list[str]]:
    """(back-edges, modules whose top-level name is not in :data:`LAYERS`)."""
    pkg_dir = Path(pkg_dir or package_dir())
    back, unplaced = [], []
    for module, path in iter_modules(pkg_dir, package):
        src = top_level(module)
        if src not in LAYER_OF:
            unplaced.append(module)
            continue
        for target, line in imports_of(module, path, package):
            dst = top_level(target)
            if LAYER_OF.get(dst, -1) > LAYER_OF[src] or dst not in LAYER_OF:
                back.append(Edge(module, target, line, os.path.relpath(path, pkg_dir.parent)))
    return back, unplaced


def table(pkg_dir: Path | None = None) -> str:
    pkg_dir = Path(pkg_dir or package_dir())
    present = {top_level(m) for m, _ in iter_modules(pkg_dir)}
    present |= {f.name.split(".")[0] for f in pkg_dir.glob("*.so")} | {f.name.split(".")[0] for f in pkg_dir.glob("*.pyd")}
    lines = ["| layer | | packages and modules (imports go only to the same or a lower layer) |",
             "| --- | --- | --- |"]
    for layer in sorted(LAYERS, reverse=True):
        names = [n if n in present else f"{n} (absent)" for n in LAYERS[layer]]
        lines.append(f"| {layer} | {LAYER_NAMES[layer]} | {', '.join(names)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    print(table())
    back, unplaced = check()
    for m in unplaced:
        print(f"not in the layer table: {m} (add its package to edgekd/tools/layers.py LAYERS)")
    for e in back:
        print(f"back-edge: {e}")
    if back or unplaced:
        print(f"{len(back)} back-edge(s), {len(unplaced)} unplaced module(s)")
        return 1
    print("no back-edges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
