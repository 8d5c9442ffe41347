"""Benchmark of the masked BiLSTM op: native (edgekd C++ on CPU) vs the reference (nn.LSTM on a
packed sequence), measured in the same run.

Shapes: batch 1 (T = 32, one full-length sequence) and batch 64 (T = 64, lengths drawn from the
TFNS tweet length distribution: whitespace word counts of ../shared/data/tfns/sent_train.csv);
hidden 50 (DiXtill) and 128; E = 50. Modes: forward (inference, no_grad) and forward + backward
(upstream gradients on output, h_n and c_n). Implementations:

- ``reference``: ``pack_padded_sequence`` -> ``nn.LSTM`` -> ``pad_packed_sequence`` (what a plain
  PyTorch student does);
- ``native``: ``edgekd.ops.masked_bilstm`` (public function, input checks included);
- ``native-op``: ``torch.ops.edgekd.masked_bilstm`` called directly (no Python-side checks).

The machine is usually shared and noisy, so every case is measured in ``--rounds`` interleaved
rounds (reference, native, native-op, then again); the table gives the median over rounds of each
round's median, the spread (min-max of the round medians) and the speed-up against the reference
of the same round (median over rounds). CPU timing uses ``torch.utils.benchmark.Timer``
(``benchmarks/common.py``: machine info, timing and the CSV schema shared by every benchmark).

    python benchmarks/bench_masked_bilstm.py                       # print the table
    python benchmarks/bench_masked_bilstm.py --csv benchmarks/results/masked_bilstm.csv \
        --md benchmarks/results/masked_bilstm.md                    # also record it
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import common
import edgekd.ops  # noqa: F401
from edgekd._ext import has_extension
from edgekd.ops import masked_bilstm
from edgekd.ops.masked_bilstm import WEIGHT_NAMES


def draw_lengths(batch: int, T: int, pool: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(pool), (batch,), generator=g)
    return torch.tensor([min(T, pool[i]) for i in idx.tolist()], dtype=torch.int64)


def reference_fn(lstm: torch.nn.LSTM, x: torch.Tensor, lengths: torch.Tensor):
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h_n, c_n) = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, h_n, c_n


def make_case(B: int, T: int, E: int, H: int, lengths: torch.Tensor, train: bool):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(E, H, batch_first=True, bidirectional=True)
    weights = [getattr(lstm, n) for n in WEIGHT_NAMES]
    x = torch.randn(B, T, E, requires_grad=train)
    ups = (torch.randn(B, T, 2 * H), torch.randn(2, B, H), torch.randn(2, B, H))
    cap = int(lengths.sum())

    def run(fn):
        if not train:
            with torch.no_grad():
                return fn()
        outs = fn()
        torch.autograd.backward(outs, ups)
        return outs

    impls = {
        "reference": lambda: run(lambda: reference_fn(lstm, x, lengths)),
        "native": lambda: run(lambda: masked_bilstm(x, lengths, weights)),
        "native-op": lambda: run(lambda: torch.ops.edgekd.masked_bilstm(x, lengths, *weights, cap)[:3]),
    }
    return impls


def measure(fn, min_run_time: float) -> float:
    """Median seconds of ``fn()`` (common.time_cpu: Timer.blocked_autorange after a warm-up)."""
    return common.time_cpu(fn, min_run_time)[0] / 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--min-run-time", type=float, default=0.3, help="seconds per Timer measurement")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--hidden", type=int, nargs="+", default=[50, 128])
    ap.add_argument("--csv", type=pathlib.Path, default=None, help="append rows to this CSV")
    ap.add_argument("--md", type=pathlib.Path, default=None, help="write a markdown table here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not has_extension():
        print("warning: edgekd._C is not built; 'native' runs the PyTorch fallback", file=sys.stderr)

    pool = common.tfns_lengths()
    E = 50
    cases = []
    for H in args.hidden:
        cases.append(("batch 1", 1, 32, H, torch.tensor([32])))
        cases.append(("batch 64", 64, 64, H, draw_lengths(64, 64, pool)))
    stamp = common.now()
    info = common.machine_info()
    common.banner("masked_bilstm: native vs reference (nn.LSTM packed)", info)
    print(f"   {args.rounds} interleaved rounds x Timer(min_run_time={args.min_run_time}s); ms are medians of round medians")
    header = f"{'case':<9} {'H':>4} {'mode':<9} {'impl':<10} {'median ms':>10} {'spread ms':>17} {'speed-up':>9}"
    print(header)
    rows = []
    for name, B, T, H, lengths in cases:
        for mode in ("forward", "fwd+bwd"):
            impls = make_case(B, T, E, H, lengths, train=(mode == "fwd+bwd"))
            per_round = {k: [] for k in impls}
            for _ in range(args.rounds):
                for k, fn in impls.items():
                    per_round[k].append(measure(fn, args.min_run_time))
            ref = per_round["reference"]
            for k, times in per_round.items():
                med = statistics.median(times) * 1e3
                lo, hi = min(times) * 1e3, max(times) * 1e3
                speedup = statistics.median(r / t for r, t in zip(ref, times))
                print(
                    f"{name:<9} {H:>4} {mode:<9} {k:<10} {med:>10.3f} {f'{lo:.3f}-{hi:.3f}':>17} {speedup:>8.2f}x"
                )
                rows.append(dict(case=name, B=B, T=T, H=H, mean_len=round(float(lengths.float().mean()), 2),
                                 mode=mode, impl=k, median_ms=med, min_ms=lo, max_ms=hi, speedup=speedup))
    if args.csv:
        common.append_rows(args.csv, [
            common.make_row(common.fmt_case(B=r["B"], T=r["T"], E=E, H=r["H"], mean_len=r["mean_len"]), r["impl"],
                            r["mode"], r["median_ms"], r["max_ms"] - r["min_ms"], None, r["speedup"],
                            common.fmt_extra(spread="min-max of round medians", rounds=args.rounds),
                            info=info, time=stamp)
            for r in rows])
    if args.md:
        table = [
            "| case | H | mean len | mode | impl | median ms | spread (min-max of rounds) | speed-up vs reference |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            table.append(
                f"| {r['case']} (T={r['T']}) | {r['H']} | {r['mean_len']} | {r['mode']} | {r['impl']} | "
                f"{r['median_ms']:.3f} | {r['min_ms']:.3f}-{r['max_ms']:.3f} | {r['speedup']:.2f}x |"
            )
        common.write_results_md(args.md, "masked_bilstm: native vs reference", table, info=info, time=stamp,
                                notes=[f"{args.rounds} interleaved rounds x Timer(min_run_time={args.min_run_time}s)."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
