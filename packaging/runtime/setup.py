"""Build script of edgekd-runtime: the torch-free subset of the ``edgekd`` package (listed in
``modules.txt``) as a pure-Python wheel, from the same sources as the SDK.

    python -m build --wheel packaging/runtime      # or: pip wheel packaging/runtime

The sources are read from ``../../edgekd`` in a checkout, or from ``./edgekd`` in this
distribution's sdist (which copies them in).
"""
from __future__ import annotations

import os
import pathlib
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from runtime_layout import package_version, runtime_files, runtime_packages  # noqa: E402

# in the sdist the package sits next to this file; in a checkout it is the repository's
ROOT = HERE if (HERE / "edgekd" / "__init__.py").is_file() else HERE.parent.parent
FILES = runtime_files(ROOT)
PACKAGES = runtime_packages(FILES)
VERSION = package_version(ROOT)
SRC = os.path.relpath(ROOT / "edgekd", HERE).replace(os.sep, "/")


class RuntimeBuildPy(build_py):
    """Only the listed modules: ``edgekd/`` also holds the SDK's modules, which stay out."""

    def find_package_modules(self, package, package_dir):
        wanted = set(FILES)
        found = super().find_package_modules(package, package_dir)
        return [(pkg, mod, f) for pkg, mod, f in found
                if "/".join(pkg.split(".") + [pathlib.Path(f).name]) in wanted]


class RuntimeSdist(sdist):
    """Put the listed sources into the sdist as ``edgekd/...`` (next to this setup.py)."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, [f for f in files if not f.startswith("..")])
        for rel in FILES:
            dest = pathlib.Path(base_dir) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(ROOT / rel), str(dest))


setup(
    version=VERSION,
    packages=PACKAGES,
    package_dir={"edgekd": SRC},
    cmdclass={"build_py": RuntimeBuildPy, "sdist": RuntimeSdist},
)
