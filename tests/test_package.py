import os
import subprocess
import sys

import pytest


def _run(code: str, **env):
    e = dict(os.environ)
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)


def test_import_is_cheap_and_versioned():
    r = _run("import sys, edgekd; print(edgekd.__version__); print('torch' in sys.modules)")
    assert r.returncode == 0, r.stderr
    version, torch_loaded = r.stdout.split()
    assert version.count(".") == 2
    assert torch_loaded == "False"  # the top-level package does not pull in torch


def test_extension_can_be_disabled():
    r = _run(
        "from edgekd._ext import has_extension, extension_error; print(has_extension(), extension_error())",
        EDGEKD_DISABLE_EXT="1",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("False disabled")


def test_kernels_package_is_shipped_as_edgekd_kernels():
    import edgekd.kernels
    from edgekd.kernels import utils

    assert utils.next_power_of_2(5) == 8
    assert utils.next_power_of_2(1) == 1
    assert os.path.basename(os.path.dirname(edgekd.kernels.__file__)) == "kernels"


def test_errors_are_value_errors():
    from edgekd import BundleError, EdgekdValueError

    assert issubclass(EdgekdValueError, ValueError)
    assert issubclass(BundleError, ValueError)
    with pytest.raises(ValueError):
        raise BundleError("x")


@pytest.mark.skipif(os.environ.get("EDGEKD_STRICT", "0") != "1", reason="only under `make test` (EDGEKD_STRICT=1)")
def test_strict_run_has_the_extension_and_triton():
    """`make test` sets EDGEKD_STRICT=1: there, tests that depend on the native extension or on
    triton must run, not skip, so a broken build fails CI instead of hiding behind skips."""
    from edgekd._ext import extension_error, has_extension

    assert has_extension(), f"edgekd._C did not load: {extension_error()}"
    import triton  # noqa: F401
