"""edgekd: distil, prune and compile transformer NLP models into small, fast, self-explaining
models for edge devices.

The heavy parts (torch, transformers) are imported lazily: ``import edgekd`` is cheap, and
``edgekd.runtime`` works on devices that have no torch at all.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from edgekd.errors import BundleError, EdgekdError, EdgekdValueError  # noqa: E402

_LAZY_SUBMODULES = {
    "ops",
    "students",
    "data",
    "teacher",
    "distill",
    "prune",
    "quantize",
    "compile",
    "pipeline",
    "runtime",
    "kernels",
}


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"edgekd.{name}")
    raise AttributeError(f"module 'edgekd' has no attribute {name!r}")


__all__ = ["__version__", "EdgekdError", "EdgekdValueError", "BundleError"]
