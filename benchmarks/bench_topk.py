"""Benchmark of the fused perturbed top-k + gather, forward and forward+backward.

Implementations, all on the same inputs and the same noise (B, S, N), all with the exact estimator:

- ``materializing``: written the way PrunePert / the public PerturbedTopK code does it: top-k of the
  perturbed scores, sort, ``one_hot(indices).float()`` for every sample (B, S, k, N), mean over
  samples, then ``einsum("bkn,bnd->bkd")``; the backward contracts the saved one-hots with the noise
  (``einsum`` over (B, S, k, N)), as the public code does, but with the exact contraction.
- ``pytorch_fused``: plain PyTorch without one-hots: ``torch.topk`` + sort per sample, expand + gather
  of the selected rows (B, S, k, D) with ``index_select``, mean; backward
  ``edgekd.ops.perturbed_topk.reference_gather_backward`` (matmul for <G, Y_s>, ``index_add_`` for dL/dx).
- ``edgekd``: the registered op ``torch.ops.edgekd.perturbed_topk_gather`` (C++ on CPU, Triton on CUDA).

Timing: ``torch.utils.benchmark.Timer.blocked_autorange`` on CPU (median and IQR),
``triton.testing.do_bench`` on CUDA. Memory on CPU: each (shape, implementation) runs once in a fresh
subprocess that allocates the inputs, runs forward + backward once as a warm-up, resets the kernel's
peak-RSS counter (``/proc/self/clear_refs``), runs forward + backward again and reads ``VmHWM``;
"extra MB" = peak RSS minus RSS before the measured run (inputs excluded, outputs and gradients
included). On CUDA: ``torch.cuda.max_memory_allocated`` minus
the memory allocated before the run.

    python benchmarks/bench_topk.py --quick          # the acceptance point + two small shapes
    python benchmarks/bench_topk.py --full           # B=1..4, N in {1024,4096}, D in {256,768}, ...

Rows go to ``benchmarks/results/topk.csv`` in the schema of ``benchmarks/common.py`` (baseline of
``ratio_to_baseline``: the materializing reference of the same shape and mode).
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import pathlib
import subprocess
import sys

import torch
import torch.nn.functional as F

import common  # noqa: E402  (puts the repository root on sys.path)
import edgekd  # noqa: E402
import edgekd.ops  # noqa: E402,F401  (registers the ops)
from edgekd.ops import perturbed_topk as pt  # noqa: E402

ROOT = common.ROOT
RESULTS = common.RESULTS
SIGMA = 0.05
IMPLS = ("materializing", "pytorch_fused", "edgekd")
MAX_MATERIALIZING_GB = 7.0  # skip the materializing reference above this estimated peak


# ------------------------------------------------------------------------------------------------
# implementations


class _Materializing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, noise, k, sigma):  # type: ignore[override]
        N = scores.shape[1]
        perturbed = scores[:, None, :] + noise * sigma  # (B, S, N)
        indices = torch.topk(perturbed, k=k, dim=-1, sorted=False).indices
        indices = torch.sort(indices, dim=-1).values  # (B, S, k)
        perturbed_output = F.one_hot(indices, num_classes=N).to(scores.dtype)  # (B, S, k, N)
        indicators = perturbed_output.mean(dim=1)  # (B, k, N)
        ctx.save_for_backward(perturbed_output, noise)
        ctx.sigma = sigma
        return indicators

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        perturbed_output, noise = ctx.saved_tensors
        S = noise.shape[1]
        w = torch.einsum("bskn,bkn->bs", perturbed_output, grad)
        return torch.einsum("bs,bsn->bn", w, noise) / (S * ctx.sigma), None, None, None


def materializing(scores, x, noise, k, sigma):
    return torch.einsum("bkn,bnd->bkd", _Materializing.apply(scores, noise, k, sigma), x)


class _PytorchFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, x, noise, k, sigma):  # type: ignore[override]
        B, N, D = x.shape
        S = noise.shape[1]
        perturbed = scores[:, None, :] + sigma * noise
        indices = torch.topk(perturbed, k, dim=-1, sorted=False).indices.sort(dim=-1).values
        rows = pt._gather_rows(x, indices)  # index_select of the selected rows: (B, S, k, D)
        ctx.save_for_backward(x, noise, indices)
        ctx.sigma = sigma
        return rows.mean(dim=1)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, noise, indices = ctx.saved_tensors
        gs, gx = pt.reference_gather_backward(grad, x, noise, indices, ctx.sigma)
        return gs, gx, None, None, None


def pytorch_fused(scores, x, noise, k, sigma):
    return _PytorchFused.apply(scores, x, noise, k, sigma)


def edgekd_op(scores, x, noise, k, sigma):
    return torch.ops.edgekd.perturbed_topk_gather(scores, x, noise, None, k, sigma)[0]


FUNCS = {"materializing": materializing, "pytorch_fused": pytorch_fused, "edgekd": edgekd_op}


def make_inputs(B, N, D, S, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    scores = torch.randn(B, N, generator=g).to(device).requires_grad_(True)
    x = torch.randn(B, N, D, generator=g).to(device).requires_grad_(True)
    noise = torch.randn(B, S, N, generator=g).to(device)
    return scores, x, noise


def materializing_gb(B, N, k, S):
    # int64 one_hot + its float copy, saved for backward, + einsum temporaries
    return B * S * k * N * (8 + 4) / 1e9


# ------------------------------------------------------------------------------------------------
# memory (CPU): one run in a fresh process


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(impl, B, N, D, S, k):
    if os.environ.get("EDGEKD_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["EDGEKD_BENCH_THREADS"]))
    torch.manual_seed(0)
    scores, x, noise = make_inputs(B, N, D, S, "cpu")
    grad = torch.randn(B, k, D)
    fn = FUNCS[impl]
    # one full-size warm-up run first: code pages, thread pools and the allocator's small-block
    # heap are then in place, and the measured run shows the steady-state extra memory of a
    # training step (large buffers are returned to the OS on free, so they are counted again)
    fn(scores, x, noise, k, SIGMA).backward(grad)
    scores.grad = None
    x.grad = None
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _rss_kb("VmRSS")
    out = fn(scores, x, noise, k, SIGMA)
    out.backward(grad)
    peak = _rss_kb("VmHWM")
    print(json.dumps({"extra_mb": (peak - before) / 1024.0}))


def measure_memory_cpu(impl, B, N, D, S, k) -> float:
    res = subprocess.run(
        [sys.executable, __file__, "--memory-child", impl, str(B), str(N), str(D), str(S), str(k)],
        capture_output=True, text=True, timeout=900,
    )
    if res.returncode != 0:
        raise RuntimeError(f"memory child failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["extra_mb"]


# ------------------------------------------------------------------------------------------------
# timing


def time_cpu(fn, scores, x, noise, k, grad, mode, min_run_time):
    def run_forward():
        with torch.no_grad():
            fn(scores, x, noise, k, SIGMA)

    def run_full():
        scores.grad = None
        x.grad = None
        fn(scores, x, noise, k, SIGMA).backward(grad)

    return common.time_cpu(run_forward if mode == "forward" else run_full, min_run_time)


def time_cuda(fn, scores, x, noise, k, grad, mode):
    import triton

    def run():
        if mode == "forward":
            with torch.no_grad():
                fn(scores, x, noise, k, SIGMA)
        else:
            scores.grad = None
            x.grad = None
            fn(scores, x, noise, k, SIGMA).backward(grad)

    q = triton.testing.do_bench(run, quantiles=[0.5, 0.25, 0.75])
    return q[0], q[2] - q[1], 0


def memory_cuda(fn, scores, x, noise, k, grad) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn(scores, x, noise, k, SIGMA).backward(grad)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


# ------------------------------------------------------------------------------------------------


def grid(kind: str):
    if kind == "acceptance":
        return [(1, 4096, 768, 0.25, 100)]
    if kind == "quick":
        return [(1, 1024, 256, 0.25, 32), (2, 1024, 768, 0.5, 100), (1, 4096, 768, 0.25, 100)]
    return list(itertools.product([1, 2, 3, 4], [1024, 4096], [256, 768], [0.25, 0.5], [32, 100]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="acceptance point + two small shapes")
    g.add_argument("--full", action="store_true", help="the whole grid (long on 2 cores)")
    g.add_argument("--acceptance", action="store_true", help="only N=4096, D=768, k=1024, S=100, B=1")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--min-run-time", type=float, default=2.0, help="seconds per CPU measurement")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--n", type=int, nargs="+", help="keep only these N of the grid")
    ap.add_argument("--b", type=int, nargs="+", help="keep only these B of the grid")
    ap.add_argument("--csv", default=str(RESULTS / "topk.csv"))
    ap.add_argument("--memory-child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["EDGEKD_BENCH_THREADS"] = str(args.threads)  # for the memory subprocesses
    if args.memory_child:
        impl, *dims = args.memory_child
        memory_child(impl, *map(int, dims))
        return

    kind = "full" if args.full else "acceptance" if args.acceptance else "quick"
    device = args.device
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    stamp = common.now()
    info = common.machine_info()
    common.banner(f"perturbed top-k gather benchmark | device {device} | C++ ext {edgekd.ops.has_extension()} | "
                  f"sigma {SIGMA} | grid {kind}", info)
    header = f"{'B':>2} {'N':>5} {'D':>4} {'k':>5} {'S':>4} {'impl':>14} {'mode':>8} " \
             f"{'median ms':>10} {'iqr ms':>8} {'runs':>5} {'extra MB':>9} {'speed-up':>9}"
    print(header)
    rows = []
    shapes = [sh for sh in grid(kind) if (not args.n or sh[1] in args.n) and (not args.b or sh[0] in args.b)]
    it = tqdm(shapes, desc="shapes", file=sys.stderr) if tqdm else shapes
    for B, N, D, keep, S in it:
        k = max(1, math.ceil(keep * N))
        scores, x, noise = make_inputs(B, N, D, S, device)
        grad = torch.randn(B, k, D, device=device)
        ref_ms = {}
        for impl in IMPLS:
            skip = impl == "materializing" and materializing_gb(B, N, k, S) > MAX_MATERIALIZING_GB
            for mode in ("forward", "full"):
                row = dict(B=B, N=N, D=D, k=k, S=S, impl=impl, mode=mode, device=device,
                           median_ms="", iqr_ms="", runs="", extra_mb="", speedup="", note="")
                if skip:
                    row["note"] = f"skipped: ~{materializing_gb(B, N, k, S):.1f} GB of one-hots"
                else:
                    fn = FUNCS[impl]
                    if device == "cuda":
                        med, iqr, runs = time_cuda(fn, scores, x, noise, k, grad, mode)
                    else:
                        med, iqr, runs = time_cpu(fn, scores, x, noise, k, grad, mode, args.min_run_time)
                    row.update(median_ms=f"{med:.3f}", iqr_ms=f"{iqr:.3f}", runs=runs)
                    if mode == "full" and not args.no_memory:
                        mb = (memory_cuda(fn, scores, x, noise, k, grad) if device == "cuda"
                              else measure_memory_cpu(impl, B, N, D, S, k))
                        row["extra_mb"] = f"{mb:.1f}"
                    if impl == "materializing":
                        ref_ms[mode] = med
                    if mode in ref_ms:
                        row["speedup"] = f"{ref_ms[mode] / med:.1f}x"
                        row["ratio"] = ref_ms[mode] / med
                rows.append(row)
                print(f"{B:>2} {N:>5} {D:>4} {k:>5} {S:>4} {impl:>14} {mode:>8} "
                      f"{row['median_ms']:>10} {row['iqr_ms']:>8} {row['runs']!s:>5} "
                      f"{row['extra_mb']:>9} {row['speedup']:>9} {row['note']}", flush=True)
        # ratios against the plain-PyTorch fused version, same run
        for mode in ("forward", "full"):
            pf = [r for r in rows[-6:] if r["impl"] == "pytorch_fused" and r["mode"] == mode][0]
            ek = [r for r in rows[-6:] if r["impl"] == "edgekd" and r["mode"] == mode][0]
            mat = [r for r in rows[-6:] if r["impl"] == "materializing" and r["mode"] == mode][0]
            msg = f"   -> {mode}: edgekd vs pytorch_fused {float(pf['median_ms']) / float(ek['median_ms']):.1f}x"
            if mat["median_ms"]:
                msg += f", vs materializing {float(mat['median_ms']) / float(ek['median_ms']):.1f}x"
            if mode == "full" and mat["extra_mb"] and ek["extra_mb"]:
                msg += f", extra memory {100 * float(ek['extra_mb']) / float(mat['extra_mb']):.2f}% of materializing"
            print(msg)
        del scores, x, noise, grad
    def num(v):
        return float(v) if v not in ("", None) else None

    common.append_rows(pathlib.Path(args.csv), [
        common.make_row(common.fmt_case(B=r["B"], N=r["N"], D=r["D"], k=r["k"], S=r["S"], device=r["device"]),
                        r["impl"], r["mode"], num(r["median_ms"]), num(r["iqr_ms"]), num(r["extra_mb"]),
                        r.get("ratio"),
                        common.fmt_extra(runs=r["runs"], peak="extra MB over the inputs" if r["extra_mb"] else "", note=r["note"]),
                        info=info, time=stamp)
        for r in rows])


if __name__ == "__main__":
    main()
