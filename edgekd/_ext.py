"""Loading of the native extension ``edgekd._C``.

The extension holds the C++ CPU kernels. It registers them with the dispatcher when it is
imported, so it must be loaded *before* the op modules define their schemas and decide whether to
register the pure-PyTorch CPU fallback. When it is missing (not built, or skipped with
``EDGEKD_DISABLE_EXT=1``), ``import edgekd`` still works and the ops fall back to their reference
implementation; a warning says so once, the first time an op actually runs on the fallback.

A C++ extension is bound to the torch it was compiled against. A built ``edgekd._C`` comes with
``edgekd/_build_info.json`` (written by ``setup.py build_ext``): the extension is loaded only when
the running torch has the same minor version (``2.13.x`` for ``2.13``) and C++ ABI; otherwise a
warning names both versions and the ops use the reference kernels. Without the file (an older
in-place build) the extension is loaded unchecked.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import pathlib
import warnings

logger = logging.getLogger("edgekd")

_C = None
_load_error: str | None = None
_warned = False


def _load() -> None:
    global _C, _load_error
    if os.environ.get("EDGEKD_DISABLE_EXT", "0") == "1":
        _load_error = "disabled by EDGEKD_DISABLE_EXT=1"
        return
    try:
        import torch  # loads libtorch, which _C links against

        mismatch = torch_mismatch(build_info(), torch.__version__, bool(torch._C._GLIBCXX_USE_CXX11_ABI))
        if mismatch is not None:
            _load_error = mismatch
            warnings.warn(f"edgekd: {mismatch}", RuntimeWarning, stacklevel=2)
            return
        _C = importlib.import_module("edgekd._C")
    except ImportError as exc:  # not built, or built against another torch
        _load_error = f"{type(exc).__name__}: {exc}"
        logger.info("edgekd._C not available (%s); using reference kernels", _load_error)


def build_info() -> dict | None:
    """What the installed ``edgekd._C`` was built for (``_build_info.json``), or None."""
    path = pathlib.Path(__file__).with_name("_build_info.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def torch_mismatch(info: dict | None, torch_version: str, cxx11_abi: bool) -> str | None:
    """Why an extension built as ``info`` must not be loaded into this torch (None: it may)."""
    if not info:
        return None
    running = ".".join(torch_version.split("+")[0].split(".")[:2])
    built = info.get("torch_abi")
    if built != running:
        return (f"edgekd._C was built for torch {built}.* ({info.get('torch')}) but torch {torch_version} is "
                f"installed, so the native kernels are not loaded and the ops run on the PyTorch reference. "
                f"Install torch=={built}.*, or build edgekd for this torch: "
                f"pip install --no-build-isolation --no-binary edgekd edgekd")
    if "cxx11_abi" in info and bool(info["cxx11_abi"]) != cxx11_abi:
        return (f"edgekd._C was built with _GLIBCXX_USE_CXX11_ABI={int(info['cxx11_abi'])} but torch "
                f"{torch_version} uses {int(cxx11_abi)}; the native kernels are not loaded")
    return None


_load()


def has_extension() -> bool:
    """True when the C++ CPU kernels are loaded."""
    return _C is not None


def extension_error() -> str | None:
    """Why the extension is not loaded (None when it is)."""
    return _load_error


def warn_fallback(op: str) -> None:
    """Warn once per process that an op runs on the pure-PyTorch fallback."""
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        f"edgekd: the native CPU extension is not available ({_load_error}); "
        f"'{op}' and other ops run on the slower PyTorch reference. "
        "Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=3,
    )
