"""Device benchmark harness (torch-free): ``edgekd bench`` and ``edgekd compare``.

``bench`` loads one bundle variant, warms up, then times ``session.run`` on pre-tokenised batches
of 1, 8 and 32 texts (p50/p90/p99, mean, throughput), plus end-to-end ``predict`` at batch 1
(tokenisation included); reports peak RSS, size on disk, thread settings and the machine, and
optionally accuracy/macro-F1 on labelled data. On an x86-64 host, ``target="arm64"`` cannot be
timed; it counts emulated ARM64 instructions per inference instead (see
:mod:`edgekd.runtime.emulation`). ``compare`` puts several results side by side, relative to a
baseline (DiXtill's table: size, compression, latency, speed-up, accuracy, macro-F1).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import pathlib
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from edgekd.data.readers import read_texts
from edgekd.errors import EdgekdValueError
from edgekd.metrics import macro_f1
from edgekd.runtime.bundle import read_and_verify, safe_extract_zip, write_manifest, write_zip
from edgekd.runtime.cpu import cpu_features, has_int8_dot_product, host_target, normalize_target
from edgekd.runtime.model import Bundle

DEFAULT_BATCHES = (1, 8, 32)


# ------------------------------------------------------------------------------------------ data
def load_texts(path: str | os.PathLike, limit: int | None = None, **kwargs: Any) -> tuple[list[str], list[int] | None]:
    """Texts (and integer labels when present) from the first ``limit`` rows of a CSV/TSV/JSONL/Parquet
    file with a ``text`` column (and a ``label`` one), or a plain text file (one text a line); every
    problem is an :class:`EdgekdValueError` naming the file and line (:func:`edgekd.data.readers.read_texts`,
    which takes the keyword arguments: text_column, label_column, label_names, num_labels)."""
    return read_texts(path, limit, **kwargs)


def synthetic_texts(bundle: Bundle, n: int = 64, words: int = 20, seed: int = 0) -> list[str]:
    """Deterministic texts of ``words`` vocabulary words (used when no data is given)."""
    vocab = [w for w in bundle.preprocessor.tokenizer.get_vocab() if w.isalpha() and not w.startswith("[")]
    if not vocab:
        raise EdgekdValueError("bench: the tokenizer has no plain words to build synthetic texts; pass data")
    vocab.sort()
    rng = random.Random(seed)
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]


# ------------------------------------------------------------------------------------------ bench
def _percentiles(times_s: list[float]) -> dict[str, float]:
    a = np.asarray(times_s) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "iters": int(a.size)}


def _time_loop(fn, batches: list, min_time: float, min_iters: int, max_iters: int) -> list[float]:
    times: list[float] = []
    start = time.perf_counter()
    k = 0
    while k < max_iters and (k < min_iters or time.perf_counter() - start < min_time):
        b = batches[k % len(batches)]
        t0 = time.perf_counter()
        fn(b)
        times.append(time.perf_counter() - t0)
        k += 1
    return times


def machine_info() -> dict[str, Any]:
    import onnxruntime as ort

    feats = cpu_features()
    model = ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "cpu part")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    tgt = host_target()
    return {"target": tgt, "machine": platform.machine(), "cpu": model, "logical_cpus": os.cpu_count(),
            "int8_dot_product": has_int8_dot_product(tgt, feats),
            "simd": sorted(f for f in feats if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimd", "asimddp", "sve"}),
            "python": platform.python_version(), "onnxruntime": ort.__version__, "platform": platform.platform()}


def bench(bundle_path: str | os.PathLike, *, target: str = "auto", precision: str = "auto",
          batches: Sequence[int] = DEFAULT_BATCHES, threads: int | None = None, texts: Sequence[str] | None = None,
          labels: Sequence[int] | None = None, warmup: int = 3, min_time: float = 1.0, min_iters: int = 10,
          max_iters: int = 2000, count_instructions: bool = False, accuracy_texts: Sequence[str] | None = None,
          accuracy_labels: Sequence[int] | None = None) -> dict[str, Any]:
    """Benchmark one variant of a bundle on this machine; returns a JSON-able result. Accuracy and
    macro-F1 are measured on ``accuracy_texts``/``accuracy_labels`` when given, else on
    ``texts``/``labels`` when labels are given, else copied from the manifest's parity record."""
    for b in batches:
        if not isinstance(b, int) or b < 1:
            raise EdgekdValueError(f"batches: expected positive ints, got {list(batches)}")
    tgt = host_target() if target == "auto" else normalize_target(target)
    if tgt != host_target():
        return _bench_emulated(bundle_path, tgt, precision, texts)
    bundle = Bundle.load(bundle_path, target=target, precision=precision, threads=threads)
    texts = list(texts) if texts is not None else synthetic_texts(bundle)
    result: dict[str, Any] = {
        "bundle": str(bundle_path), "name": bundle.manifest.get("name"), "model_kind": bundle.manifest.get("model_kind"),
        "variant": bundle.variant["id"], "target": bundle.variant["target"], "precision": bundle.variant["precision"],
        "machine": machine_info(),
        "threads": {"intra_op_num_threads": threads if threads is not None else "onnxruntime default (one per core)",
                    "inter_op_num_threads": 1, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "size_bytes": bundle.size_bytes,
        "model_bytes": bundle.manifest["files"][bundle.variant["file"]]["size"],
        "texts": len(texts), "warmup": warmup, "min_time_s": min_time,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "latency": {}, "throughput_per_s": {},
    }
    for b in batches:
        feeds = [bundle.preprocessor([texts[(k * b + j) % len(texts)] for j in range(b)]).feeds
                 for k in range(max(1, min(16, len(texts) // b or 1)))]
        for k in range(warmup):
            bundle.run(feeds[k % len(feeds)])
        times = _time_loop(bundle.run, feeds, min_time, min_iters, max_iters)
        stats = _percentiles(times)
        result["latency"][str(b)] = stats
        result["throughput_per_s"][str(b)] = b / (stats["mean_ms"] / 1e3)
    e2e = _time_loop(lambda t: bundle.predict([t]), texts, min_time / 2, min_iters, max_iters)
    result["end_to_end_batch1"] = _percentiles(e2e)
    if accuracy_labels is not None or labels is not None:
        acc_texts = list(accuracy_texts) if accuracy_labels is not None else texts
        y = np.asarray(list(accuracy_labels if accuracy_labels is not None else labels))
        if len(y) != len(acc_texts):
            raise EdgekdValueError(f"labels: {len(y)} labels for {len(acc_texts)} texts")
        C = len(bundle.label_names)
        bad = np.flatnonzero((y < 0) | (y >= C)) if np.issubdtype(y.dtype, np.integer) else np.arange(len(y))
        if bad.size:
            raise EdgekdValueError(f"labels: label {y[bad[0]]} of text {bad[0]} is not an integer in [0, {C}) "
                                   f"(the bundle's labels are {bundle.label_names})")
        preds = np.concatenate([bundle.predict(acc_texts[s:s + 32], explain=False).label_ids
                                for s in range(0, len(acc_texts), 32)])
        result["accuracy"] = float((preds == y).mean())
        result["macro_f1"] = macro_f1(y, preds, len(bundle.label_names))
        result["accuracy_measured_on"] = f"{len(acc_texts)} labelled texts"
    else:
        par = bundle.variant.get("parity", {})
        if "accuracy" in par:
            result["accuracy"], result["macro_f1"] = par["accuracy"], par["macro_f1"]
            result["accuracy_measured_on"] = f"compile-time held-out slice ({par.get('slice_size')} texts)"
    if count_instructions:
        from edgekd.runtime.emulation import count_x86_instructions

        result["instructions"] = count_x86_instructions(bundle_path, texts[0], [bundle.variant["precision"]])[0]
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: ``VmHWM`` from ``/proc/self/status`` (reset by
    exec), else ``ru_maxrss`` (which Linux carries over from the parent across fork + exec)."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _bench_emulated(bundle_path, tgt: str, precision: str, texts) -> dict[str, Any]:
    from edgekd.runtime.emulation import run_probe_arm64

    if tgt != "arm64":
        raise EdgekdValueError(f"target: cannot benchmark {tgt!r} on this {host_target()} machine")
    with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as tmp:
        root = pathlib.Path(bundle_path)
        if root.is_file():
            safe_extract_zip(root, tmp)
            root = pathlib.Path(tmp)
        manifest = read_and_verify(root)
        from edgekd.runtime.model import select_variant

        v = select_variant(manifest, "arm64", precision, features=frozenset())
        files = manifest["files"]
        if texts is None:
            from tokenizers import Tokenizer

            vocab = sorted(w for w in Tokenizer.from_file(str(root / manifest["preprocessing"]["tokenizer"])).get_vocab()
                           if w.isalpha() and not w.startswith("["))
            rng = random.Random(0)
            texts = [" ".join(rng.choice(vocab) for _ in range(20))]
        emu = run_probe_arm64(root, list(texts)[:1], [v["precision"]], count_repeat=3)[0]
    return {"bundle": str(bundle_path), "name": manifest.get("name"), "model_kind": manifest.get("model_kind"),
            "variant": v["id"], "target": "arm64", "precision": v["precision"],
            "machine": {"host": machine_info(), "emulated_cpu": emu.get("cpu")},
            "threads": {"intra_op_num_threads": 1},
            "size_bytes": files[v["file"]]["size"] + files[manifest["preprocessing"]["tokenizer"]]["size"],
            "model_bytes": files[v["file"]]["size"],
            "instructions": {"instructions_per_inference": emu["instructions_per_inference"], "batch": 1,
                             "counter": "qemu-user TCG plugin (shared/tools/arm64 count)", "repeat": 3},
            "accuracy": v.get("parity", {}).get("accuracy"), "macro_f1": v.get("parity", {}).get("macro_f1"),
            "accuracy_measured_on": "compile-time held-out slice (x86 host run of the same file)",
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# ------------------------------------------------------------------------------------ recording
def profile_key(result: dict[str, Any]) -> str:
    m = result["machine"]
    if "emulated_cpu" in m:
        return f"arm64-emulated:{m['emulated_cpu']}"
    return f"{m['target']}:{m.get('cpu') or 'unknown cpu'}:{m['logical_cpus']}cpu"


def record_profile(bundle_path: str | os.PathLike, result: dict[str, Any]) -> pathlib.Path:
    """Store ``result`` (a :func:`bench` result) in the manifest entry of its variant under
    ``profiles[<machine key>]``, then re-hash the file table (a zip bundle is rewritten)."""
    path = pathlib.Path(bundle_path)
    profile = {k: result[k] for k in ("latency", "throughput_per_s", "end_to_end_batch1", "peak_rss_mb", "threads",
                                      "instructions", "timestamp", "size_bytes", "machine") if k in result}

    def update(root: pathlib.Path) -> None:
        manifest = read_and_verify(root)
        for v in manifest["variants"]:
            if v["id"] == result["variant"]:
                v.setdefault("profiles", {})[profile_key(result)] = profile
                break
        else:
            raise EdgekdValueError(f"record: variant {result['variant']!r} not in {bundle_path}")
        write_manifest(root, manifest)

    if path.is_dir():
        update(path)
    else:
        with tempfile.TemporaryDirectory(prefix="edgekd-record-") as tmp:
            safe_extract_zip(path, tmp)
            update(pathlib.Path(tmp))
            write_zip(tmp, path)
    return path


# ------------------------------------------------------------------------------------ reporting
def _fmt(x: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def bench_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"### {result.get('name')} — {result['variant']}", ""]
    if "latency" in result:
        lines += [f"Machine: {m.get('cpu')} ({m.get('logical_cpus')} logical CPUs, {m.get('machine')}), "
                  f"onnxruntime {m.get('onnxruntime')}, threads: {result['threads']['intra_op_num_threads']}. "
                  f"Size on disk: {result['size_bytes'] / 1e6:.3f} MB; peak RSS {result['peak_rss_mb']:.0f} MB.", "",
                  "| batch | p50 ms | p90 ms | p99 ms | throughput texts/s |", "|---|---|---|---|---|"]
        for b, s in result["latency"].items():
            lines.append(f"| {b} | {s['p50_ms']:.3f} | {s['p90_ms']:.3f} | {s['p99_ms']:.3f} | "
                         f"{result['throughput_per_s'][b]:.1f} |")
        e = result["end_to_end_batch1"]
        lines += ["", f"End-to-end predict() at batch 1 (tokenisation included): p50 {e['p50_ms']:.3f} ms."]
    if "instructions" in result:
        lines += ["", f"Instructions per batch-1 inference: {result['instructions']['instructions_per_inference']:.4g} "
                      f"({result['instructions']['counter']})."]
    if result.get("accuracy") is not None:
        lines += ["", f"Accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f} "
                      f"({result.get('accuracy_measured_on')})."]
    return "\n".join(lines) + "\n"


def compare_rows(results: list[dict[str, Any]], baseline: int = 0) -> list[dict[str, Any]]:
    """Rows of the comparison table relative to ``results[baseline]``."""
    base = results[baseline]
    rows = []
    for r in results:
        p50 = r.get("latency", {}).get("1", {}).get("p50_ms")
        b50 = base.get("latency", {}).get("1", {}).get("p50_ms")
        ins = r.get("instructions", {}).get("instructions_per_inference")
        bins = base.get("instructions", {}).get("instructions_per_inference")
        rows.append({
            "name": r.get("name"), "variant": r["variant"], "target": r["target"],
            "size_mb": r["size_bytes"] / 1e6, "compression": base["size_bytes"] / r["size_bytes"],
            "latency_b1_p50_ms": p50, "speedup_b1": (b50 / p50) if (p50 and b50) else None,
            "throughput_b32": r.get("throughput_per_s", {}).get("32"),
            "instructions": ins, "instructions_ratio": (bins / ins) if (ins and bins) else None,
            "accuracy": r.get("accuracy"), "macro_f1": r.get("macro_f1"),
            "accuracy_delta": (r["accuracy"] - base["accuracy"]) if r.get("accuracy") is not None
            and base.get("accuracy") is not None else None,
        })
    return rows


def compare_markdown(results: list[dict[str, Any]], baseline: int = 0) -> str:
    rows = compare_rows(results, baseline)
    base = results[baseline]
    out = [f"Baseline: {base.get('name')} / {base['variant']}. Speed-up = baseline p50 / p50 at batch 1; "
           "compression = baseline size / size (model file + tokenizer).", "",
           "| model | variant | size MB | compression | p50 b1 ms | speed-up | texts/s b32 | instr/inference | instr ratio | accuracy | macro-F1 | Δacc |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} | {r['variant']} | {r['size_mb']:.3f} | {r['compression']:.1f}x | "
                   f"{_fmt(r['latency_b1_p50_ms'], '.3f')} | {_fmt(r['speedup_b1'], '.1f', 'x')} | "
                   f"{_fmt(r['throughput_b32'], '.0f')} | {_fmt(r['instructions'], '.3g')} | "
                   f"{_fmt(r['instructions_ratio'], '.1f', 'x')} | {_fmt(r['accuracy'], '.4f')} | "
                   f"{_fmt(r['macro_f1'], '.4f')} | {_fmt(r['accuracy_delta'], '+.4f')} |")
    return "\n".join(out) + "\n"


def bench_subprocess(bundle: str | os.PathLike, timeout: float = 900, **kwargs: Any) -> dict[str, Any]:
    """Run :func:`bench` in a fresh interpreter (clean peak RSS, no shared caches); kwargs as for bench."""
    with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as tmp:
        out = pathlib.Path(tmp) / "r.json"
        spec_file = pathlib.Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps({"bundle": str(bundle), "out": str(out), "kwargs": kwargs}), encoding="utf-8")
        code = ("import json,sys; from edgekd.runtime.bench import bench; from edgekd.errors import EdgekdError\n"
                "s=json.loads(open(sys.argv[1],encoding='utf-8').read())\n"
                "try: r=bench(s['bundle'], **s['kwargs'])\n"
                "except EdgekdError as e: sys.stderr.write(str(e)); sys.exit(2)\n"
                "open(s['out'],'w').write(json.dumps(r))")
        env = dict(os.environ)
        repo = str(pathlib.Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        r = subprocess.run([sys.executable, "-c", code, str(spec_file)], capture_output=True, text=True,
                           timeout=timeout, env=env)
        if r.returncode == 2:  # a user error, already one line
            raise EdgekdValueError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"bench of {bundle} failed")
        if r.returncode != 0:
            raise RuntimeError(f"bench of {bundle} failed: {r.stderr[-2000:]}")
        return json.loads(out.read_text())
