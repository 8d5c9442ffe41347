"""Benchmark: native student (edgekd ops) vs the reference student (nn.LSTM with
pack_padded_sequence + plain PyTorch attention), same weights, same run.

Implementations: ``reference``; ``native`` (what BiLSTMAttentionStudent(backend="native") runs: the
fused C++ inference op edgekd::bilstm_attention_forward for inference batches of at most
FUSED_MAX_BATCH rows, masked_bilstm + masked_attention_pool otherwise and in training); for the
small inference cases also ``unfused`` (the native ops without the fused op).

Cases (embed 50, vocab 10k, hidden 50 and 128):
  infer_b1   inference, batch 1, T = 32 (a full-length row)
  infer_b64  inference, batch 64, T = 64, lengths drawn from the TFNS length distribution
             (whitespace word counts of sent_train.csv)
  train_b64  one training step at batch 64 (forward + cross-entropy + backward + Adam step;
             --adam fused by default, the same optimizer for both students)

Inference runs under torch.inference_mode(). Timing: torch.utils.benchmark.Timer,
blocked_autorange, the two implementations alternated over --rounds rounds (so that both see the
same machine load); per implementation the median over rounds of the per-round medians, the best
round, the median IQR; speed-up = median over rounds of (reference / native), same run. Results: printed and
appended to benchmarks/results/student.csv (the schema of benchmarks/common.py); the table of the
current measurement is benchmarks/results/student.md.

    .venv/bin/python benchmarks/bench_student.py [--threads 1] [--hidden 50 128] [--min-run-time 2] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

import common

DATA = common.TFNS_TRAIN
RESULTS = common.RESULTS


ADAM_KW = {"fused": {"fused": True}, "foreach": {"foreach": True}, "plain": {"foreach": False}}


def make_batch(B: int, T: int, V: int, lengths_pool: np.ndarray | None, seed: int):
    rng = np.random.default_rng(seed)
    if lengths_pool is None:
        lengths = np.full(B, T)
    else:
        lengths = np.clip(rng.choice(lengths_pool, size=B), 1, T)
    mask = torch.from_numpy((np.arange(T)[None, :] < lengths[:, None]).astype(np.int64))
    ids = torch.from_numpy(rng.integers(1, V, size=(B, T))) * mask
    labels = torch.from_numpy(rng.integers(0, 3, size=B))
    return ids, mask, labels, lengths


def measure(stmt_fn, label: str, min_run_time: float):
    """(median ms, IQR ms, timed blocks): common.time_cpu (torch.utils.benchmark.Timer)."""
    return common.time_cpu(stmt_fn, min_run_time, warmup=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--hidden", type=int, nargs="+", default=[50, 128])
    p.add_argument("--embed", type=int, default=50)
    p.add_argument("--vocab", type=int, default=10_000)
    p.add_argument("--min-run-time", type=float, default=2.0, help="seconds per case and implementation")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per case (default 5)")
    p.add_argument("--cases", nargs="+", default=["infer_b1", "infer_b64", "train_b64"])
    p.add_argument(
        "--adam",
        choices=sorted(ADAM_KW),
        default="fused",
        help="Adam implementation for train_b64, the same for both students (default fused: on the CPU "
        "the default for-loop Adam spends milliseconds on the 500k-parameter embedding alone)",
    )
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from edgekd.students import BiLSTMAttentionStudent, native_available

    if not native_available():
        print("native ops (masked_bilstm, masked_attention_pool) not available: nothing to compare", file=sys.stderr)
        return 1
    lengths_pool = np.array(common.tfns_lengths(DATA), dtype=np.int64) if DATA.is_file() else None
    if lengths_pool is None:
        print(f"warning: {DATA} not found; batch-64 rows use full length", file=sys.stderr)
    load = os.getloadavg()
    stamp = common.now()
    info = common.machine_info(args.threads)
    common.banner(f"edgekd student benchmark | load avg {load[0]:.1f} | adam {args.adam}", info)
    print(f"{'case':<10} {'H':>4} {'impl':<10} {'median ms':>10} {'best ms':>9} {'IQR ms':>8} {'runs':>6} {'speed-up':>9}")
    rows = []
    for H in args.hidden:
        torch.manual_seed(0)
        ref = BiLSTMAttentionStudent(args.vocab, embed_dim=args.embed, hidden_size=H, backend="reference")
        nat = BiLSTMAttentionStudent(args.vocab, embed_dim=args.embed, hidden_size=H, backend="native")
        nat.load_state_dict(ref.state_dict())
        # the native ops without the fused inference op (what batch 1 ran on before it existed)
        unf = BiLSTMAttentionStudent(args.vocab, embed_dim=args.embed, hidden_size=H, backend="native")
        unf.load_state_dict(ref.state_dict())
        unf.FUSED_MAX_BATCH = 0
        for case in args.cases:
            if case == "infer_b1":
                ids, mask, labels, lengths = make_batch(1, 32, args.vocab, None, seed=1)
            else:
                ids, mask, labels, lengths = make_batch(64, 64, args.vocab, lengths_pool, seed=2)
            fns, checks = {}, {}
            impls = [("reference", ref), ("native", nat)]
            if case.startswith("infer") and ids.shape[0] <= nat.FUSED_MAX_BATCH:
                impls.append(("unfused", unf))
            for name, model in impls:
                if case.startswith("infer"):
                    model.eval()

                    def fn(model=model):
                        with torch.inference_mode():
                            return model(ids, mask)

                    with torch.inference_mode():
                        check = model(ids, mask).logits
                else:
                    model.train()
                    opt = torch.optim.Adam(model.parameters(), lr=1e-4, **ADAM_KW[args.adam])
                    loss_fn = torch.nn.CrossEntropyLoss()

                    def fn(model=model, opt=opt, loss_fn=loss_fn):
                        opt.zero_grad(set_to_none=True)
                        loss = loss_fn(model(ids, mask).logits, labels)
                        loss.backward()
                        opt.step()

                    with torch.no_grad():
                        check = model(ids, mask).logits
                fns[name], checks[name] = fn, check
            # same weights -> same outputs (compared before timing: training steps then move the
            # two models' weights apart by rounding only)
            max_diff = (checks["native"] - checks["reference"]).abs().max().item()
            # alternate the two implementations over several rounds so that both see the same
            # machine load; report the median over rounds and the median of per-round ratios
            names = [n for n, _ in impls]
            per_round = {n: [] for n in names}
            for _ in range(args.rounds):
                for name in names:
                    per_round[name].append(measure(fns[name], f"{case}/H{H}/{name}", args.min_run_time / args.rounds))
            for name in names:
                med = float(np.median([m[0] for m in per_round[name]]))
                best = float(np.min([m[0] for m in per_round[name]]))
                iqr = float(np.median([m[1] for m in per_round[name]]))
                runs = int(sum(m[2] for m in per_round[name]))
                ratios = [r[0] / n[0] for r, n in zip(per_round["reference"], per_round[name])]
                speed = float(np.median(ratios))
                print(f"{case:<10} {H:>4} {name:<10} {med:>10.3f} {best:>9.3f} {iqr:>8.3f} {runs:>6} {speed:>8.2f}x")
                rows.append(common.make_row(
                    common.fmt_case(case=case, batch=int(ids.shape[0]), T=int(ids.shape[1]),
                                    mean_len=round(float(np.mean(lengths)), 2), H=H, E=args.embed, V=args.vocab),
                    name, "train-step" if case.startswith("train") else "inference", med, iqr, None, speed,
                    common.fmt_extra(best_ms=round(best, 4), runs=runs, max_abs_logit_diff=f"{max_diff:.2e}",
                                     adam=args.adam if case.startswith("train") else "",
                                     load_avg_1m=round(load[0], 2)),
                    info=info, time=stamp))
            print(f"{'':<10} {'':>4} max |logits native - reference| = {max_diff:.2e}")
    if not args.no_save:
        common.append_rows(RESULTS / "student.csv", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
