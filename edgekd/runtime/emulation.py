"""Run bundles on an emulated ARM64 CPU and count instructions per inference (torch-free).

ARM64: the project's ``shared/tools/arm64/setup.sh`` prepares an aarch64 CPython with aarch64
numpy/onnxruntime/tokenizers wheels under qemu-user (cache: ``~/.cache/edgekd/arm64``, override
with ``EDGEKD_ARM64_DIR``; tool location override ``EDGEKD_ARM64_TOOL``). Its ``count`` wrapper
counts guest instructions between marks. x86-64: ``valgrind --tool=callgrind`` counts host instructions between the same
marks (``perf stat`` is no use here: it counts the whole process, and hardware counters are not
available in this container).

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


def _parse_rows(stdout: str, stderr: str, what: str) -> list[dict[str, Any]]:
    rows = [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{")]
    if not rows:
        raise EmulationError(f"{what}: the probe printed no result: {stdout[-1000:]} {stderr[-1000:]}")
    return rows


def run_probe_arm64(bundle: str | os.PathLike, texts: Sequence[str], precisions: Sequence[str] = ("auto",),
                    timeout: float = 3600, count_repeat: int = 0) -> list[dict[str, Any]]:
    """Run :mod:`edgekd.runtime.probe` once on the emulated ARM64 CPU for each precision (one
    emulated interpreter for all); returns one dict per precision (variant, logits, attention),
    plus ``instructions_per_inference`` (batch 1, single thread) when ``count_repeat`` > 0."""
    d = ensure_arm64()
    bundle = os.path.abspath(bundle)  # the probe runs in a temporary directory
    with tempfile.TemporaryDirectory(prefix="edgekd-arm64-") as tmp:
        cmd = [str(d / ("count" if count_repeat else "python")), "-m", "edgekd.runtime.probe", str(bundle),
               "--target", "arm64", "--precision", ",".join(precisions), "--texts", _texts_file(texts, tmp),
               "--repeat", str(count_repeat)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=tmp)
        except subprocess.TimeoutExpired as exc:
            raise EmulationError(f"arm64 probe: no answer within {timeout:.0f} s: {' '.join(cmd)}") from exc
    if r.returncode != 0:
        raise EmulationError(f"arm64 probe failed (rc={r.returncode}): {r.stderr[-3000:]}")
    rows = _parse_rows(r.stdout, r.stderr, "arm64")
    if count_repeat:
        marks = {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"insncount mark (\d+) (\d+)", r.stderr)}
        cpu = (d / "cpu").read_text().strip() if (d / "cpu").is_file() else None
        for k, row in enumerate(rows):
            a, b = marks.get(2 * k + 1), marks.get(2 * k + 2)
            if a is None or b is None:
                raise EmulationError(f"arm64 count: marks {2 * k + 1}/{2 * k + 2} missing: {r.stderr[-1000:]}")
            row["instructions_per_inference"] = (b - a) / count_repeat
            row["cpu"] = cpu
    return rows


def count_x86_instructions(bundle: str | os.PathLike, text: str, precisions: Sequence[str] = ("auto",),
                           repeat: int = 3, timeout: float = 1800) -> list[dict[str, Any]]:
    """Host (x86-64) instructions per batch-1 ``session.run`` of ``text``, single-threaded, with
    ``valgrind --tool=callgrind --dump-before=getsid``: the probe's marks split the profile into
    parts and the part between a variant's two marks holds exactly ``repeat`` inferences."""
    if not shutil.which("valgrind"):
        raise EmulationError("x86 instruction count: valgrind is not installed")
    bundle = os.path.abspath(bundle)  # the probe runs in a temporary directory
    with tempfile.TemporaryDirectory(prefix="edgekd-count-") as tmp:
        tf = _texts_file([text], tmp)
        cmd = ["valgrind", "--tool=callgrind", "--dump-before=getsid", f"--callgrind-out-file={tmp}/cg.out",
               sys.executable, "-m", "edgekd.runtime.probe", str(bundle), "--target", "x86_64",
               "--precision", ",".join(precisions), "--texts", tf, "--no-output", "--repeat", str(repeat)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=tmp)
        if r.returncode != 0:
            raise EmulationError(f"callgrind failed (rc={r.returncode}): {r.stderr[-2000:]}")
        rows = _parse_rows(r.stdout, r.stderr, "callgrind")
        parts = {}
        for p in pathlib.Path(tmp).glob("cg.out*"):
            m = re.search(r"^part:\s*(\d+)", p.read_text(errors="replace"), re.M)
            tot = re.search(r"^(?:summary|totals):\s*(\d+)", p.read_text(errors="replace"), re.M)
            if m and tot:
                parts[int(m.group(1))] = int(tot.group(1))
    for k, row in enumerate(rows):
        # dump k*2+1 ends at the variant's first mark; part 2k+2 runs from it to the second mark
        if 2 * k + 2 not in parts:
            raise EmulationError(f"callgrind: profile part {2 * k + 2} missing (have {sorted(parts)})")
        row.update({"instructions_per_inference": parts[2 * k + 2] / repeat, "repeat": repeat,
                    "counter": "valgrind --tool=callgrind (CPUID as valgrind emulates it: AVX2, no AVX-512/VNNI)"})
    return rows
