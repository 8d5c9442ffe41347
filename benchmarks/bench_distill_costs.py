"""Unit costs of the distillation pipeline on this machine, to budget the demo profiles.

Measures, on real TFNS tweets with a MiniLM-L6 teacher (fine-tuned dir, or the raw encoder):
teacher fine-tuning (ms per tweet, forward+backward+AdamW, batch 16, dynamic padding), teacher
forward (ms per tweet, batch 64, length-sorted), teacher IG (ms per tweet per step, batch 8) and a
student epoch (s per 1,000 tweets), then projects the quick and full profiles.

    python benchmarks/bench_distill_costs.py [--teacher runs/demo-quick/teacher] [--threads 1] [--csv FILE]

Each unit cost is one timed pass over ``--n`` tweets (a mean per tweet, not a median of repeats);
``--csv`` appends them in the schema of ``benchmarks/common.py`` (``extra`` says the unit).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import numpy as np
import torch

import common


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", help="fine-tuned teacher dir (default: MiniLM-L6 encoder with a new head)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--n", type=int, default=64, help="tweets per measurement")
    ap.add_argument("--csv", type=pathlib.Path, help="append the unit costs to this CSV (common schema)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgekd.assets import asset_path
    from edgekd.data import WordTokenizer, load_tfns
    from edgekd.distill.trainer import EncodedSplit, TrainConfig, train_student
    from edgekd.students import BiLSTMAttentionStudent
    from edgekd.teacher import IGConfig, Teacher, annotate

    tr = load_tfns("train").stratified_sample(2000, seed=5)
    texts, labels = tr.texts[: args.n], tr.labels[: args.n]
    src = args.teacher or str(asset_path("minilm"))
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=3)
    res: dict = {"threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()}

    # fine-tuning step cost
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    t0 = time.perf_counter()
    for b in range(0, len(texts), 16):
        e = tok(texts[b : b + 16], truncation=True, max_length=64, padding=True, return_tensors="pt")
        out = model(**e, labels=torch.tensor(labels[b : b + 16]))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    res["teacher_train_ms_per_tweet"] = 1000 * (time.perf_counter() - t0) / len(texts)
    model.eval()
    teacher = Teacher(model, tok, max_length=64)
    t0 = time.perf_counter()
    teacher.logits(tr.texts[: 4 * args.n])
    res["teacher_forward_ms_per_tweet"] = 1000 * (time.perf_counter() - t0) / (4 * args.n)
    wt = WordTokenizer.train(tr.texts)
    sub = tr.head(args.n // 2)
    t0 = time.perf_counter()
    annotate(teacher, sub, wt, ig=IGConfig(steps=8, batch_size=8), progress=False)
    ig_s = time.perf_counter() - t0 - res["teacher_forward_ms_per_tweet"] * len(sub) / 1000
    res["teacher_ig_ms_per_tweet_step"] = 1000 * ig_s / (len(sub) * 8)
    # student epoch
    sp = EncodedSplit(wt.encode_batch(tr.texts), tr.labels)
    va = EncodedSplit(wt.encode_batch(tr.texts[:200]), tr.labels[:200])
    st = BiLSTMAttentionStudent(wt.vocab_size, label_names=tr.label_names)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        r = train_student(st, sp, va, TrainConfig(method="none", epochs=1), d, progress=False, log=None)
    res["student_epoch_s_per_1000"] = r.history[0]["seconds"] / (len(tr) / 1000)
    res["student_backend"] = st.resolved_backend

    def project(teach_n, teach_ep, stud_n, attr_n, valid_attr, steps, epochs):
        c = res
        return {
            "teacher_finetune_min": teach_n * teach_ep * c["teacher_train_ms_per_tweet"] / 60000,
            "teacher_forward_min": (stud_n + 2388) * c["teacher_forward_ms_per_tweet"] / 60000,
            "teacher_ig_min": (attr_n + valid_attr) * steps * c["teacher_ig_ms_per_tweet_step"] / 60000,
            "students_min_at_most": 4 * epochs * stud_n / 1000 * c["student_epoch_s_per_1000"] / 60,
        }

    res["projection_quick"] = project(2000, 1, 4000, 500, 150, 8, 8)
    res["projection_full"] = project(9543, 3, 9543, 9543, 500, 50, 30)
    for k in ("projection_quick", "projection_full"):
        res[k]["total_min"] = sum(res[k].values())
    res["loadavg_end"] = os.getloadavg()
    info = common.machine_info()
    res["machine"], res["versions"] = common.machine_string(info), common.versions_string(info)
    print(json.dumps(res, indent=2, default=lambda x: round(x, 3) if isinstance(x, float) else str(x)))
    if args.csv:
        stamp = common.now()
        units = [("teacher_train_ms_per_tweet", "teacher fine-tune batch=16", "train", "ms per tweet"),
                 ("teacher_forward_ms_per_tweet", "teacher forward batch=64", "inference", "ms per tweet"),
                 ("teacher_ig_ms_per_tweet_step", "teacher IG batch=8", "attribution", "ms per tweet per IG step"),
                 ("student_epoch_s_per_1000", "student epoch", "train", "s per 1000 tweets (x1000 = ms)")]
        common.append_rows(args.csv, [
            common.make_row(f"{case} n={args.n}", "minilm-teacher" if k.startswith("teacher") else
                            f"student-{res['student_backend']}", mode, res[k] * (1000 if k.startswith("student") else 1),
                            None, None, None, common.fmt_extra(unit=unit, timing="one pass, mean"), info=info,
                            time=stamp)
            for k, case, mode, unit in units])


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
