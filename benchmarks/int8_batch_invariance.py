"""int8 label flips between batch 1 and batch 32, static (calibrated QDQ) vs dynamic int8, on the
TFNS validation split (issue 12 item 6).

No trained student or teacher ships with the repository and the pretrained MiniLM package is not
installed on every machine, so this trains small models here, quickly, on the TFNS training split:
a BiLSTM-attention student (cross-entropy, 2 epochs) and a 2-layer, 64-wide BERT classifier
from scratch (the "teacher" stand-in, 2 epochs). Both are compiled for x86_64 with
``int8_scheme="dynamic"`` and ``"static"`` (calibrated on 512 training texts); every int8 variant
then classifies the validation texts at batch 1 and in batches of 32, and the labels are compared.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/int8_batch_invariance.py [--out DIR] [--limit N]

Prints and writes ``benchmarks/results/int8_batch_invariance.md`` (timings on a shared 2-core
machine are indicative only).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import pathlib
import platform
import time

import numpy as np

DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tfns"
LABEL_NAMES = ["bearish", "bullish", "neutral"]


def read(split: str) -> tuple[list[str], list[int]]:
    with open(DATA / f"sent_{split}.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


def train_loop(model, feeds_fn, texts, labels, epochs: int, lr: float, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(texts))
        for s in range(0, len(order), 64):
            idx = order[s:s + 64]
            logits = feeds_fn([texts[i] for i in idx])
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor([labels[i] for i in idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def make_student(out: pathlib.Path, texts, labels, epochs: int) -> pathlib.Path:
    import torch

    from edgekd.data.tokenizer import WordTokenizer
    from edgekd.runtime.preprocess import Preprocessor
    from edgekd.students import BiLSTMAttentionStudent

    out.mkdir(parents=True, exist_ok=True)
    tok = WordTokenizer.train(texts, min_frequency=2, max_length=64)
    tok.save(out / "tokenizer.json")
    prep = Preprocessor(str(out / "tokenizer.json"), {"max_length": 64, "pad_id": 0, "unk_id": 1},
                        ["input_ids", "attention_mask"])
    V = tok.tokenizer.get_vocab_size()
    model = BiLSTMAttentionStudent(V, embed_dim=50, hidden_size=50, num_classes=3, label_names=LABEL_NAMES)

    def fwd(batch):
        f = prep(batch).feeds
        return model(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"])).logits

    train_loop(model.train(), fwd, texts, labels, epochs, 3e-3)
    model.save_pretrained(out)
    return out


def make_bert(out: pathlib.Path, texts, labels, epochs: int) -> pathlib.Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification

    from edgekd.data.tokenizer import WordTokenizer

    out.mkdir(parents=True, exist_ok=True)
    words = [w for w in WordTokenizer.train(texts, min_frequency=2).tokenizer.get_vocab() if not w.startswith("[")]
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_truncation(64)
    tok.save(str(out / "tokenizer.json"))
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128, num_labels=3,
                     id2label=dict(enumerate(LABEL_NAMES)), label2id={n: i for i, n in enumerate(LABEL_NAMES)})
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)

    def fwd(batch):
        enc = tok.encode_batch(batch)
        T = max(len(e.ids) for e in enc)
        ids = torch.zeros((len(enc), T), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for k, e in enumerate(enc):
            ids[k, :len(e.ids)] = torch.tensor(e.ids)
            mask[k, :len(e.ids)] = 1
        return model(input_ids=ids, attention_mask=mask).logits

    train_loop(model.train(), fwd, texts, labels, epochs, 1e-3)
    model.save_pretrained(out)
    tok.no_truncation()
    tok.save(str(out / "tokenizer.json"))
    return out


def measure(bundle: pathlib.Path, texts, labels) -> list[dict]:
    from edgekd.runtime import Bundle

    rows = []
    manifest = Bundle.load(bundle, precision="fp32").manifest  # verifies every file once
    for v in manifest["variants"]:
        if v["target"] != "x86_64":
            continue
        b = Bundle(bundle, manifest, v, 1, bundle)  # every x86_64 variant, VNNI or not, on this host
        t0 = time.perf_counter()
        one = np.array([b.predict([t], explain=False).label_ids[0] for t in texts])
        t1 = time.perf_counter()
        many = np.concatenate([b.predict(texts[s:s + 32], explain=False).label_ids for s in range(0, len(texts), 32)])
        t2 = time.perf_counter()
        y = np.asarray(labels)
        rows.append({"variant": v["id"], "scheme": (v.get("quantization") or {}).get("scheme", "-"),
                     "bytes": manifest["files"][v["file"]]["size"], "flips": int((one != many).sum()),
                     "n": len(texts), "acc_b1": float((one == y).mean()), "acc_b32": float((many == y).mean()),
                     "ms_per_text_b1": 1e3 * (t1 - t0) / len(texts), "ms_per_text_b32": 1e3 * (t2 - t1) / len(texts)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/edgekd-int8-invariance")
    ap.add_argument("--limit", type=int, default=None, help="first N validation texts (default: all 2,388)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--models", default="student,bert")
    args = ap.parse_args()
    from edgekd.compile import compile_model

    out = pathlib.Path(args.out)
    tr_x, tr_y = read("train")
    va_x, va_y = read("valid")
    if args.limit:
        va_x, va_y = va_x[:args.limit], va_y[:args.limit]
    lines = []
    for name in args.models.split(","):
        src = out / f"{name}-model"
        if not (src / "config.json").is_file():
            (make_student if name == "student" else make_bert)(src, tr_x, tr_y, args.epochs)
        kind = "bilstm_attention" if name == "student" else "hf_sequence_classification"
        for scheme in ("dynamic", "static"):
            bdir = out / f"{name}-{scheme}"
            if not (bdir / "manifest.json").is_file():
                compile_model(kind, src, bdir, eval_texts=va_x[:256], eval_labels=va_y[:256], max_length=64,
                              targets=("x86_64",), int8_scheme=scheme, calibration_texts=tr_x[:512],
                              arm64_check=False, make_zip=False, overwrite=True, progress=False)
            for r in measure(bdir, va_x, va_y):
                if scheme == "static" and r["scheme"] == "-":
                    continue  # the fp32 row is the same file in both bundles
                r["model"] = name
                lines.append(r)
                print(json.dumps(r), flush=True)
    md = ["# int8 label flips, batch 1 vs batch 32 (TFNS validation)", "",
          f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}, {platform.processor() or platform.machine()}, "
          f"1 onnxruntime thread, shared 2-core machine (timings indicative). Models trained here for "
          f"{args.epochs} epochs (see the script's doc). Command: `OMP_NUM_THREADS=1 PYTHONPATH=. python "
          f"benchmarks/int8_batch_invariance.py`", "",
          "| model | variant | int8 scheme | file bytes | flips b1 vs b32 | texts | accuracy b1 | accuracy b32 | ms/text b1 | ms/text b32 |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in lines:
        md.append(f"| {r['model']} | {r['variant']} | {r['scheme']} | {r['bytes']:,} | {r['flips']} | {r['n']} | "
                  f"{r['acc_b1']:.4f} | {r['acc_b32']:.4f} | {r['ms_per_text_b1']:.3f} | {r['ms_per_text_b32']:.3f} |")
    res = pathlib.Path(__file__).resolve().parent / "results" / "int8_batch_invariance.md"
    res.parent.mkdir(exist_ok=True)
    res.write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
