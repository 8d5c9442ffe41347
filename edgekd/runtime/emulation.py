"""Run bundles on an emulated ARM64 CPU and count instructions per inference (torch-free).

ARM64: the project's ``shared/tools/arm64/setup.sh`` prepares an aarch64 CPython with aarch64
numpy/onnxruntime/tokenizers wheels under qemu-user (cache: ``~/.cache/edgekd/arm64``, override
with ``EDGEKD_ARM64_DIR``; tool location override ``EDGEKD_ARM64_TOOL``). Its ``count`` wrapper
counts guest instructions between marks. x86-64: ``valgrind --tool=callgrind`` (or ``perf stat
-e instructions:u`` when the kernel allows it) counts host instructions; per-inference counts are
the difference between a run with N extra inferences and one with none, divided by N.

Emulated wall-clock time means nothing for a real device, so only instruction counts are kept.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Sequence

from edgekd.errors import EdgekdError

_REPO = pathlib.Path(__file__).resolve().parents[2]
ARM64_REQUIREMENTS = ("numpy", "onnxruntime", "tokenizers")


class EmulationError(EdgekdError):
    """The ARM64 emulator or an instruction counter failed."""


def arm64_tool() -> pathlib.Path:
    """Path of ``setup.sh`` (it may not exist: see :func:`arm64_available`)."""
    env = os.environ.get("EDGEKD_ARM64_TOOL")
    return pathlib.Path(env) if env else _REPO.parent / "shared" / "tools" / "arm64" / "setup.sh"


def arm64_available() -> bool:
    return arm64_tool().is_file()


def arm64_dir() -> pathlib.Path:
    env = os.environ.get("EDGEKD_ARM64_DIR")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "edgekd" / "arm64"


def ensure_arm64(timeout: float = 900) -> pathlib.Path:
    """Prepare (once; re-runs are cheap) the emulated ARM64 Python; returns its directory."""
    tool = arm64_tool()
    if not tool.is_file():
        raise EmulationError(f"arm64: emulator setup script not found at {tool}")
    d = arm64_dir()
    stamp = d / ".edgekd-ready"
    if (d / "python").is_file() and (d / "count").is_file() and stamp.is_file():
        return d
    d.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["bash", str(tool), str(d), *ARM64_REQUIREMENTS], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not (d / "python").is_file():
        raise EmulationError(f"arm64: {tool} failed (rc={r.returncode}): {r.stderr[-2000:]}")
    stamp.write_text("ok\n")
    return d


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONHOME", None)
    return env


def _texts_file(texts: Sequence[str], tmp: str) -> str:
    p = os.path.join(tmp, "texts.json")
    with open(p, "w", encoding="utf-8") as fh:
        json.dump(list(texts), fh)
    return p


def run_probe_arm64(bundle: str | os.PathLike, texts: Sequence[str], precision: str, timeout: float = 300,
                    count_repeat: int = 0) -> dict[str, Any]:
    """Run :mod:`edgekd.runtime.probe` on the emulated ARM64 CPU; returns its JSON plus, when
    ``count_repeat`` > 0, ``instructions_per_inference`` (batch 1, single thread)."""
    d = ensure_arm64()
    with tempfile.TemporaryDirectory(prefix="edgekd-arm64-") as tmp:
        cmd = [str(d / ("count" if count_repeat else "python")), "-m", "edgekd.runtime.probe", str(bundle),
               "--target", "arm64", "--precision", precision, "--texts", _texts_file(texts, tmp),
               "--repeat", str(count_repeat)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=tmp)
    if r.returncode != 0:
        raise EmulationError(f"arm64 probe failed (rc={r.returncode}): {r.stderr[-3000:]}")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise EmulationError(f"arm64 probe printed no result: {r.stdout[-1000:]} {r.stderr[-1000:]}")
    res = json.loads(lines[-1])
    if count_repeat:
        marks = {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"insncount mark (\d+) (\d+)", r.stderr)}
        if 1 not in marks or 2 not in marks:
            raise EmulationError(f"arm64 count: marks missing in stderr: {r.stderr[-1000:]}")
        res["instructions_per_inference"] = (marks[2] - marks[1]) / count_repeat
        res["cpu"] = (d / "cpu").read_text().strip() if (d / "cpu").is_file() else None
    return res


def x86_counter() -> str | None:
    """Which host instruction counter works here: ``"perf"``, ``"callgrind"`` or None."""
    if shutil.which("perf"):
        r = subprocess.run(["perf", "stat", "-x,", "-e", "instructions:u", "true"], capture_output=True, text=True)
        if r.returncode == 0 and re.search(r"^\d+,", r.stderr, re.M):
            return "perf"
    if shutil.which("valgrind"):
        return "callgrind"
    return None


def _count_total(cmd: list[str], counter: str, tmp: str, timeout: float) -> int:
    if counter == "perf":
        full = ["perf", "stat", "-x,", "-e", "instructions:u", *cmd]
    else:
        full = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", *cmd]
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=tmp)
    if r.returncode != 0:
        raise EmulationError(f"{counter} failed (rc={r.returncode}): {r.stderr[-2000:]}")
    if counter == "perf":
        m = re.search(r"^(\d+),[^,]*,instructions", r.stderr, re.M)
    else:
        m = re.search(r"Collected\s*:\s*(\d+)", r.stderr)
    if not m:
        raise EmulationError(f"{counter}: no instruction total in output: {r.stderr[-1000:]}")
    return int(m.group(1))


def count_x86_instructions(bundle: str | os.PathLike, text: str, precision: str, repeat: int = 5,
                           timeout: float = 900) -> dict[str, Any]:
    """Host (x86-64) instructions per batch-1 inference of ``text``: (total with ``repeat`` extra
    inferences - total with none) / ``repeat``; single-threaded onnxruntime."""
    counter = x86_counter()
    if counter is None:
        raise EmulationError("x86 instruction count: neither perf nor valgrind is usable here")
    with tempfile.TemporaryDirectory(prefix="edgekd-count-") as tmp:
        tf = _texts_file([text], tmp)
        base = [sys.executable, "-m", "edgekd.runtime.probe", str(bundle), "--target", "x86_64",
                "--precision", precision, "--texts", tf, "--no-output"]
        t0 = _count_total(base + ["--repeat", "0"], counter, tmp, timeout)
        t1 = _count_total(base + ["--repeat", str(repeat)], counter, tmp, timeout)
    return {"instructions_per_inference": (t1 - t0) / repeat, "counter": counter, "repeat": repeat,
            "note": "valgrind reports CPUID without AVX-512, so ORT takes its AVX2 kernels under callgrind"
            if counter == "callgrind" else "perf stat -e instructions:u"}
