"""Teacher IG cost before/after the annotation changes, and the Gauss-Legendre step study, in one run.

On N stratified TFNS training tweets (the dev split held out as in the pipeline) with a MiniLM-L6
teacher fine-tuned as the quick profile does (1 epoch, 2,000 tweets, lr 1e-4):

* cost: ms per tweet per IG step at 8 steps, the old settings (8 texts per captum call, weight
  gradients on) against the new ones (length buckets up to ``max_tokens``, no weight gradients),
  alternated ``--repeats`` times in the same process (teacher logits timed apart and subtracted);
* steps: 4/8/16/32 Gauss-Legendre steps against 50 on the same tweets: Spearman rank correlation
  and top-5 feature agreement of the per-word attributions with the 50-step ones, and captum's
  convergence delta;
* ``--mode freeze``: the same teacher fine-tuned with the word-embedding matrix frozen, scored on
  the dev split like the first (accuracy, macro-F1, fine-tuning seconds); it can run in a second
  process next to ``--mode ig``.

    python -m benchmarks.bench_ig --mode ig --n 200 --timing-n 100 --teacher-sample 1000
    python -m benchmarks.bench_ig --mode freeze --teacher-sample 1000
    python -m benchmarks.bench_ig --mode report

Writes ``benchmarks/results/ig_steps.json`` (ig), ``ig_steps_freeze.json`` (freeze) and
``ig_steps.md`` (report, from both).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"loadavg {os.getloadavg()}"


def _teacher(enc, train, dev, out: Path, freeze: bool):
    from edgekd.metrics import classification_metrics
    from edgekd.teacher import finetune_teacher
    from edgekd.teacher.config import FinetuneConfig

    cfg = FinetuneConfig(epochs=1.0, lr=1e-4, batch_size=16, max_length=64, freeze_embeddings=freeze)
    t, rec = finetune_teacher(enc, train, out, config=cfg, progress=False)
    pred = t.logits(dev.texts).argmax(-1)
    m = classification_metrics(dev.labels, pred, dev.label_names)
    trainable = sum(p.numel() for p in t.model.parameters()) - (
        t.model.get_input_embeddings().weight.numel() if freeze else 0)
    return t, {"freeze_embeddings": freeze, "train_seconds": rec.get("train_seconds"), "reused": rec.get("reused"),
               "trainable_parameters": trainable, "dev_accuracy": round(m["accuracy"], 4),
               "dev_macro_f1": round(m["macro_f1"], 4), "examples": len(train)}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def main() -> None:  # noqa: C901
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="tweets of the step study")
    ap.add_argument("--timing-n", type=int, default=100, help="tweets of the before/after timing")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", default="4,8,16,32")
    ap.add_argument("--ref-steps", type=int, default=50)
    ap.add_argument("--teacher", help="a fine-tuned teacher dir (default: fine-tune the quick teacher)")
    ap.add_argument("--mode", choices=("ig", "freeze", "report"), default="ig")
    ap.add_argument("--teacher-sample", type=int, default=2000)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default="runs/bench-ig")
    ap.add_argument("--results", default="benchmarks/results")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from edgekd.data import WordTokenizer, load_tfns
    from edgekd.distill.api import minilm_dir
    from edgekd.metrics import feature_agreement
    from dataclasses import asdict

    from edgekd.teacher import IGConfig, Teacher, annotate

    rdir = Path(args.results)
    if args.mode == "report":
        rec = json.loads((rdir / "ig_steps.json").read_text())
        for extra in ("ig_steps_teacher.json", "ig_steps_freeze.json"):  # teachers trained by other processes
            if (rdir / extra).is_file():
                rec["teachers"] += [json.loads((rdir / extra).read_text())]
        (rdir / "ig_steps.md").write_text(_markdown(rec))
        print(_markdown(rec))
        return
    load_start = _uptime()
    t_start = time.perf_counter()
    out = Path(args.out)
    rest, dev = load_tfns("train").stratified_split(0.1, seed=1)  # the pipeline's dev split (run seed 0)
    ttrain = rest.stratified_sample(args.teacher_sample, seed=0)
    if args.mode == "freeze":
        _, rec = _teacher(str(minilm_dir()), ttrain, dev, out / "teacher-frozen-emb", True)
        rec.update(uptime_start=load_start, uptime_end=_uptime())
        (rdir / "ig_steps_freeze.json").write_text(json.dumps(rec, indent=2))
        print(json.dumps(rec), flush=True)
        return
    teachers = []
    if args.teacher:
        teacher = Teacher.from_pretrained(args.teacher)
    else:
        teacher, rec = _teacher(str(minilm_dir()), ttrain, dev, out / "teacher", False)
        teachers.append(rec)
        print(json.dumps(rec), flush=True)
    tok = WordTokenizer.train(rest.texts, min_frequency=1, max_vocab=30000, max_length=64)
    sample = rest.stratified_sample(args.n, seed=7)
    timing = sample.select(range(min(args.timing_n, len(sample))))

    # ---- cost: before / after, alternated, teacher logits subtracted
    # CPU seconds of this (single-threaded) process: on a machine shared with other jobs its wall
    # clock measures the other jobs too (the wall figures are kept alongside)
    t0 = time.process_time()
    annotate(teacher, timing, tok, ig=None, progress=False)
    logits_s = time.process_time() - t0
    settings = {"before": IGConfig(steps=8, batch_size=8, max_tokens=None, freeze_parameters=False),
                "after": IGConfig(steps=8)}
    for ig in settings.values():  # warm-up (imports, first-call allocations)
        annotate(teacher, timing.select(range(min(4, len(timing)))), tok, ig=ig, progress=False)
    cost: dict[str, list[float]] = {k: [] for k in settings}
    wall: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(args.repeats):
        for name, ig in settings.items():
            t0, w0 = time.process_time(), time.perf_counter()
            annotate(teacher, timing, tok, ig=ig, progress=False)
            s = time.process_time() - t0 - logits_s
            cost[name].append(1e3 * s / (len(timing) * ig.steps))
            wall[name].append(1e3 * (time.perf_counter() - w0) / (len(timing) * ig.steps))
            print(json.dumps({"cost": name, "cpu_ms_per_tweet_step": round(cost[name][-1], 2),
                              "wall_ms_per_tweet_step": round(wall[name][-1], 2)}), flush=True)

    # ---- steps
    steps = [int(s) for s in args.steps.split(",")]
    res = {}
    for s in [args.ref_steps] + steps:
        t0 = time.process_time()
        ann = annotate(teacher, sample, tok, ig=IGConfig(steps=s), progress=False)
        res[s] = (ann, time.process_time() - t0)
        print(json.dumps({"steps": s, "seconds": round(res[s][1], 1)}), flush=True)
    ref = res[args.ref_steps][0]
    rows = []
    for s in steps + [args.ref_steps]:
        ann, sec = res[s]
        rho = [_spearman(a, b) for a, b in zip(ann.attributions, ref.attributions)]
        top5 = [feature_agreement(a, b, 5) for a, b in zip(ann.attributions, ref.attributions) if a.size]
        d = np.abs(ann.delta)
        rows.append({"steps": s, "spearman_median": float(np.nanmedian(rho)), "spearman_mean": float(np.nanmean(rho)),
                     "spearman_p10": float(np.nanpercentile(rho, 10)), "top5_agreement": float(np.mean(top5)),
                     "abs_delta_median": float(np.median(d)), "abs_delta_p90": float(np.percentile(d, 90)),
                     "cpu_seconds": round(sec, 1),
                     "ms_per_tweet_step": 1e3 * (sec - logits_s * len(sample) / len(timing)) / (len(sample) * s)})
    rec = {"time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "uptime_start": load_start, "uptime_end": _uptime(), "n": len(sample), "timing_n": len(timing),
           "teachers": teachers, "cost_ms_per_tweet_step": cost, "wall_ms_per_tweet_step": wall,
           "logits_cpu_seconds": round(logits_s, 2), "after": asdict(settings["after"]),
           "steps": rows, "wall_seconds": round(time.perf_counter() - t_start, 1),
           "command": f"python -m benchmarks.bench_ig --mode ig --n {args.n} --timing-n {args.timing_n} "
                      f"--repeats {args.repeats} --teacher-sample {args.teacher_sample}",
           "ref_steps": args.ref_steps}
    (rdir / "ig_steps.json").write_text(json.dumps(rec, indent=2))
    print(_markdown(rec))


def _markdown(rec: dict) -> str:
    c, w = rec["cost_ms_per_tweet_step"], rec["wall_ms_per_tweet_step"]
    b, a = np.median(c["before"]), np.median(c["after"])
    aft = rec["after"]
    lines = [
        "# Teacher IG: cost before/after, and how many Gauss-Legendre steps",
        "",
        f"Commands: `OMP_NUM_THREADS=1 nice {rec['command']}` ({rec['time']}, {rec['machine']}, "
        f"{rec['cpus']} CPUs, torch {rec['torch']}, {rec['torch_threads']} torch thread(s)); in a second process at "
        "the same time `OMP_NUM_THREADS=1 nice python -m benchmarks.bench_ig --mode freeze` with the same "
        "`--teacher-sample`; then `--mode report` writes this file.",
        "",
        f"**Machine load: `{rec['uptime_start']}` at the start, `{rec['uptime_end']}` at the end.** This machine was "
        "shared with several other jobs: the absolute times are inflated and noisy. The lead should re-run this "
        "on an idle machine; the before/after ratio (alternated in one process) and the step study's accuracy "
        "columns do not depend on the load.",
        "",
        f"## Cost: CPU ms per tweet per IG step (8 steps, {rec['timing_n']} training tweets, teacher logits subtracted)",
        "",
        "CPU time of the single-threaded process (`time.process_time`); on this shared machine the wall clock "
        "mostly measures the other jobs (wall figures in the last column).",
        "",
        "| settings | runs (CPU ms per tweet-step) | median | wall ms per tweet-step |",
        "|---|---|---|---|",
        f"| before: 8 texts per captum call, weight gradients on | {', '.join(f'{x:.1f}' for x in c['before'])} | {b:.1f} | "
        f"{', '.join(f'{x:.0f}' for x in w['before'])} |",
        f"| after: length buckets (<= {aft['batch_size']} texts, <= {aft['max_tokens']} interpolated positions per call), "
        f"no weight gradients | {', '.join(f'{x:.1f}' for x in c['after'])} | {a:.1f} | {', '.join(f'{x:.0f}' for x in w['after'])} |",
        "",
        f"Speed-up (CPU time): {b / a:.2f}x.",
        "",
        f"## Steps: word attributions against {rec['ref_steps']} Gauss-Legendre steps ({rec['n']} training tweets)",
        "",
        "| steps | Spearman median | Spearman mean | Spearman p10 | top-5 agreement | abs(delta) median | abs(delta) p90 | CPU ms per tweet-step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rec["steps"]:
        lines.append(f"| {r['steps']} | {r['spearman_median']:.4f} | {r['spearman_mean']:.4f} | {r['spearman_p10']:.4f} | "
                     f"{r['top5_agreement']:.4f} | {r['abs_delta_median']:.4f} | {r['abs_delta_p90']:.4f} | "
                     f"{r['ms_per_tweet_step']:.1f} |")
    if rec["teachers"]:
        lines += ["", f"## Teacher fine-tuning: the word-embedding matrix trained or frozen ({rec['teachers'][0]['examples']:,} "
                  "training tweets, 1 epoch, lr 1e-4, batch 16; scored on the 954-tweet dev split)",
                  "", "| word embeddings | trainable parameters | fine-tune s (wall, loaded; the two ran at the same time) | dev accuracy | dev macro-F1 |", "|---|---|---|---|---|"]
        for t in rec["teachers"]:
            lines.append(f"| {'frozen' if t['freeze_embeddings'] else 'trained'} | {t['trainable_parameters']:,} | "
                         f"{t['train_seconds']} | {t['dev_accuracy']:.4f} | {t['dev_macro_f1']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
