"""Peak RSS of ``Bundle.load(zip, precision="int8")`` + one prediction against a bare onnxruntime
session of the same int8 file, and what loading writes to disk (issue 12: <= 1.3x, only the
selected variant written).

The model is a MiniLM-L6-sized BERT classifier (6 layers, 384 wide, 30,522-word embedding:
~91 MB fp32) with random weights (the pretrained package is not needed to measure memory),
compiled for x86_64 fp32 + int8 into one zip. Each measurement runs in a fresh interpreter and
reads ``VmHWM``.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/zip_load_memory.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

BARE = """
import sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], sess_options=o, providers=["CPUExecutionProvider"])
feeds = {i.name: np.ones((1, 12), np.int64) for i in s.get_inputs()}
s.run(None, feeds)
print([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])
"""
BUNDLE = """
import sys, os
from edgekd.runtime import Bundle
b = Bundle.load(sys.argv[1], precision="int8", threads=1)
b.predict("oil prices slump on weak demand")
written = sum(p.stat().st_size for p in b.root.rglob("*") if p.is_file())
names = sorted(p.name for p in b.root.rglob("*") if p.is_file())
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(hwm, written, ",".join(names), b.variant["file"])
"""


def build(out: pathlib.Path) -> pathlib.Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification

    from edgekd.compile import compile_model

    src = out / "minilm-size"
    src.mkdir(parents=True, exist_ok=True)
    words = "oil prices slump on weak demand stocks rally as beats earnings estimates fed holds rates".split()
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(src / "tokenizer.json"))
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, num_labels=3)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(src)
    texts = [" ".join(words[k:k + 6]) for k in range(10)]
    return compile_model("hf_sequence_classification", src, out / "teacher", eval_texts=texts, max_length=64,
                         targets=("x86_64",), precisions=("fp32", "int8"), int8_scheme="dynamic",
                         arm64_check=False, overwrite=True, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/edgekd-zip-memory")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    bdir = out / "teacher"
    if not (bdir / "manifest.json").is_file():
        build(out)
    m = json.loads((bdir / "manifest.json").read_text())
    hwm, written, names, chosen = subprocess.run([sys.executable, "-c", BUNDLE, str(bdir.with_suffix(".zip"))],
                                                 capture_output=True, text=True, check=True).stdout.split()
    int8 = chosen  # the same file the bundle chose for this CPU
    bare = int(subprocess.run([sys.executable, "-c", BARE, str(bdir / int8)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    sizes = {k: v["size"] for k, v in m["files"].items()}
    print(f"zip files: {sizes}")
    print(f"bare onnxruntime session of {int8}: peak RSS {bare / 1024:.1f} MiB")
    print(f"Bundle.load(zip, precision='int8') + predict ({chosen}): peak RSS {int(hwm) / 1024:.1f} MiB "
          f"= {int(hwm) / bare:.2f}x; wrote {int(written) / 1e6:.2f} MB to disk: {names}")


if __name__ == "__main__":
    main()
