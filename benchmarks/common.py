"""What every benchmark shares: machine info, CPU timing, TFNS lengths and the one CSV schema.

Every ``benchmarks/bench_*.py`` appends rows of :data:`SCHEMA` to its CSV under
``benchmarks/results/`` (one row per case x implementation x mode) and rewrites its markdown file
there as the current table plus the command that made it (earlier runs live in git history).

Columns: ``time`` (UTC), ``machine`` (CPU model, ISA flags, cores, threads), ``versions`` (torch,
onnxruntime, edgekd and the git commit), ``command`` (how the run was started), ``case`` (the shape
or setting, ``key=value`` pairs), ``implementation``, ``mode`` (forward, full, inference, ...),
``median_ms``, ``spread_ms`` (the inter-quartile range of the timed runs, or the min-max of round
medians where the benchmark says so), ``peak_mb``, ``ratio_to_baseline`` (the baseline's median
divided by this row's, measured in the same run: "1.8" means 1.8x faster) and ``extra``
(benchmark-specific ``key=value`` pairs, ``;``-separated: accuracy, sizes, notes).

Run from the repository root (``python benchmarks/bench_x.py``); this module imports torch only
inside the functions that time torch code.
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
from typing import Any, Callable, Iterable, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"
TFNS_TRAIN = SHARED_DATA / "tfns" / "sent_train.csv"

SCHEMA = ("time", "machine", "versions", "command", "case", "implementation", "mode", "median_ms", "spread_ms",
          "peak_mb", "ratio_to_baseline", "extra")

if str(ROOT) not in sys.path:  # run as a script from anywhere: the repo's edgekd first
    sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    """The SIMD features that decide kernel speed here: AVX2, AVX-512 (F), VNNI (AVX-512 or AVX), AMX."""
    try:
        from edgekd.runtime.cpu import cpu_features

        flags = set(cpu_features())
    except Exception:  # pragma: no cover (a checkout without edgekd importable)
        flags = set()
    names = [("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"),
             ("amx_tile", "AMX"), ("asimddp", "NEON-dotprod")]
    return [label for flag, label in names if flag in flags]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU model, ISA flags, logical cores, threads used, and the versions of what is measured."""
    info: dict[str, Any] = {"cpu": cpu_model(), "isa": isa_flags(), "cores": os.cpu_count(),
                            "arch": platform.machine(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = threads or torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        info["threads"] = threads
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    import edgekd

    info["edgekd"] = edgekd.__version__
    info["commit"] = git_commit()
    return info


def machine_string(info: dict[str, Any] | None = None) -> str:
    """``Intel(R) Xeon(R) ... | AVX2 AVX-512 AVX512-VNNI | 2 cores, 1 thread`` (the GPU when there is one)."""
    info = info or machine_info()
    isa = " ".join(info["isa"]) or "no AVX2"
    t = info.get("threads")
    s = f"{info['cpu']} | {isa} | {info['cores']} cores, {t} thread{'' if t == 1 else 's'}"
    return s + (f" | {info['gpu']}" if info.get("gpu") else "")


def versions_string(info: dict[str, Any] | None = None) -> str:
    info = info or machine_info()
    parts = [f"{k} {info[k]}" for k in ("torch", "onnxruntime", "edgekd") if info.get(k)]
    return ", ".join(parts) + f" @ {info['commit']}"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this run, relative to the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = pathlib.Path(argv[0]).resolve() if argv else pathlib.Path("?")
    try:
        script_s = str(script.relative_to(ROOT))
    except ValueError:
        script_s = argv[0] if argv else "?"
    return " ".join(["python", shlex.quote(script_s), *map(shlex.quote, argv[1:])])


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def banner(title: str, info: dict[str, Any] | None = None, width: int = 100) -> str:
    info = info or machine_info()
    text = "\n".join(["=" * width, f"{title} | {now()}", f"machine: {machine_string(info)}",
                      f"versions: {versions_string(info)}", "=" * width])
    print(text, flush=True)
    return text


# ----------------------------------------------------------------------------------- timing
def time_cpu(fn: Callable[[], Any], min_run_time: float = 1.0, warmup: int = 1) -> tuple[float, float, int]:
    """(median ms, IQR ms, number of timed blocks) of ``fn()`` with ``torch.utils.benchmark.Timer``."""
    from torch.utils.benchmark import Timer

    for _ in range(warmup):
        fn()
    m = Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
    return m.median * 1e3, m.iqr * 1e3, len(m.times)


def median(xs: Iterable[float]) -> float:
    return float(statistics.median(list(xs)))


# ----------------------------------------------------------------------------------- data
def tfns_lengths(path: pathlib.Path = TFNS_TRAIN) -> list[int]:
    """Whitespace word counts of the TFNS training tweets (at least 1 each)."""
    from edgekd.data.readers import read_texts

    texts, _ = read_texts(path)
    return [max(1, len(t.split())) for t in texts]


# ----------------------------------------------------------------------------------- rows, files
def fmt_case(**kv: Any) -> str:
    """``B=1 T=32 H=50``: the case column."""
    return " ".join(f"{k}={v}" for k, v in kv.items() if v is not None)


def fmt_extra(**kv: Any) -> str:
    return ";".join(f"{k}={v}" for k, v in kv.items() if v is not None and v != "")


def _num(x: float | None, nd: int = 4) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def make_row(case: str, implementation: str, mode: str, median_ms: float | None, spread_ms: float | None = None,
             peak_mb: float | None = None, ratio_to_baseline: float | None = None, extra: str = "", *,
             info: dict[str, Any], time: str, command: str | None = None) -> dict[str, str]:
    """One CSV row in :data:`SCHEMA`."""
    return {"time": time, "machine": machine_string(info), "versions": versions_string(info),
            "command": command or command_line(), "case": case, "implementation": implementation, "mode": mode,
            "median_ms": _num(median_ms), "spread_ms": _num(spread_ms), "peak_mb": _num(peak_mb, 1),
            "ratio_to_baseline": _num(ratio_to_baseline, 3), "extra": extra}


def append_rows(path: pathlib.Path, rows: Sequence[dict[str, Any]]) -> pathlib.Path:
    """Append ``rows`` to ``path`` (header written for a new file; an existing file must use :data:`SCHEMA`)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != SCHEMA:
            raise SystemExit(f"{path}: its header {header} is not the benchmark schema {list(SCHEMA)}; "
                             "move the old file away (it stays in git history)")
        new = False
    else:
        new = True
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(SCHEMA))
        if new:
            w.writeheader()
        for r in rows:
            unknown = set(r) - set(SCHEMA)
            if unknown:
                raise ValueError(f"row has columns outside the schema: {sorted(unknown)}")
            w.writerow({k: r.get(k, "") for k in SCHEMA})
    print(f"appended {len(rows)} rows to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def write_results_md(path: pathlib.Path, title: str, table: Sequence[str], *, info: dict[str, Any], time: str,
                     command: str | None = None, notes: Sequence[str] = ()) -> pathlib.Path:
    """The results markdown file: the current table, where and when it was measured, the command."""
    lines = [f"# {title}", "", "Made by:", "", "```bash", command or command_line(), "```", "",
             f"Measured {time} on {machine_string(info)}; {versions_string(info)}.", "", *table]
    if notes:
        lines += ["", *notes]
    path = pathlib.Path(path)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path
