"""Lazy re-exports for packages whose modules pull in torch or transformers.

``edgekd.cli`` imports each area's ``cli`` module to build the command line, which runs that area's
package ``__init__``; the torch-free commands (``edgekd bench``, ``edgekd compare``) must not pay for
torch, so such packages re-export their API through :func:`lazy_package` instead of eager imports.

A re-exported name that equals its submodule's name (``edgekd.distill.explain`` the function, from
the submodule ``explain``) behaves as with an eager ``from .explain import explain``: the package
attribute is the function, even after the submodule is imported directly.
"""
from __future__ import annotations

import importlib
import sys
import types


class _LazyPackage(types.ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        # the import system sets package.<sub> = <submodule> after importing it; for a name that is
        # also a re-export from that very submodule, keep the re-exported object instead
        exports = self.__dict__.get("_lazy_exports", {})
        if (
            isinstance(value, types.ModuleType)
            and exports.get(name) == name
            and value.__name__ == f"{self.__name__}.{name}"
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_package(package: str, exports: dict[str, str]) -> None:
    """Make ``package`` re-export ``name -> submodule`` lazily (call at the end of its __init__)."""
    module = sys.modules[package]

    def __getattr__(name: str) -> object:
        sub = exports.get(name)
        if sub is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{sub}"), name)
        setattr(module, name, value)  # cache: the next access is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(module.__dict__))

    module.__dict__.update(_lazy_exports=dict(exports), __getattr__=__getattr__, __dir__=__dir__)
    module.__all__ = list(exports)
    module.__class__ = _LazyPackage
