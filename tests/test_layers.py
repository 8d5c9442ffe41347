"""Layering: imports only go downward (edgekd/tools/layers.py holds the table), and the device
runtime imports without torch."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgekd.tools import layers

REPO = Path(__file__).resolve().parents[1]


def test_no_package_imports_one_above_it():
    back, unplaced = layers.check()
    assert not unplaced, f"modules the layer table does not place: {unplaced}"
    assert not back, "imports of a higher layer:\n" + "\n".join(map(str, back))


def test_the_walk_sees_every_module_and_function_level_imports():
    mods = dict(layers.iter_modules())
    # every .py file of the package (edgekd.kernels included, shipped from kernels/) is walked
    assert "edgekd.runtime.model" in mods and "edgekd.kernels" in mods and "edgekd.tools.layers" in mods
    found = {m for m, _ in layers.imports_of("edgekd.teacher.cli", mods["edgekd.teacher.cli"])}
    # teacher/cli.py imports these inside functions only
    assert "edgekd.assets" in found and "edgekd.teacher" in found


def _fake_package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "edgekd"
    for rel, src in files.items():
        p = pkg / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(src))
    return pkg


def test_checker_catches_every_kind_of_back_edge(tmp_path):
    pkg = _fake_package(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "runtime/__init__.py": "from edgekd.errors import EdgekdError\n",  # downward: fine
        "runtime/model.py": "from .bundle import x\nfrom ..data import y\n",  # same layer: fine
        "teacher/__init__.py": "def f():\n    from edgekd.distill.api import g\n",  # function level
        "teacher/model.py": "import edgekd.compile.specs\n",
        "data/__init__.py": "from .. import pipeline\n",  # relative, from-package
        "ops/x.py": "import importlib\nm = importlib.import_module('edgekd.cli')\n",
        "metrics.py": "from edgekd.quantize import q\n",
        "mystery/__init__.py": "",
    })
    back, unplaced = layers.check(pkg)
    got = {(e.importer, e.imported) for e in back}
    assert got == {
        ("edgekd.teacher", "edgekd.distill.api"),
        ("edgekd.teacher.model", "edgekd.compile.specs"),
        ("edgekd.data", "edgekd.pipeline"),
        ("edgekd.ops.x", "edgekd.cli"),
        ("edgekd.metrics", "edgekd.quantize"),
    }
    assert unplaced == ["edgekd.mystery"]
    assert all(e.line >= 1 and e.path.startswith("edgekd/") for e in back)


def test_cli_prints_the_table_and_exits_by_the_result():
    r = subprocess.run([sys.executable, "-m", "edgekd.tools.layers"], cwd=REPO, capture_output=True, text=True)
    for layer, names in layers.LAYERS.items():
        assert any(line.startswith(f"| {layer} |") and all(n in line for n in names) for line in r.stdout.splitlines())
    assert r.returncode == (1 if layers.check()[0] or layers.check()[1] else 0), r.stdout


BLOCK_TORCH = """
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "triton", "sklearn"}:
            raise ImportError(f"blocked for this test: {name}")
        return None
sys.meta_path.insert(0, Block())
import edgekd.runtime
for m in pkgutil.walk_packages(edgekd.runtime.__path__, "edgekd.runtime."):
    importlib.import_module(m.name)
for name in ("edgekd.metrics", "edgekd.assets", "edgekd.errors", "edgekd.data.readers", "edgekd.tools.layers"):
    importlib.import_module(name)
from edgekd.runtime import Bundle
print("ok", sorted(k for k in sys.modules if k.startswith("edgekd.runtime")))
"""


def test_runtime_imports_with_torch_blocked():
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("ok") and "edgekd.runtime.bench" in r.stdout


@pytest.mark.parametrize("module", ["edgekd.metrics", "edgekd.assets"])
def test_ground_floor_imports_only_numpy_and_the_stdlib(module):
    code = (f"import sys; import {module}; "
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in "
            "{'torch', 'sklearn', 'pandas', 'pyarrow', 'onnxruntime', 'tokenizers', 'transformers'}); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
