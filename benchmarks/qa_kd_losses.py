"""Which KD loss for the few-shot legal-QA student? Chosen on DEV answers, then one TEST row.

The legal-QA quick profile (`edgekd demo --task legal-qa --profile quick`) trains the half-depth
student on 64 human PolicyQA DEV pairs by SFT (CE) and by KD (forward KL + 0.5 CE), and reads
KD < SFT on test. This script asks whether another token-level loss of `edgekd.llm.losses`
does better, without touching test for the choice:

- training pairs: the quick profile's 64 (same pool, same seed), the student's blocks: the quick
  run's prune stage (`--run runs/legal-qa-quick`), each variant carving its own 10 % dev split
  for checkpoint choice as the profile does;
- choice: SQuAD F1 on ``--dev-n`` other PolicyQA DEV questions (paragraphs none of the training
  pairs uses), greedy answers from the gold context;
- then the dev-best KD variant answers the quick profile's 50 TEST questions once.

  OMP_NUM_THREADS=2 python benchmarks/qa_kd_losses.py --run runs/legal-qa-quick
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO)), sys.path.insert(0, str(REPO / "benchmarks"))

from common import command_line, machine_info, machine_string, now, versions_string  # noqa: E402

VARIANTS = {  # name: (loss, ce_weight)
    "SFT (CE)": ("ce", 0.0),
    "forward KL + 0.5 CE (profile)": ("forward_kl", 0.5),
    "reverse KL + 0.5 CE (MiniLLM-style objective, off-policy)": ("reverse_kl", 0.5),
    "skew forward KL + 0.5 CE (DistiLLM)": ("skew_forward_kl", 0.5),
    "AKL + 0.5 CE (adaptive KL)": ("akl", 0.5),
}


def quick_rows(quick: dict) -> dict:
    """{model row: test F1} of a quick-profile results.json."""
    return {r["model"]: f"{r['f1']:.1f}" for r in quick.get("rows", []) if r.get("f1") is not None
            and r["stage"] in ("teacher", "student-sft", "student-kd")} or {"see": "results.md of the run"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/legal-qa-quick", help="a finished quick-profile run (config + stages)")
    ap.add_argument("--dev-n", type=int, default=50)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/qa_kd_losses")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "legal_qa_kd_losses.md"))
    args = ap.parse_args()

    import torch

    from edgekd.llm.prune import prune_depth
    from edgekd.pipeline.legal_qa import LegalQAConfig
    from edgekd.qa.bench import generative_eval, load_teacher, short_pairs, train_test_pairs
    from edgekd.qa.cli_train import select_triplets
    from edgekd.qa.data import load_policyqa
    from edgekd.qa.students import QAStudentConfig, train_qa_student
    from edgekd.settings import load_toml

    torch.set_num_threads(args.threads)
    run = pathlib.Path(args.run)
    cfg = LegalQAConfig.from_dict(load_toml(run / "config.toml"), str(run / "config.toml"))
    keep = json.loads((run / "stages" / "prune.json").read_text())["result"]["kept_layers"]
    d, s = cfg.data, cfg.student
    dev_pool = load_policyqa("dev")[1]
    train, test, _ = train_test_pairs(dev_pool, load_policyqa("test")[1], train_n=d.train_n, test_n=d.test_n,
                                      max_context_words=d.max_context_words, seed=cfg.run.seed)
    used = {t.context_id for t in train}
    dev_eval = select_triplets([t for t in short_pairs(dev_pool, d.max_context_words) if t.context_id not in used],
                               sample=args.dev_n, seed=cfg.run.seed + 1)
    teacher, tok = load_teacher(cfg.teacher.model, pathlib.Path(cfg.run.cache_dir) / f"{cfg.teacher.model}-fp32")
    info = machine_info(args.threads)
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows, t_start, load0 = {}, now(), os.getloadavg()
    models = {}
    for name in args.variants:
        cache = work / (VARIANTS[name][0] + ".json")
        loss, ce_w = VARIANTS[name]
        student = prune_depth(teacher, keep)
        qcfg = QAStudentConfig(loss=loss, ce_weight=ce_w, temperature=s.temperature, max_length=s.max_length,
                               epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, dev_fraction=s.dev_fraction,
                               seed=cfg.run.seed)
        t0 = time.perf_counter()
        res = train_qa_student(student, tok, train, teacher=teacher if loss != "ce" else None, config=qcfg)
        ev = generative_eval(student, tok, dev_eval, max_new_tokens=cfg.teacher.max_new_tokens,
                             batch_size=cfg.teacher.batch_size)
        rows[name] = {"loss": loss, "ce_weight": ce_w, "dev_loss": [res.dev_before, res.dev_after],
                      "train_s": res.seconds, "dev_metrics": ev["metrics"], "wall_s": time.perf_counter() - t0}
        cache.write_text(json.dumps(rows[name], indent=1))
        print(f"{name}: dev F1 {ev['metrics']['f1']:.1f} (dev loss {res.dev_after:.3f}, {rows[name]['wall_s']:.0f} s)",
              flush=True)
        models[name] = student
    kd = [n for n in rows if rows[n]["loss"] != "ce"]
    best = max(kd, key=lambda n: rows[n]["dev_metrics"]["f1"])
    ev = generative_eval(models[best], tok, test, max_new_tokens=cfg.teacher.max_new_tokens,
                         batch_size=cfg.teacher.batch_size)
    rows[best]["test_metrics"] = ev["metrics"]
    res = {"command": command_line(), "machine": info, "started": t_start, "finished": now(),
           "load": [load0, os.getloadavg()], "rows": rows, "best_kd": best, "kept_layers": keep,
           "dev_eval_n": len(dev_eval), "train_n": len(train), "test_n": len(test)}
    out = pathlib.Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    quick = json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}
    L = ["# KD loss for the few-shot legal-QA student, chosen on DEV (issue 15)", "",
         f"Machine: {machine_string(info)}. {versions_string(info)}. Run {res['started']} -> {res['finished']}, "
         f"load average {res['load'][0][0]:.2f} -> {res['load'][1][0]:.2f} (2 cores).", "",
         f"Command: `{res['command']}`", "",
         f"Student: SmolLM2-135M-Instruct cut to {len(keep)} of 30 blocks ({keep}, the quick run's block-influence "
         f"choice), {s.epochs:g} epochs, lr {s.lr:g}, on the quick profile's {len(train)} human PolicyQA DEV pairs "
         f"(each row keeps its lowest-dev-loss checkpoint on a 10 % split of them). Selection: SQuAD F1 on "
         f"{len(dev_eval)} other PolicyQA DEV questions (paragraphs no training pair uses), gold context, greedy, "
         f"at most {cfg.teacher.max_new_tokens} tokens. Then the dev-best KD row answers the quick profile's "
         f"{len(test)} TEST questions once.", "",
         "| training loss | dev answer loss (before -> best) | DEV F1 (selection) | DEV EM | TEST F1 |", "|---|---|---:|---:|---:|"]
    for n, r in rows.items():
        tf = f"**{r['test_metrics']['f1']:.1f}**" if "test_metrics" in r else "-"
        L.append(f"| {n}{' (dev-best KD)' if n == best else ''} | {r['dev_loss'][0]:.3f} -> {r['dev_loss'][1]:.3f} | "
                 f"{r['dev_metrics']['f1']:.1f} | {r['dev_metrics']['exact_match']:.1f} | {tf} |")
    L += ["", "For comparison, the quick profile's TEST rows (same 50 questions; `runs/legal-qa-quick/results.md`): "
          + ", ".join(f"{r}: F1 {v}" for r, v in quick_rows(quick).items()) + ".", ""]
    out.write_text("\n".join(L) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
