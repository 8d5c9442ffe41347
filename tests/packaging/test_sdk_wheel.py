"""The SDK: `python -m build` gives an sdist with the whole source and a Linux x86-64 wheel with
edgekd._C inside, pinned to the torch minor version it was built for; the wheel installs into a
fresh venv with torch 2.13.0 and no compiler, and loads the extension only for that torch.

To stay within CI time the wheel is built from the already compiled extension of this checkout
(``EDGEKD_PREBUILT_EXT``, the one `make build` made); compiling csrc/ in the build is the same
setup.py path minus the copy. About 90 s on an idle 2-core machine (build 20 s, pip install 35-60 s, two torch imports)."""
from __future__ import annotations

import json
import pathlib
import tarfile
import zipfile

import numpy as np
import pytest

from packaging_helpers import REPO, build, make_venv, run
from runtime_layout import package_version, runtime_files

pytestmark = [pytest.mark.slow, pytest.mark.packaging]

# the same perturbed top-k call, printed as JSON: the C++ kernel (extension loaded) or the reference
OP_SCRIPT = """
import json, warnings, torch, edgekd._ext as e
from edgekd.ops import perturbed_topk_gather
g = torch.Generator().manual_seed(0)
scores, x = torch.randn(2, 10, generator=g), torch.randn(2, 10, 8, generator=g)
out = perturbed_topk_gather(scores, x, k=4, num_samples=16, sigma=0.1, generator=torch.Generator().manual_seed(1))
print(json.dumps({"ext": e.has_extension(), "error": e.extension_error(), "out": out.tolist(),
                  "c": getattr(e._C, "__file__", None), "torch": torch.__version__}))
"""


@pytest.fixture(scope="module")
def sdk_dist(tmp_path_factory) -> dict[str, pathlib.Path]:
    from edgekd import _ext

    assert _ext.has_extension(), f"edgekd._C is not built here: {_ext.extension_error()}"
    so = pathlib.Path(_ext._C.__file__)
    assert (so.parent / "_build_info.json").is_file(), "run `make build` (setup.py build_ext --inplace) first"
    return build(REPO, tmp_path_factory.mktemp("sdk-dist"), env={"EDGEKD_PREBUILT_EXT": str(so)})


def _op(py: pathlib.Path, cwd: pathlib.Path, **env) -> dict:
    r = run([py, "-c", OP_SCRIPT], cwd=cwd, env=env)
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "stderr": r.stderr}


def test_sdist_holds_the_whole_source_and_the_wheel_the_sdk(sdk_dist):
    import torch

    with tarfile.open(sdk_dist["sdist"]) as t:
        in_sdist = {pathlib.PurePosixPath(*pathlib.PurePosixPath(n).parts[1:]).as_posix() for n in t.getnames()}
    wanted = {p.relative_to(REPO).as_posix() for d in ("csrc", "kernels") for p in (REPO / d).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    wanted |= {p.relative_to(REPO).as_posix() for p in (REPO / "edgekd").rglob("*.py")
               if "__pycache__" not in p.parts and "kernels" not in p.relative_to(REPO / "edgekd").parts}
    wanted |= {"setup.py", "pyproject.toml", "MANIFEST.in", "packaging/sdk_backend.py",
               "packaging/runtime/runtime_layout.py", "packaging/runtime/modules.txt"}
    assert wanted <= in_sdist, sorted(wanted - in_sdist)
    assert not [n for n in in_sdist if n.endswith(".so") or n.endswith("_build_info.json")]

    wheel = sdk_dist["wheel"]
    version = package_version(REPO)
    assert wheel.name == f"edgekd-{version}-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = json.loads(z.read("edgekd/_build_info.json"))
        meta = z.read(f"edgekd-{version}.dist-info/METADATA").decode()
    assert any(n.startswith("edgekd/_C.") and n.endswith(".so") for n in names)
    assert "edgekd/kernels/perturbed_topk.py" in names and "edgekd/ops/perturbed_topk.py" in names
    data = {p.relative_to(REPO).as_posix() for p in (REPO / "edgekd" / "configs").rglob("*.toml")}
    assert data <= names, sorted(data - names)  # package data (the demo profiles)
    assert not names & set(runtime_files(REPO)), "the runtime's files belong to edgekd-runtime only"
    assert not any(n.endswith("entry_points.txt") for n in names), "the edgekd command comes with edgekd-runtime"
    abi = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    assert info["torch_abi"] == abi and info["torch"] == torch.__version__
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert f"torch=={abi}.*" in requires
    assert f"edgekd-runtime=={version}" in requires


def test_sdk_wheel_installs_without_a_compiler_and_loads_the_extension(sdk_dist, runtime_dist, tmp_path):
    py = make_venv(tmp_path / "venv")
    # no compiler on PATH nor in CC/CXX: a wheel install never builds anything
    r = run([py, "-m", "pip", "install", "-q", "--no-compile", sdk_dist["wheel"], runtime_dist["wheel"]],
            env={"CC": "/bin/false", "CXX": "/bin/false"})
    print(f"pip install of the SDK + runtime wheels with torch {r.seconds:.1f} s")
    run([py, "-m", "pip", "check"])
    site = tmp_path / "venv" / "lib"
    native = _op(py, tmp_path)
    assert native["ext"], native["error"]
    assert native["torch"].startswith("2.13."), native["torch"]
    assert native["c"].startswith(str(site)), native["c"]

    # a torch of another minor version: the extension is not loaded, a warning says why, the ops
    # run on the reference (simulated by editing what the wheel says it was built for); the
    # native kernel agreed with that reference
    info_file = next(site.rglob("edgekd/_build_info.json"))
    info = json.loads(info_file.read_text())
    info_file.write_text(json.dumps({**info, "torch_abi": "2.12", "torch": "2.12.1+cpu"}))
    other = _op(py, tmp_path)
    assert not other["ext"] and other["c"] is None
    assert "built for torch 2.12.* (2.12.1+cpu) but torch 2.13" in other["error"]
    assert "built for torch 2.12.*" in other["stderr"]  # the RuntimeWarning at import
    a, b = np.array(native["out"]), np.array(other["out"])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(1.0, float(np.abs(b).max())))
