"""DiXtill on all of TFNS, settled with seeds: alpha/tau tuned on the dev split with the same budget
for KL and DiXtill, the DiXtill variants of the analysis (the authors' ``code`` loss, |attributions|,
centred L_XAI, attributions of the gold label), then every method with several student seeds on the
validation split, and what the XAI loss does to the attention and the label loss.

Runs on a finished ``edgekd demo`` (default profile) output: its teacher (``BASE/teacher``) and the
annotation cache are reused, so nothing is fine-tuned or attributed again (except the gold-label IG
of the analysis, for the training texts where the teacher's prediction is not the gold label).

    .venv/bin/python benchmarks/distill_study.py --base runs/demo --seeds 5 \
        --out benchmarks/results/distill_tfns_study      (.md + .json)

Protocol: every choice (alpha, tau, variant, epoch) is made on the dev split (10 % of the training
tweets, stratified, no model trains on it); the validation split is scored only in the final phase,
once per (method, seed), and no choice is made from it. Students train with the profile's settings
(at most 10 epochs, patience 3, best dev macro-F1 checkpoint).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import statistics
import sys
import time

import numpy as np

import common

ROOT = common.ROOT


def _entropy(att_logits: list[np.ndarray]) -> float:
    """Mean entropy (nats) of the attention softmax over each text's words, normalised by log(n)
    (1 = uniform attention, 0 = all weight on one word); texts of one word are left out."""
    vals = []
    for a in att_logits:
        a = np.asarray(a, dtype=np.float64)
        if a.size < 2:
            continue
        p = np.exp(a - a.max())
        p /= p.sum()
        vals.append(float(-(p * np.log(np.clip(p, 1e-30, None))).sum() / math.log(a.size)))
    return float(np.mean(vals))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="runs/demo", help="a finished `edgekd demo` (default profile) output dir")
    p.add_argument("--profile", default="default")
    p.add_argument("--seeds", type=int, default=5, help="student seeds per method in the final phase")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--taus", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distill_tfns_study"))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    import torch

    from edgekd.distill.api import Distiller
    from edgekd.distill.attributions import student_attention_logits
    from edgekd.distill.trainer import EncodedSplit, predict_logits, train_student
    from edgekd.metrics import classification_metrics, explanation_agreement
    from edgekd.pipeline.profiles import profile_config
    from edgekd.teacher import annotate

    if args.threads:
        torch.set_num_threads(args.threads)
    base = pathlib.Path(args.base)
    if not (base / "teacher").is_dir():
        sys.exit(f"{base}/teacher not found: run `edgekd demo --profile {args.profile}` first")
    work = base / "study"
    cfg = profile_config(args.profile, {"run.out": str(base), "teacher.dir": str(base / "teacher"),
                                        "run.progress": False})
    t_start = time.perf_counter()
    dist = Distiller(cfg, log=lambda s: None)
    dist.prepare_data()
    dist.prepare_teacher()
    dist.annotate()
    tr, va = dist._splits()
    dev = dist.selection_split(va)
    labels = dist.train.label_names
    out: dict = {"protocol": dist.protocol(), "config": {"alphas": args.alphas, "taus": args.taus, "seeds": args.seeds},
                 "tuning": [], "variants": [], "final": {}}

    def fit(name: str, tcfg, split: EncodedSplit, seed: int):
        student = dist.new_student(seed)
        tcfg = dataclasses.replace(tcfg, seed=seed)
        res = train_student(student, split, dev, tcfg, work / name / f"seed{seed}", resume=True, progress=False,
                            log=None, label_names=labels)
        best_hist = next(h for h in res.history if h["epoch"] == res.best_epoch) if res.history else {}
        return res, best_hist

    # ---- phase 1: alpha x tau on dev, seed 0, same grid for KL and DiXtill ----------------------
    best = {}
    for method in ("kl", "dixtill"):
        for a in args.alphas:
            for t in args.taus:
                tcfg = dataclasses.replace(cfg.train_config(method), alpha=a, tau=t)
                res, h = fit(f"tune-{method}-a{a}-t{t}", tcfg, tr, 0)
                row = {"method": method, "alpha": a, "tau": t, "dev_macro_f1": round(res.best_valid["macro_f1"], 4),
                       "dev_accuracy": round(res.best_valid["accuracy"], 4), "best_epoch": res.best_epoch}
                out["tuning"].append(row)
                print(json.dumps(row), flush=True)
                if method not in best or row["dev_macro_f1"] > best[method]["dev_macro_f1"]:
                    best[method] = row
    out["selected"] = best

    # ---- phase 2: DiXtill variants at DiXtill's selected alpha/tau, on dev ---------------------------
    dcfg = dataclasses.replace(cfg.train_config("dixtill"), alpha=best["dixtill"]["alpha"], tau=best["dixtill"]["tau"])
    variants = {
        "code": dataclasses.replace(dcfg, variant="code"),
        "abs": dataclasses.replace(dcfg, xai_absolute=True),
        "centered": dataclasses.replace(dcfg, xai_centered=True),
        "abs+centered": dataclasses.replace(dcfg, xai_absolute=True, xai_centered=True),
    }
    # gold-label attributions: IG of the gold class where the teacher's prediction differs
    pred = dist.train_ann.logits.argmax(-1)
    wrong = [int(i) for i in np.nonzero(pred != np.asarray(dist.train.labels))[0]]
    t0 = time.perf_counter()
    ig_label = dataclasses.replace(cfg.ig_config(), target="label")
    lab_ann = annotate(dist.teacher, dist.train, dist.word_tokenizer, cache_dir=pathlib.Path(cfg.run.cache_dir) / "annotations",
                       ig=ig_label, attribute_indices=wrong, chunk_size=cfg.ig.chunk_size, progress=False)
    attrs = list(tr.attributions)
    for i in wrong:
        attrs[i] = lab_ann.attributions[i]
    tr_label = EncodedSplit(tr.ids, tr.labels, tr.teacher_logits, attrs, tr.has_attr)
    out["gold_label_ig"] = {"texts_where_pred_differs": len(wrong), "seconds": round(time.perf_counter() - t0, 1)}
    vrows = []
    for name, vcfg in [*variants.items(), ("gold-label IG", dcfg)]:
        res, h = fit(f"variant-{name}", vcfg, tr_label if name == "gold-label IG" else tr, 0)
        row = {"variant": name, "dev_macro_f1": round(res.best_valid["macro_f1"], 4),
               "dev_accuracy": round(res.best_valid["accuracy"], 4), "best_epoch": res.best_epoch}
        vrows.append(row)
        print(json.dumps(row), flush=True)
    out["variants"] = vrows

    # ---- phase 3: seeds, scored on the validation split (once per method and seed) -----------------
    finals = {
        "none": (cfg.train_config("none"), tr),
        "mse": (cfg.train_config("mse"), tr),
        "kl": (dataclasses.replace(cfg.train_config("kl"), alpha=best["kl"]["alpha"], tau=best["kl"]["tau"]), tr),
        "dixtill": (dcfg, tr),
    }
    best_var = max(vrows, key=lambda r: r["dev_macro_f1"])
    if best_var["dev_macro_f1"] > best["dixtill"]["dev_macro_f1"]:
        vcfg = dcfg if best_var["variant"] == "gold-label IG" else variants[best_var["variant"]]
        finals[f"dixtill ({best_var['variant']})"] = (vcfg, tr_label if best_var["variant"] == "gold-label IG" else tr)
    attr_idx = [int(i) for i in np.nonzero(va.has_attr)[0]]
    teach_va = [va.attributions[i] for i in attr_idx]
    for name, (tcfg, split) in finals.items():
        rows = []
        for s in range(args.seeds):
            res, h = fit(f"final-{name}", tcfg, split, s)
            from edgekd.students import BiLSTMAttentionStudent

            student = BiLSTMAttentionStudent.from_pretrained(res.best_dir, backend=cfg.student.backend)
            vlog = predict_logits(student, va)
            m = classification_metrics(va.labels, vlog.argmax(-1), labels)
            att = student_attention_logits(student, [va.ids[i] for i in attr_idx])
            ag = explanation_agreement(teach_va, att, cfg.eval.top_k)
            row = {"seed": s, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                   "feature_agreement_attention": ag["feature_agreement"], "sign_agreement_attention": ag["sign_agreement"],
                   "attention_entropy": _entropy(att), "dev_ce": h.get("valid_loss"), "train_ce": h.get("train_ce"),
                   "train_xai": h.get("train_xai"), "best_epoch": res.best_epoch}
            rows.append(row)
            print(json.dumps({"final": name, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}}),
                  flush=True)
        out["final"][name] = rows
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    out["machine"] = common.machine_string(common.machine_info(args.threads))

    def ms(name, key):
        v = [r[key] for r in out["final"][name] if r.get(key) is not None]
        if not v:
            return "-"
        return f"{statistics.fmean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0:.4f}"

    def wins(a, b):
        return sum(x["macro_f1"] > y["macro_f1"] for x, y in zip(out["final"][a], out["final"][b]))

    n = args.seeds
    lines = ["| method | settings (chosen on dev) | accuracy | macro-F1 | feature agr.@5 (attention) | sign agr.@5 | "
             "attention entropy (norm.) | dev CE at best epoch |", "|---|---|---|---|---|---|---|---|"]
    for name, (tcfg, _) in finals.items():
        st = "-" if name in ("none",) else f"alpha {tcfg.alpha}, tau {tcfg.tau}" + (
            f", {tcfg.variant}" if tcfg.variant != "paper" else "") + (", abs" if tcfg.xai_absolute else "") + (
            ", centered" if tcfg.xai_centered else "")
        lines.append(f"| {name} | {st} | {ms(name, 'accuracy')} | {ms(name, 'macro_f1')} | "
                     f"{ms(name, 'feature_agreement_attention')} | {ms(name, 'sign_agreement_attention')} | "
                     f"{ms(name, 'attention_entropy')} | {ms(name, 'dev_ce')} |")
    paired = {"dixtill > kl": wins("dixtill", "kl"), "kl > none": wins("kl", "none"),
              "dixtill > none": wins("dixtill", "none"), "dixtill > mse": wins("dixtill", "mse"),
              "dixtill > kl > none": sum(x["macro_f1"] > y["macro_f1"] > z["macro_f1"] for x, y, z in
                                         zip(out["final"]["dixtill"], out["final"]["kl"], out["final"]["none"]))}
    out["paired"] = paired
    tune = ["| method | alpha | tau | dev macro-F1 | dev accuracy | best epoch |", "|---|---|---|---|---|---|"]
    tune += [f"| {r['method']} | {r['alpha']} | {r['tau']} | {r['dev_macro_f1']:.4f} | {r['dev_accuracy']:.4f} | "
             f"{r['best_epoch']} |" for r in out["tuning"]]
    var = ["| DiXtill variant (at its chosen alpha/tau) | dev macro-F1 | dev accuracy | best epoch |", "|---|---|---|---|"]
    var += [f"| {r['variant']} | {r['dev_macro_f1']:.4f} | {r['dev_accuracy']:.4f} | {r['best_epoch']} |" for r in vrows]
    md = "\n".join(["## Tuning on dev (seed 0)", "", *tune, "", "## DiXtill variants on dev (seed 0)", "", *var, "",
                    f"## Final: {n} student seeds per method, validation split (mean ± sd)", "", *lines, "",
                    "Paired seed counts (macro-F1, seed k vs seed k): " +
                    ", ".join(f"{k}: {v}/{n}" for k, v in paired.items()), "",
                    f"Gold-label IG: {len(wrong)} training texts where the teacher's prediction is not the gold label "
                    f"({out['gold_label_ig']['seconds']} s). Study wall time: {out['seconds']:.0f} s."])
    outp = pathlib.Path(args.out)
    outp.parent.mkdir(parents=True, exist_ok=True)
    outp.with_suffix(".json").write_text(json.dumps(out, indent=1))
    outp.with_suffix(".md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
