"""In-tree PEP 517 backend of the edgekd SDK: setuptools' own, told whether it builds an
editable install.

An editable install (``pip install -e .``, the developer set-up of ``make test``) is the whole
``edgekd`` package from the checkout, with the ``edgekd`` command; a wheel or sdist build is the
SDK distribution, which leaves the runtime's modules (``packaging/runtime/modules.txt``) to the
edgekd-runtime distribution and depends on it. ``setup.py`` reads ``EDGEKD_EDITABLE``.
"""
from __future__ import annotations

import functools
import os

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the wheel and sdist hooks unchanged)


def _editable(hook):
    @functools.wraps(hook)
    def wrapper(*args, **kwargs):
        old = os.environ.get("EDGEKD_EDITABLE")
        os.environ["EDGEKD_EDITABLE"] = "1"
        try:
            return hook(*args, **kwargs)
        finally:
            if old is None:
                os.environ.pop("EDGEKD_EDITABLE", None)
            else:
                os.environ["EDGEKD_EDITABLE"] = old

    return wrapper


get_requires_for_build_editable = _editable(_setuptools.get_requires_for_build_editable)
prepare_metadata_for_build_editable = _editable(_setuptools.prepare_metadata_for_build_editable)
build_editable = _editable(_setuptools.build_editable)
