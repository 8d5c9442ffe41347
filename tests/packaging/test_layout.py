"""Fast checks of the packaging layout (nothing is built): the runtime's module list is closed
and torch-free, the command line works without the SDK's modules, the torch-version rule of
edgekd._ext, and the two kinds of SDK build (editable = whole package; wheel = SDK + edgekd-runtime)."""
from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest

from packaging_helpers import REPO
from runtime_layout import package_version, runtime_files

HEAVY = {"torch", "transformers", "safetensors", "onnx", "captum", "triton", "sklearn", "pandas", "tqdm"}


def _imports(path: pathlib.Path, module_level_only: bool = False) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included), or only
    those run on import (outside function bodies)."""
    pkg = ".".join(path.relative_to(REPO).with_suffix("").parts)
    if path.name != "__init__.py":
        pkg = pkg.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if module_level_only:  # drop function bodies: their imports run only when called
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import submodule`
    return found


def test_runtime_modules_are_closed_and_torch_free():
    files = runtime_files(REPO)
    assert "edgekd/__init__.py" in files and "edgekd/runtime/model.py" in files and "edgekd/cli.py" in files
    modules = {f[:-len("/__init__.py")].replace("/", ".") if f.endswith("/__init__.py") else
               f[:-3].replace("/", ".") for f in files}
    every = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
             for p in (REPO / "edgekd").rglob("*.py") if "__pycache__" not in p.parts}
    for f in files:
        imported = _imports(REPO / f)
        # on import: nothing the runtime wheel does not depend on (a function of a shared module,
        # e.g. WordTokenizer's tensor helper, may import torch when the SDK calls it)
        heavy = {m for m in _imports(REPO / f, module_level_only=True) if m.split(".")[0] in HEAVY}
        assert not heavy, f"{f} imports {heavy} on import: the runtime wheel has no such dependency"
        if f.startswith("edgekd/runtime/") or f == "edgekd/cli.py":  # the runtime's own code: not even lazily
            lazy = {m for m in imported if m.split(".")[0] in HEAVY}
            assert not lazy, f"{f} imports {lazy}: the runtime wheel has no such dependency"
        # an edgekd module that exists in the tree must be in the runtime too (cli.py's command
        # modules are looked up by name, not imported, and may be absent)
        missing = {m for m in imported if m.startswith("edgekd") and m in every and m not in modules}
        assert not missing, f"{f} imports {missing}, which edgekd-runtime does not ship: add them to modules.txt"


def test_cli_works_without_the_sdk_modules():
    """What edgekd-runtime installs: no torch and none of the SDK's modules (every top-level
    module or package of edgekd/ that modules.txt does not list is made unimportable)."""
    runtime = {f.split("/")[1].removesuffix(".py") for f in runtime_files(REPO) if f.count("/") >= 1}
    sdk = sorted({p.name.removesuffix(".py") for p in (REPO / "edgekd").iterdir()
                  if (p.suffix == ".py" or (p / "__init__.py").is_file())} - runtime)
    assert "compile" in sdk and "distill" in sdk and "runtime" not in sdk
    code = (
        "import sys\n"
        "for m in ['torch', *('edgekd.' + n for n in sys.argv[1:])]:\n"
        "    sys.modules[m] = None  # import of it raises ModuleNotFoundError, as when absent\n"
        "from edgekd.cli import build_parser\n"
        "print(sorted(build_parser()._subparsers._group_actions[0].choices))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *sdk], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(sorted(["answer", "bench", "compare", "generate", "predict", "sign", "verify"]))


def test_cli_skips_an_absent_command_module_but_raises_a_broken_one(monkeypatch):
    import importlib

    import edgekd.cli as cli

    real = importlib.import_module

    def fake(name, *a):
        if name == "edgekd.absent.cli":  # the area is not installed
            raise ModuleNotFoundError(f"No module named {'edgekd.absent'!r}", name="edgekd.absent")
        if name == "edgekd.broken.cli":  # installed, but it imports an edgekd module that is missing
            raise ModuleNotFoundError(f"No module named {'edgekd.gone'!r}", name="edgekd.gone")
        return real(name, *a)

    monkeypatch.setattr(cli.importlib, "import_module", fake)
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ["edgekd.runtime.cli", "edgekd.absent.cli"])
    assert "predict" in cli.build_parser().format_help()
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ["edgekd.runtime.cli", "edgekd.broken.cli"])
    with pytest.raises(ModuleNotFoundError, match="edgekd.gone"):
        cli.build_parser()


def test_extension_is_loaded_only_for_its_torch():
    from edgekd._ext import torch_mismatch

    info = {"torch": "2.13.0+cpu", "torch_abi": "2.13", "cxx11_abi": True}
    assert torch_mismatch(None, "2.14.0", True) is None  # an in-place build without the file
    assert torch_mismatch(info, "2.13.0+cpu", True) is None
    assert torch_mismatch(info, "2.13.1", True) is None  # patch releases keep the ABI
    assert torch_mismatch(info, "2.13.0+cu128", True) is None
    msg = torch_mismatch(info, "2.14.0+cpu", True)
    assert "built for torch 2.13.* (2.13.0+cpu) but torch 2.14.0+cpu is installed" in msg
    assert "torch==2.13.*" in msg and "reference" in msg
    assert "2.1" in torch_mismatch(info, "2.1.0", True)
    assert "_GLIBCXX_USE_CXX11_ABI=1" in torch_mismatch(info, "2.13.0", False)


def test_extension_refused_for_another_torch_falls_back_with_a_warning():
    code = (
        "import json, warnings, edgekd._ext as e\n"
        "e.build_info = lambda: {'torch': '2.12.0+cpu', 'torch_abi': '2.12', 'cxx11_abi': True}\n"
        "e._C = None\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    e._load()\n"
        "print(json.dumps([e.has_extension(), e.extension_error(), [str(x.message) for x in w]]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    has, error, warned = json.loads(r.stdout)
    assert has is False and "built for torch 2.12.*" in error
    assert warned == [f"edgekd: {error}"]


@pytest.mark.parametrize("editable", [True, False])
def test_sdk_metadata_editable_is_the_whole_package_wheel_needs_the_runtime(editable, tmp_path):
    hook = "prepare_metadata_for_build_editable" if editable else "prepare_metadata_for_build_wheel"
    code = (f"import sys; sys.path.insert(0, 'packaging'); import sdk_backend as b; "
            f"print(b.{hook}(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    dist_info = tmp_path / r.stdout.strip().splitlines()[-1]
    meta = (dist_info / "METADATA").read_text()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    runtime_req = f"edgekd-runtime=={package_version(REPO)}"
    scripts = (dist_info / "entry_points.txt").read_text() if (dist_info / "entry_points.txt").exists() else ""
    if editable:
        assert runtime_req not in requires and "edgekd = edgekd.cli:main" in scripts
    else:
        assert runtime_req in requires and "edgekd" not in scripts
    assert any(r.startswith("torch==") and r.endswith(".*") for r in requires)
