"""Helpers of the packaging tests (imported by this unique name: `from conftest import` is
ambiguous when several test folders have a conftest): building with `python -m build`, fresh
virtual environments, running commands with their output shown on failure."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "packaging" / "runtime"))  # runtime_layout: the runtime's file list


def run(cmd, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run a command; on failure the assertion shows its output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of this checkout leaks in
    env.update(kw.pop("env", {}))
    t0 = time.perf_counter()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env, **kw)
    r.seconds = time.perf_counter() - t0
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def build(project: pathlib.Path, out: pathlib.Path, env: dict | None = None) -> dict[str, pathlib.Path]:
    """``python -m build --no-isolation`` (sdist, then the wheel from the sdist) with this
    interpreter's setuptools/torch; returns {"sdist": ..., "wheel": ...}."""
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, project], env=env or {})
    return {"sdist": next(out.glob("*.tar.gz")), "wheel": next(out.glob("*.whl"))}


def make_venv(path: pathlib.Path) -> pathlib.Path:
    """A fresh virtual environment from the base interpreter (none of this one's packages)."""
    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", path])
    return path / "bin" / "python"
