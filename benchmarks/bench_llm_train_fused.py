"""Training tokens/s and peak memory of ``train_causal_lm`` with ``fused=True`` vs the naive path.

A random llama student at SmolLM2-135M's width (vocabulary 49,152, hidden 576, MLP 1,536, 9 heads /
3 KV heads, tied embeddings) with ``--layers`` decoder layers, distilled (forward KL, tau = 1) from a
live random teacher of the same shape, on random sequences of ``--seq`` tokens, ``--batch`` per step.
``naive``: the student's (B, T, V) logits, ``kd_loss``, autograd; ``fused``: the base model's hidden
states and the tied lm_head weight through ``edgekd::fused_linear_kd`` (no student logits; the live
teacher's logits are an input in both). Each mode runs in a fresh subprocess: one warm-up step, then
the peak-RSS counter is reset (``/proc/self/clear_refs``) and ``--steps`` steps are timed;
tokens/s = trained (valid target) tokens / wall-clock of those steps. Load (``os.getloadavg``) is
recorded: on a shared machine the times are noisy; re-run on an idle one.

    python benchmarks/bench_llm_train_fused.py                 # 2 layers, seq 128, batch 4, 3 steps
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"
MODES = ("naive", "fused")


def _model(layers: int, seed: int):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=2048,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def child(mode: str, layers: int, seq: int, batch: int, steps: int, threads: int) -> dict:
    import torch

    from bench_fused_linear_kd import _rss_kb
    from edgekd.llm.trainer import LLMTrainConfig, token_data, train_causal_lm

    torch.set_num_threads(threads)
    student, teacher = _model(layers, 1), _model(layers, 2).eval()
    g = torch.Generator().manual_seed(0)
    data = token_data(torch.randint(3, 49152, (batch * (steps + 1), seq), generator=g))

    def cfg(n_steps: int) -> LLMTrainConfig:
        c = LLMTrainConfig(loss="forward_kl", fused=mode == "fused")
        c.loop.batch_size, c.loop.max_steps, c.loop.shuffle, c.loop.warmup_ratio = batch, n_steps, "none", 0.0
        return c

    warm = {k: v[:batch] for k, v in data.items()}
    train_causal_lm(student, warm, teacher=teacher, config=cfg(1), progress=False)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _rss_kb("VmRSS")
    rest = {k: v[batch:] for k, v in data.items()}
    t0 = time.perf_counter()
    r = train_causal_lm(student, rest, teacher=teacher, config=cfg(steps), progress=False)
    dt = time.perf_counter() - t0
    return {"tokens": r.tokens_trained, "seconds": dt, "losses": r.loop.losses,
            "extra_mb": (_rss_kb("VmHWM") - base) / 1024, "peak_mb": _rss_kb("VmHWM") / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.layers, args.seq, args.batch, args.steps, args.threads)))
        return
    import common

    info = common.machine_info(threads=args.threads)
    stamp = common.now()
    print(common.banner(f"train_causal_lm fused vs naive: {args.layers} layers, V=49152, H=576, "
                        f"seq {args.seq}, batch {args.batch}", info))
    res, rows = {}, []
    for mode in MODES:
        load = os.getloadavg()[0]
        cmd = [sys.executable, __file__, "--child", mode] + [f"--{k}={getattr(args, k)}" for k in
                                                            ("layers", "seq", "batch", "steps", "threads")]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                             env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        if out.returncode != 0:
            raise SystemExit(f"{mode}: {(out.stderr or out.stdout).strip().splitlines()[-1:]}")
        res[mode] = dict(json.loads(out.stdout.strip().splitlines()[-1]), load=load)
    base = res["naive"]["tokens"] / res["naive"]["seconds"]
    for mode in MODES:
        r = res[mode]
        tps = r["tokens"] / r["seconds"]
        print(f"{mode:6s} {tps:8.1f} tokens/s  ({r['tokens']} tokens in {r['seconds']:.1f} s)  "
              f"extra {r['extra_mb']:7.0f} MB  peak {r['peak_mb']:7.0f} MB  losses {r['losses']}  load {r['load']:.1f}")
        rows.append(common.make_row(
            common.fmt_case(train="forward_kl", layers=args.layers, V=49152, H=576, seq=args.seq, batch=args.batch),
            f"trainer_{mode}", "train", r["seconds"] / args.steps * 1e3, None, r["extra_mb"], tps / base,
            common.fmt_extra(tokens_per_s=f"{tps:.1f}", peak_rss_mb=f"{r['peak_mb']:.0f}", load=f"{r['load']:.1f}",
                             losses="/".join(f"{x:.5f}" for x in r["losses"])),
            info=info, time=stamp))
    common.append_rows(RESULTS / "llm_kd.csv", rows)


if __name__ == "__main__":
    main()
