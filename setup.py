"""Build script: the C++ CPU kernels in csrc/ become the extension ``edgekd._C``.

Set ``EDGEKD_NO_EXT=1`` to skip the native build (the package then falls back to the
pure-PyTorch reference kernels with a one-time warning).
"""
import glob
import os

from setuptools import setup

packages = ["edgekd", "edgekd.ops", "edgekd.kernels"]
package_dir = {"edgekd": "edgekd", "edgekd.kernels": "kernels"}
# any further sub-packages of edgekd/ are found automatically
for root, dirs, files in os.walk("edgekd"):
    if "__init__.py" in files:
        name = root.replace(os.sep, ".")
        if name not in packages:
            packages.append(name)

ext_modules = []
cmdclass = {}
if os.environ.get("EDGEKD_NO_EXT", "0") != "1":
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
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

# the profiles of `edgekd demo` (TOML configs) ship inside the package
package_data = {"edgekd": ["configs/*.toml"]}

setup(packages=packages, package_dir=package_dir, package_data=package_data, ext_modules=ext_modules,
      cmdclass=cmdclass)
