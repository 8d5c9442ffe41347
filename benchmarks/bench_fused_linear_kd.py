"""Benchmark of ``edgekd::fused_linear_kd`` against the naive PyTorch path, forward + backward.

Implementations (forward KL, temperature 1, fp32, the same inputs):

- ``naive``: what a KD training step usually writes: ``z = h @ W.T`` (the (N, V) student logits),
  ``log_softmax`` of student and teacher logits, ``F.kl_div(..., log_target=True)``, autograd.
- ``fused_dense``: ``edgekd.ops.fused_linear_kd(h, W, teacher_logits)`` (C++ kernel on CPU): no
  (N, V) tensor besides the teacher's logits, which are an input here.
- ``fused_sparse_k64``: the same op on the sparse teacher cache (top-64 log-probs + tail), the way
  training runs with ``edgekd.llm.cache``: no (N, V) tensor at all.

Each (N, implementation) runs in a fresh subprocess: build the inputs, (N < 8192) one warm-up step,
reset the peak-RSS counter (``/proc/self/clear_refs``), run the timed steps and read ``VmHWM``.
"extra MB" = peak RSS minus the RSS with the inputs allocated (outputs, gradients and every
temporary included, inputs excluded; the ``peak_mb`` column of the CSV, in the common schema of
``benchmarks/common.py``); ``peak_rss_mb`` = the whole process's peak RSS. Timing is the
wall-clock of whole forward + backward steps (median, with the spread of the runs): the steps take
seconds, so ``torch.utils.benchmark`` adds nothing. The machine load (``os.getloadavg``) is
recorded: on a shared machine the times are noisy, re-run on an idle one.

    python benchmarks/bench_fused_linear_kd.py              # N in {512, 2048, 8192}, V = 49152, H = 576
    python benchmarks/bench_fused_linear_kd.py --quick      # N = 512 only
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"
IMPLS = ("naive", "fused_dense", "fused_sparse_k64")
V, H = 49152, 576


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def child(impl: str, N: int, runs: int, warmup: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    import edgekd.ops  # noqa: F401
    from edgekd.llm import SparseTeacher
    from edgekd.llm.cache import sparsify
    from edgekd.ops import fused_linear_kd

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, H, generator=g)
    W = (torch.randn(V, H, generator=g) / H**0.5).requires_grad_(True)
    if impl == "fused_sparse_k64":
        teacher = torch.randn(N, V, generator=g) * 2.0
        st = sparsify(teacher, 64)
        teacher = SparseTeacher(st.topk_ids.clone(), st.topk_logprobs.clone(), st.tail_logmass.clone())
        del st
    else:
        teacher = torch.randn(N, V, generator=g) * 2.0
    h.requires_grad_(True)

    def step():
        h.grad = None
        W.grad = None
        if impl == "naive":
            z = h @ W.t()
            loss = F.kl_div(torch.log_softmax(z, -1), torch.log_softmax(teacher, -1), reduction="sum",
                            log_target=True) / N
        else:
            loss = fused_linear_kd(h, W, teacher)
        loss.backward()
        return float(loss)

    import gc

    for _ in range(warmup):
        step()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _rss_kb("VmRSS")
    times, losses = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    peak = _rss_kb("VmHWM")
    return {"times": times, "extra_mb": (peak - base) / 1024, "peak_mb": peak / 1024, "loss": losses[-1]}


def run_case(impl: str, N: int, runs: int, warmup: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, str(N), str(runs), str(warmup), str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:]
        return {"error": tail or [f"rc {out.returncode} (killed: out of memory?)"]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="N values (default 512 2048 8192)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, N, runs, warmup, threads = args.child
        print(json.dumps(child(impl, int(N), int(runs), int(warmup), int(threads))))
        return
    import common

    sizes = args.sizes or ([512] if args.quick else [512, 2048, 8192])
    info = common.machine_info(threads=args.threads)
    stamp = common.now()
    print(common.banner(f"fused_linear_kd vs naive KD: V={V} H={H} fp32 forward KL", info))
    rows = []
    for N in sizes:
        runs, warmup = (3, 1) if N < 8192 else (1, 0)
        res = {}
        for impl in IMPLS:
            load = os.getloadavg()[0]
            res[impl] = dict(run_case(impl, N, runs, warmup, args.threads), load=load)
        base = res["naive"]
        bmed = statistics.median(base["times"]) * 1e3 if "error" not in base else None
        for impl in IMPLS:
            r = res[impl]
            case = common.fmt_case(N=N, V=V, H=H)
            if "error" in r:
                note = " ".join(r["error"])[:200]
                print(f"N={N:5d} {impl:18s} FAILED: {note}")
                rows.append(common.make_row(case, impl, "full", None, extra=common.fmt_extra(
                    load=f"{r['load']:.1f}", error=note.replace(";", ",")), info=info, time=stamp))
                continue
            med = statistics.median(r["times"]) * 1e3
            spread = (max(r["times"]) - min(r["times"])) * 1e3
            ratio = bmed / med if bmed else None
            mem = r["extra_mb"] / base["extra_mb"] if "error" not in base else None
            print(f"N={N:5d} {impl:18s} {med:9.0f} ms (spread {spread:6.0f}, {len(r['times'])} runs)  "
                  f"extra {r['extra_mb']:8.0f} MB  peak {r['peak_mb']:8.0f} MB  "
                  f"speed-up {'-' if ratio is None else f'{ratio:.2f}x':>6s}  "
                  f"mem {'-' if mem is None else f'{mem:.4f}'}  load {r['load']:.1f}")
            rows.append(common.make_row(
                case, impl, "full", med, spread, r["extra_mb"], ratio,
                common.fmt_extra(peak_rss_mb=f"{r['peak_mb']:.0f}", mem_vs_naive=None if mem is None else f"{mem:.4f}",
                                 runs=len(r["times"]), load=f"{r['load']:.1f}", loss=f"{r['loss']:.6f}"),
                info=info, time=stamp))
    common.append_rows(RESULTS / "llm_kd.csv", rows)


if __name__ == "__main__":
    main()
