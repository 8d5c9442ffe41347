"""Benchmark: native student (edgekd ops: masked_bilstm + masked_attention_pool) vs the reference
student (nn.LSTM with pack_padded_sequence + plain PyTorch attention), same weights, same run.

Cases (embed 50, vocab 10k, hidden 50 and 128):
  infer_b1   inference, batch 1, T = 32 (a full-length row)
  infer_b64  inference, batch 64, T = 64, lengths drawn from the TFNS length distribution
             (whitespace word counts of sent_train.csv)
  train_b64  one training step at batch 64 (forward + cross-entropy + backward + Adam step)

Inference runs under torch.inference_mode(). Timing: torch.utils.benchmark.Timer,
blocked_autorange; medians and inter-quartile ranges in ms; speed-up = reference / native
measured in the same run. Results: printed, appended to benchmarks/results/student.csv and
summarized in benchmarks/results/student.md.

    .venv/bin/python benchmarks/bench_student.py [--threads 1] [--hidden 50 128] [--min-run-time 1.0]
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import torch.utils.benchmark as tb

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tfns" / "sent_train.csv"
RESULTS = ROOT / "benchmarks" / "results"


def tfns_lengths(path: Path) -> np.ndarray:
    """Whitespace word counts of the TFNS training tweets (parsed as CSV: quoted line breaks)."""
    with open(path, newline="", encoding="utf-8") as f:
        return np.array([max(1, len(r["text"].split())) for r in csv.DictReader(f)], dtype=np.int64)


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


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(stmt_fn, label: str, min_run_time: float):
    t = tb.Timer(stmt="fn()", globals={"fn": stmt_fn}, label=label, num_threads=torch.get_num_threads())
    m = t.blocked_autorange(min_run_time=min_run_time)
    return m.median * 1e3, m.iqr * 1e3, len(m.times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--hidden", type=int, nargs="+", default=[50, 128])
    p.add_argument("--embed", type=int, default=50)
    p.add_argument("--vocab", type=int, default=10_000)
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement")
    p.add_argument("--cases", nargs="+", default=["infer_b1", "infer_b64", "train_b64"])
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from edgekd.students import BiLSTMAttentionStudent, native_available

    if not native_available():
        print("native ops (masked_bilstm, masked_attention_pool) not available: nothing to compare", file=sys.stderr)
        return 1
    lengths_pool = tfns_lengths(DATA) if DATA.is_file() else None
    if lengths_pool is None:
        print(f"warning: {DATA} not found; batch-64 rows use full length", file=sys.stderr)
    load = os.getloadavg()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    banner = (
        f"edgekd student benchmark | {stamp} | {cpu_name()} | {os.cpu_count()} cores, torch threads {args.threads} "
        f"| load avg {load[0]:.1f} | torch {torch.__version__} | python {platform.python_version()}"
    )
    print(banner)
    print(f"{'case':<10} {'H':>4} {'impl':<10} {'median ms':>10} {'IQR ms':>8} {'runs':>6} {'speed-up':>9}")
    rows = []
    for H in args.hidden:
        torch.manual_seed(0)
        ref = BiLSTMAttentionStudent(args.vocab, embed_dim=args.embed, hidden_size=H, backend="reference")
        nat = BiLSTMAttentionStudent(args.vocab, embed_dim=args.embed, hidden_size=H, backend="native")
        nat.load_state_dict(ref.state_dict())
        for case in args.cases:
            if case == "infer_b1":
                ids, mask, labels, lengths = make_batch(1, 32, args.vocab, None, seed=1)
            else:
                ids, mask, labels, lengths = make_batch(64, 64, args.vocab, lengths_pool, seed=2)
            results = {}
            for name, model in (("reference", ref), ("native", nat)):
                if case.startswith("infer"):
                    model.eval()

                    def fn(model=model):
                        with torch.inference_mode():
                            return model(ids, mask)

                    with torch.inference_mode():
                        check = model(ids, mask).logits
                else:
                    model.train()
                    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
                    loss_fn = torch.nn.CrossEntropyLoss()

                    def fn(model=model, opt=opt, loss_fn=loss_fn):
                        opt.zero_grad(set_to_none=True)
                        loss = loss_fn(model(ids, mask).logits, labels)
                        loss.backward()
                        opt.step()

                    with torch.no_grad():
                        check = model(ids, mask).logits
                results[name] = (measure(fn, f"{case}/H{H}/{name}", args.min_run_time), check)
            # same weights -> same outputs (training steps move the weights identically only in
            # exact arithmetic, so compare before timing)
            max_diff = (results["native"][1] - results["reference"][1]).abs().max().item()
            ref_ms = results["reference"][0][0]
            for name in ("reference", "native"):
                (med, iqr, runs), _ = results[name]
                speed = ref_ms / med
                print(f"{case:<10} {H:>4} {name:<10} {med:>10.3f} {iqr:>8.3f} {runs:>6} {speed:>8.2f}x")
                rows.append(
                    {
                        "time_utc": stamp,
                        "case": case,
                        "batch": int(ids.shape[0]),
                        "T": int(ids.shape[1]),
                        "mean_len": float(np.mean(lengths)),
                        "hidden": H,
                        "embed": args.embed,
                        "vocab": args.vocab,
                        "impl": name,
                        "median_ms": round(med, 4),
                        "iqr_ms": round(iqr, 4),
                        "runs": runs,
                        "speedup_vs_reference": round(speed, 3),
                        "max_abs_logit_diff": f"{max_diff:.2e}",
                        "threads": args.threads,
                        "load_avg_1m": round(load[0], 2),
                        "cpu": cpu_name(),
                        "torch": torch.__version__,
                    }
                )
            print(f"{'':<10} {'':>4} max |logits native - reference| = {max_diff:.2e}")
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        csv_path = RESULTS / "student.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
        print(f"appended {len(rows)} rows to {csv_path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
