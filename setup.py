"""Build script of the edgekd SDK: the C++ CPU kernels in csrc/ become the extension ``edgekd._C``.

Two kinds of build (see the README's "Installing" section):

- an editable install (``pip install --no-build-isolation -e .``, what ``make test`` does) is the
  whole ``edgekd`` package from the checkout, with the ``edgekd`` command;
- a wheel (``python -m build --no-isolation``) is the SDK distribution: everything except the
  torch-free runtime modules listed in ``packaging/runtime/modules.txt``, which the
  edgekd-runtime distribution (``packaging/runtime/``) installs and the SDK depends on.

The in-tree backend (``packaging/sdk_backend.py``) tells them apart through ``EDGEKD_EDITABLE``.

A wheel with ``edgekd._C`` requires the torch minor version it was compiled against
(``torch==2.13.*``) and carries ``edgekd/_build_info.json``, which ``edgekd/_ext.py`` checks
before loading the extension.

Environment:
- ``EDGEKD_NO_EXT=1`` skips the native build (the ops then run on their pure-PyTorch reference).
- ``EDGEKD_PREBUILT_EXT=path/to/_C.<tag>.so`` puts that already built extension into the build
  instead of compiling csrc/ again; its ``_build_info.json`` (written next to it by
  ``setup.py build_ext --inplace``) must name the torch that runs the build.
- ``EDGEKD_NATIVE_ARCH=1`` adds ``-march=native`` (for a local build only, never a wheel to share).
"""
import glob
import json
import os
import pathlib
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "packaging" / "runtime"))
from runtime_layout import package_version, runtime_files  # noqa: E402

VERSION = package_version(ROOT)
EDITABLE = os.environ.get("EDGEKD_EDITABLE", "0") == "1"
WITH_EXT = os.environ.get("EDGEKD_NO_EXT", "0") != "1"
BUILD_INFO = "_build_info.json"

packages = ["edgekd", "edgekd.ops", "edgekd.kernels"]
package_dir = {"edgekd": "edgekd", "edgekd.kernels": "kernels"}
# any further sub-packages of edgekd/ are found automatically
for root, dirs, files in os.walk("edgekd"):
    if "__init__.py" in files:
        name = root.replace(os.sep, ".")
        if name not in packages:
            packages.append(name)

# the SDK wheel leaves the runtime's files to edgekd-runtime (no file belongs to both)
RUNTIME_FILES = set() if EDITABLE else set(runtime_files(ROOT))


def _sdk_only(package: str) -> bool:
    d = ROOT.joinpath(*package_dir.get(package, package.replace(".", "/")).split("/"))
    return any(p.relative_to(ROOT).as_posix() not in RUNTIME_FILES for p in d.glob("*.py"))


packages = [p for p in packages if p.startswith("edgekd.kernels") or _sdk_only(p)]


def _not_runtime(path: str) -> bool:
    return pathlib.Path(path).resolve().relative_to(ROOT).as_posix() not in RUNTIME_FILES


class SdkBuildPy(build_py):
    def find_package_modules(self, package, package_dir):
        return [m for m in super().find_package_modules(package, package_dir) if _not_runtime(m[2])]

    def find_data_files(self, package, src_dir):
        # the sdist's files under edgekd/ count as package data: the runtime's stay out here too
        return [f for f in super().find_data_files(package, src_dir) if _not_runtime(f)]


def torch_build_info() -> dict:
    """What a compiled ``edgekd._C`` is bound to: torch's version and C++ ABI, this Python."""
    import torch

    version = torch.__version__.split("+")[0]
    return {
        "torch": torch.__version__,
        "torch_abi": ".".join(version.split(".")[:2]),
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "python": f"cp{sys.version_info.major}{sys.version_info.minor}",
        "march_native": os.environ.get("EDGEKD_NATIVE_ARCH", "0") == "1",
    }


install_requires = ["numpy>=1.24", "safetensors>=0.4", "tqdm>=4.60", "tokenizers>=0.15"]
install_requires.append(f"torch=={torch_build_info()['torch_abi']}.*" if WITH_EXT else "torch>=2.4")
if not EDITABLE:
    install_requires.append(f"edgekd-runtime=={VERSION}")
entry_points = {"console_scripts": ["edgekd = edgekd.cli:main"]} if EDITABLE else {}

ext_modules = []
cmdclass = {"build_py": SdkBuildPy}
if WITH_EXT:
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    extra_compile_args = ["-O3", "-fopenmp", "-std=c++17", "-fvisibility=hidden"]
    if os.environ.get("EDGEKD_NATIVE_ARCH", "0") == "1":
        extra_compile_args.append("-march=native")
    ext_modules.append(
        CppExtension(
            name="edgekd._C",
            sources=sources,
            extra_compile_args={"cxx": extra_compile_args},
            extra_link_args=["-fopenmp"],
        )
    )

    class SdkBuildExt(BuildExtension.with_options(use_ninja=True)):
        """Compiles csrc/ (or copies ``EDGEKD_PREBUILT_EXT``) and writes ``_build_info.json``."""

        def build_extensions(self):
            prebuilt = os.environ.get("EDGEKD_PREBUILT_EXT")
            if not prebuilt:
                super().build_extensions()
                self._info = {**torch_build_info(), "built_from": "csrc"}
                return
            src = pathlib.Path(prebuilt).resolve()
            info_file = src.parent / BUILD_INFO
            if not src.is_file() or not info_file.is_file():
                raise SystemExit(f"EDGEKD_PREBUILT_EXT: need {src} and its {BUILD_INFO} next to it "
                                 "(run `python setup.py build_ext --inplace` first)")
            info = json.loads(info_file.read_text(encoding="utf-8"))
            if info.get("march_native"):
                raise SystemExit(f"EDGEKD_PREBUILT_EXT: {src} was built with -march=native: not for a wheel")
            now = torch_build_info()
            if {k: info.get(k) for k in ("torch_abi", "cxx11_abi", "python")} != \
                    {k: now[k] for k in ("torch_abi", "cxx11_abi", "python")}:
                raise SystemExit(f"EDGEKD_PREBUILT_EXT: {src} was built for {info}, this build runs {now}")
            for ext in self.extensions:
                dest = pathlib.Path(self.get_ext_fullpath(ext.name))
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
            self._info = info

        def run(self):
            super().run()
            # next to the extension: in the build tree for a wheel, in edgekd/ for --inplace
            dest = pathlib.Path(self.get_ext_fullpath("edgekd._C")).parent / BUILD_INFO
            info = getattr(self, "_info", None) or {**torch_build_info(), "built_from": "csrc"}
            dest.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    cmdclass["build_ext"] = SdkBuildExt

# the profiles of `edgekd demo` (TOML configs) ship inside the package
package_data = {"edgekd": ["configs/*.toml", "configs/legal-qa/*.toml"]}

setup(
    version=VERSION,
    packages=packages,
    package_dir=package_dir,
    package_data=package_data,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=install_requires,
    entry_points=entry_points,
)
