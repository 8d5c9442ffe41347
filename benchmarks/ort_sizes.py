"""Sizes of the ORT-format copies (`compile --ort`) next to their ONNX variants, for models of
the shipped shapes: the DiXtill BiLSTM student (GloVe 50d, hidden 50, a 20,000-word vocabulary)
and a MiniLM-L6-shaped BERT teacher (384 wide, 6 layers, 30,522 WordPiece tokens). Weights are
random (sizes depend on the shapes only); the held-out slice is TFNS validation.

    python benchmarks/ort_sizes.py --out benchmarks/results/ort_sizes.md
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib
import platform
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tfns" / "sent_valid.csv"


def _texts(n: int) -> tuple[list[str], list[int]]:
    with open(DATA, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:n]
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


def _student(d: pathlib.Path, texts: list[str], vocab: int) -> pathlib.Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from edgekd.students import BiLSTMAttentionStudent

    words = sorted({w for t in texts for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(t.lower())})
    table = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    table.update({f"w{i}": i for i in range(len(table), vocab)})
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    BiLSTMAttentionStudent(vocab, embed_dim=50, hidden_size=50, num_classes=3, pad_id=0,
                           label_names=["bearish", "bullish", "neutral"]).save_pretrained(d)
    tok.save(str(d / "tokenizer.json"))
    return d


def _teacher(d: pathlib.Path, texts: list[str]) -> pathlib.Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification

    d.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in texts for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(t.lower())})
    names = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    names += [f"##x{i}" for i in range(30522 - len(names))]
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(names)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(d / "tokenizer.json"))
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, num_labels=3)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(d)
    return d


def _rows(name: str, bundle: pathlib.Path) -> list[str]:
    m = json.loads((bundle / "manifest.json").read_text())
    size = {k: v["size"] for k, v in m["files"].items()}
    rows = []
    for v in m["variants"]:
        o = v["ort"]
        ops = [ln for ln in (bundle / o["required_operators"]).read_text().splitlines() if ln and ln[0] != "#"]
        n_ops = sum(len(ln.split(";")[2].split(",")) for ln in ops)
        rows.append(f"| {name} | {v['id']} | {size[v['file']] / 1e6:.2f} | {size[o['file']] / 1e6:.2f} | "
                    f"{size[o['file']] / size[v['file']]:.3f} | {o['target_platform']} | "
                    f"{o['max_abs_logit_diff_vs_onnx']:.1e} | {n_ops} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ort_sizes.md"))
    ap.add_argument("--n", type=int, default=64, help="held-out TFNS validation texts for the parity checks")
    args = ap.parse_args()
    import onnxruntime

    from edgekd.compile import compile_student, compile_teacher

    texts, labels = _texts(args.n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        kw = dict(eval_texts=texts, eval_labels=labels, arm64_check=False, progress=False, ort_format=True, make_zip=False)
        s = compile_student(_student(tmp / "student-src", texts, 20000), tmp / "student", max_length=64, **kw)
        rows += _rows("student (BiLSTM 50/50, 20k words)", s)
        t = compile_teacher(_teacher(tmp / "teacher-src", texts), tmp / "teacher", max_length=64, **kw)
        rows += _rows("teacher (MiniLM-L6 shape)", t)
    head = ("| model | variant | ONNX MB | ORT MB | ORT/ONNX | ORT platform | max abs logit diff ORT vs ONNX | "
            "ops in required_operators config |\n|---|---|---|---|---|---|---|---|")
    text = (f"# ORT-format copies (`edgekd compile --ort`)\n\nCommand: `python benchmarks/ort_sizes.py`; onnxruntime "
            f"{onnxruntime.__version__}, {platform.machine()}, random weights of the shipped shapes, held-out slice: "
            f"first {args.n} TFNS validation texts. The config row count is per target (all variants of that target).\n\n"
            f"{head}\n" + "\n".join(rows) + "\n")
    pathlib.Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
