"""Loading of the native extension ``edgekd._C``.

The extension holds the C++ CPU kernels. It registers them with the dispatcher when it is
imported, so it must be loaded *before* the op modules define their schemas and decide whether to
register the pure-PyTorch CPU fallback. When it is missing (not built, or skipped with
``EDGEKD_DISABLE_EXT=1``), ``import edgekd`` still works and the ops fall back to their reference
implementation; a warning says so once, the first time an op actually runs on the fallback.
"""
from __future__ import annotations

import importlib
import logging
import os
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
        import torch  # noqa: F401  (loads libtorch, which _C links against)

        _C = importlib.import_module("edgekd._C")
    except ImportError as exc:  # not built, or built against another torch
        _load_error = f"{type(exc).__name__}: {exc}"
        logger.info("edgekd._C not available (%s); using reference kernels", _load_error)


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
